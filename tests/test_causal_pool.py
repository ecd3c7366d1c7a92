"""hf-causal: label-word scoring against a brute force, tied embeddings through a merge, the pool
through its cache and an R-MTLLMF experiment, on tiny random GPT-2 (tied head), Llama (untied)
and Qwen2 (tied) models the tests save in Hugging Face format with a byte-level BPE tokenizer
trained on the spot (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers", reason="hf-causal needs transformers")

from pydantic import ValidationError  # noqa: E402

from rmtllmf.data.text import TEXT_TASKS, text_splits  # noqa: E402
from rmtllmf.errors import CheckpointError, InputError  # noqa: E402
from rmtllmf.fusion import MergeConfig, TaskVector, merge_task_vectors  # noqa: E402
from rmtllmf.models.hf_causal import (  # noqa: E402
    ROW_HEADER,
    CausalScorer,
    embedding_names,
    encode_prompts,
    load_causal_lm,
    tied_aliases,
    verbalizer_ids,
)
from rmtllmf.models.hf_text import load_tokenizer  # noqa: E402
from rmtllmf.pools.causal_pool import (  # noqa: E402
    CausalPoolConfig,
    build_causal_pool,
)
from rmtllmf.study.experiment import ExperimentConfig, run_experiment  # noqa: E402

TASKS = ("part-of-speech", "word-sentiment")
TEMPLATE = "Word: {text}\nSentiment:"


def _bpe_tokenizer(bos: bool) -> object:
    """A byte-level BPE (vocabulary 320) trained on a little of the suite's text; with ``bos``
    every sequence starts with ``<s>`` (the Llama convention)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    corpus = [TEMPLATE, "Definition: a noun\nPart of speech:", "the cat sat on the mat"]
    for task in TASKS:
        corpus += list(TEXT_TASKS[task].classes)
        corpus += text_splits(task, n_train=20, n_val=1, n_test=1, n_head=1)["train"][0]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<|endoftext|>", "<s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    if bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
        )
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>", bos_token="<s>"
    )


def _tiny_lm(root: Path, arch: str, *, tokenizer: bool = True) -> Path:
    """A random 2-layer causal LM of width 32 with its tokenizer, saved in ``root``."""
    tok = _bpe_tokenizer(bos=arch != "gpt2")
    vocab = len(tok)
    common = {"vocab_size": vocab, "bos_token_id": 1, "eos_token_id": 0, "pad_token_id": 0}
    if arch == "gpt2":
        config = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=96, **common)
    elif arch == "llama":
        config = transformers.LlamaConfig(
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=96,
            tie_word_embeddings=False,
            **common,
        )
    else:
        config = transformers.Qwen2Config(
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=96,
            tie_word_embeddings=True,
            **common,
        )
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # larger weights than the init, so scores differ clearly by class
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(8.0)
    model.save_pretrained(str(root))
    if tokenizer:
        tok.save_pretrained(str(root))
    return root


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def tiny_lm(request, tmp_path_factory) -> Path:
    return _tiny_lm(tmp_path_factory.mktemp(request.param) / "base", request.param)


# Scoring --------------------------------------------------------------------------------------


def _brute_force(model, prompt: list[int], label: tuple[int, ...]) -> float:
    """``sum_j log p(v_j | prompt, v_<j)``: the LM run on each prefix alone, unpadded."""
    total = 0.0
    with torch.no_grad():
        for j, token in enumerate(label):
            ids = torch.tensor([prompt + list(label[:j])])
            logits = model(input_ids=ids).logits[0, -1]
            total += float(torch.log_softmax(logits.double(), -1)[token])
    return total


@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen2"])
@pytest.mark.parametrize("normalize", [False, True])
def test_label_word_log_likelihood_equals_a_token_by_token_brute_force(tmp_path, arch, normalize):
    """Every class score of a mixed two-task batch (padded, several label tokens, shared
    contexts) equals the LM's log-likelihood of that class's label tokens after the prompt."""
    root = _tiny_lm(tmp_path / arch, arch)
    tok = load_tokenizer(root)
    model = load_causal_lm(root)
    templates = {
        "part-of-speech": "Definition: {text}\nPart of speech:",
        "word-sentiment": TEMPLATE,
    }
    verbs = tuple(verbalizer_ids(tok, templates[t], TEXT_TASKS[t].classes) for t in TASKS)
    assert max(len(v) for task in verbs for v in task) > 1, "no multi-token label to test"
    scorer = CausalScorer(model, verbs, normalize=normalize).eval()
    texts = {
        "part-of-speech": ["a small domestic animal", "to move quickly"],
        "word-sentiment": ["wonderful", "a terrible and sad day indeed"],
    }
    rows = np.concatenate(
        [encode_prompts(tok, texts[t], templates[t], 24, i) for i, t in enumerate(TASKS)]
    )
    with torch.no_grad():
        scores = scorer(torch.from_numpy(rows))
    assert scores.shape == (4, 4)
    for r, row in enumerate(rows):
        task = int(row[0])
        prompt = row[ROW_HEADER : ROW_HEADER + row[1]].tolist()
        for c, label in enumerate(verbs[task]):
            expect = _brute_force(model, prompt, label) / (len(label) if normalize else 1)
            assert float(scores[r, c]) == pytest.approx(expect, abs=2e-4), (r, c)
    if arch != "gpt2":
        assert rows[0, ROW_HEADER] == tok.bos_token_id, "the BOS token is part of the prompt"


def test_a_long_text_is_cut_but_the_cue_is_kept(tiny_lm):
    tok = load_tokenizer(tiny_lm)
    text = " ".join(["wonderful terrible"] * 40)
    rows = encode_prompts(tok, [text, "good"], TEMPLATE, 28, 3)
    assert rows.shape == (2, ROW_HEADER + 28)
    assert rows[:, 0].tolist() == [3, 3] and 1 < rows[0, 1] <= 28
    decoded = tok.decode(rows[0, ROW_HEADER : ROW_HEADER + rows[0, 1]], skip_special_tokens=True)
    assert decoded.startswith("Word: wonderful") and decoded.endswith("\nSentiment:")
    one_word = encode_prompts(tok, ["incomprehensibilities"], TEMPLATE, 20, 0)
    kept = one_word[0, ROW_HEADER : ROW_HEADER + one_word[0, 1]]
    decoded = tok.decode(kept, skip_special_tokens=True)
    assert decoded.startswith("Word: inc") and decoded.endswith("\nSentiment:")
    if tok.bos_token_id in tok("x")["input_ids"]:
        assert kept[0] == tok.bos_token_id, "the BOS token survives the cut"
    with pytest.raises(InputError, match="raise max_length"):
        encode_prompts(tok, ["good"], TEMPLATE, 3, 0)
    with pytest.raises(InputError, match="placeholder"):
        encode_prompts(tok, ["good"], "no text here", 28, 0)


def test_state_keys_are_the_models_own_with_a_tied_table_once(tiny_lm):
    model = load_causal_lm(tiny_lm)
    full = set(model.state_dict())
    tok = load_tokenizer(tiny_lm)
    scorer = CausalScorer(model, (verbalizer_ids(tok, TEMPLATE, ("good", "bad")),))
    aliases = tied_aliases(model)
    if model.config.model_type == "gpt2":
        assert aliases == {"lm_head.weight": "transformer.wte.weight"}
        assert embedding_names(scorer) == ("transformer.wte.weight", "transformer.wpe.weight")
    else:
        assert aliases == {}
        assert embedding_names(scorer) == ("model.embed_tokens.weight",)
    assert set(scorer.state_dict()) == full - set(aliases)
    assert set(scorer.state_dict()) == {n for n, _ in scorer.named_parameters()} | {
        k for k in full if k not in aliases and k not in dict(model.named_parameters())
    }


def test_tied_embeddings_stay_tied_after_a_merge(tmp_path):
    """A task vector carries GPT-2's shared table once; the merged model's output layer is the
    merged input table, the same tensor."""
    root = _tiny_lm(tmp_path / "gpt2", "gpt2")
    tok = load_tokenizer(root)
    scorer = CausalScorer(load_causal_lm(root), (verbalizer_ids(tok, TEMPLATE, ("good", "bad")),))
    base = {k: v.clone() for k, v in scorer.state_dict().items()}
    assert "lm_head.weight" not in base
    gen = torch.Generator().manual_seed(1)
    experts = [
        {k: v + 0.01 * torch.randn(v.shape, generator=gen) for k, v in base.items()}
        for _ in range(2)
    ]
    vectors = [TaskVector.from_models(base, e) for e in experts]
    assert "lm_head.weight" not in vectors[0].tensors
    merged = merge_task_vectors(base, vectors, MergeConfig(scaling=0.5))
    import copy

    model = copy.deepcopy(scorer)
    model.load_state_dict(merged)
    assert model.lm_head.weight is model.transformer.wte.weight
    torch.testing.assert_close(model.lm_head.weight, merged["transformer.wte.weight"])
    assert not torch.equal(model.lm_head.weight, base["transformer.wte.weight"])
    # a full Hugging Face state (alias included, stale) loads with the source's values
    stale = {**merged, "lm_head.weight": base["transformer.wte.weight"]}
    model.load_state_dict(stale)
    torch.testing.assert_close(model.lm_head.weight, merged["transformer.wte.weight"])


# The pool -------------------------------------------------------------------------------------


def _config(base: Path, **extra) -> CausalPoolConfig:
    fields = {
        "base": str(base),
        "tasks": TASKS,
        "max_length": 32,
        "train_per_class": 12,
        "val_per_class": 4,
        "test_per_class": 5,
        "steps": 4,
        "batch": 4,
        "lr": 1e-3,
        **extra,
    }
    return CausalPoolConfig(**fields)


def test_the_config_needs_a_base_and_says_so():
    with pytest.raises(ValidationError, match="hf-causal needs base"):
        CausalPoolConfig()
    with pytest.raises(ValidationError, match="placeholder"):
        CausalPoolConfig(base="x", template="no text")


def test_a_directory_without_tokenizer_files_is_refused(tmp_path):
    bare = _tiny_lm(tmp_path / "bare", "gpt2", tokenizer=False)
    with pytest.raises(CheckpointError, match="no tokenizer files"):
        build_causal_pool(tmp_path / "pool", _config(bare))


def test_wrong_verbalizers_are_refused(tmp_path, tiny_lm):
    cfg = _config(tiny_lm, verbalizers={"word-sentiment": ("bad", "good")})
    with pytest.raises(InputError, match="one word per class"):
        build_causal_pool(tmp_path / "pool", cfg)


@pytest.fixture(scope="module")
def causal_pool(tiny_lm, tmp_path_factory):
    cfg = _config(tiny_lm)
    root = tmp_path_factory.mktemp("causal_pool")
    return root, cfg, build_causal_pool(root, cfg)


def test_the_pool_measures_and_caches_its_experts(causal_pool):
    root, cfg, pool = causal_pool
    for task in cfg.tasks:
        for model in ("base", "finetuned"):
            assert 0.0 <= pool.record.accuracy(model, task, "test") <= 1.0
        rows = pool.data[task]["test"][0]
        assert rows.shape == (5 * pool.n_classes(task), ROW_HEADER + 32)
        assert set(rows[:, 0].tolist()) == {cfg.tasks.index(task)}
        assert pool.record.seconds[task] > 0
    assert set(pool.record.config["verbalizers"]) == set(cfg.tasks)
    files = sorted((pool.root / "finetuned").iterdir())
    stamps = [f.stat().st_mtime_ns for f in files]
    again = build_causal_pool(root, cfg)
    assert again.pool_id == pool.pool_id
    assert [f.stat().st_mtime_ns for f in files] == stamps, "a cached expert was retrained"
    assert again.record.finetuned == pool.record.finetuned
    for key, value in pool.finetuned["word-sentiment"].items():
        torch.testing.assert_close(again.finetuned["word-sentiment"][key], value)
    assert set(pool.finetuned["word-sentiment"]) == set(pool.base_state)


def test_fine_tuning_moved_the_model_and_the_base_state_reproduces_the_base(causal_pool):
    _, cfg, pool = causal_pool
    base = pool.base_state
    moved = [k for k in base if not torch.equal(base[k], pool.finetuned["part-of-speech"][k])]
    assert moved
    acc = pool.task_accuracy(base, cfg.tasks, "test")
    assert acc == {t: pool.base_accuracy(t) for t in cfg.tasks}


def test_r_mtllmf_on_a_causal_lm_reloads_the_base_embeddings(causal_pool, monkeypatch):
    """R-MTLLMF puts the base's token (and position) embedding tables back after a jammed merge
    on the snr link and realignment leaves them there; an undefended merge moves them."""
    _, cfg, pool = causal_pool
    captured = {}
    original = pool.task_accuracy

    def spy(state, tasks, split="test"):
        captured["state"] = {k: v.clone() for k, v in state.items()}
        return original(state, tasks, split)

    monkeypatch.setattr(pool, "task_accuracy", spy)
    base = pool.base_state
    assert pool.embedding_names
    for defense in ("none", "r-mtllmf"):
        run = ExperimentConfig(
            tasks=cfg.tasks,
            scenario="sum-rate",
            link="snr",
            defense=defense,
            realign={"k_per_class": 2, "steps": 2, "batch": 4, "validate_every": 0},
        )
        result = run_experiment(pool, run)
        assert 0.0 <= result.normalized <= 2.0 or np.isnan(result.normalized)
        for name in pool.embedding_names:
            same = torch.equal(captured["state"][name], base[name])
            assert same == (defense == "r-mtllmf"), (defense, name)
        model = pool.model_from_state(captured["state"])
        lm = model.causal_lm
        if lm.config.model_type == "gpt2":
            assert lm.lm_head.weight is lm.transformer.wte.weight


def test_the_documented_pool_section_is_a_valid_config():
    """docs/causal-lm.md's YAML example fills a CausalPoolConfig."""
    import re

    import yaml

    doc = (Path(__file__).resolve().parents[1] / "docs" / "causal-lm.md").read_text()
    block = re.search(r"```yaml\n(.*?)```", doc, re.S)
    assert block is not None
    raw = yaml.safe_load(block.group(1))
    assert raw["family"] == "hf-causal"
    cfg = CausalPoolConfig.model_validate(raw["causal"])
    assert cfg.template_of("word-sentiment").endswith("sentiment is")
    assert cfg.words_of("word-sentiment") == ("awful", "bad", "good", "great")
    assert cfg.template_of("language-id") == "Words: {text}\nLanguage:"
