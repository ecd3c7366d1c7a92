"""``rmtllmf merge`` writes Hugging Face directories that ``from_pretrained`` loads as they are:
a tiny BertModel, CLIPModel, GPT-2 and Llama merged on the command line give, loaded by their own
classes, the outputs of a reference merge computed here with plain torch
(``theta_base + lambda sum_q tau_q``); sharded outputs load too; ``--out`` is checked before any
work and a failed merge leaves nothing behind."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from hf_tiny import finetune_copies, reference_merge, save_bert, save_clip, save_gpt2, save_llama
from rmtllmf.cli import main

pytest.importorskip("transformers")


def _merge(tmp_path, base, fts, out, *extra):
    scaled = "average" not in extra  # average takes no lambda
    args = ["merge", "--base", str(base), "--models", *map(str, fts)]
    args += ["--lambda", "0.4"] if scaled else []
    return main([*args, "--out", str(out), *extra])


def _reference_model(cls, base, state):
    model = cls.from_pretrained(base).eval()
    result = model.load_state_dict(state, strict=False)
    assert not result.unexpected_keys
    return model


def _digest(path: Path) -> str:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    root = tmp_path_factory.mktemp("bert")
    base = save_bert(root / "base")
    return base, finetune_copies(base, root, 2)


def test_bert_directory_loads_with_automodel_and_equals_the_reference(tmp_path, bert, capsys):
    from transformers import AutoModel, AutoTokenizer, BertModel

    base, fts = bert
    out = tmp_path / "merged"
    assert _merge(tmp_path, base, fts, out) == 0
    assert "from_pretrained loads it" in capsys.readouterr().out
    assert {"config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors"} <= {
        p.name for p in out.iterdir()
    }
    record = json.loads((out / "rmtllmf_merge.json").read_text())
    assert record["merge"]["scaling"] == 0.4
    merged = AutoModel.from_pretrained(out).eval()
    reference = _reference_model(BertModel, base, reference_merge(base, fts, 0.4))
    tokens = AutoTokenizer.from_pretrained(out)(["hello world merge", "the model"], padding=True)
    inputs = {k: torch.tensor(v) for k, v in tokens.items()}
    with torch.no_grad():
        got, want = merged(**inputs).last_hidden_state, reference(**inputs).last_hidden_state
    torch.testing.assert_close(got, want)
    assert not torch.equal(want, BertModel.from_pretrained(base).eval()(**inputs)[0])


def test_clip_directory_loads_with_clipmodel_and_equals_the_reference(tmp_path):
    from transformers import CLIPImageProcessor, CLIPModel

    base = save_clip(tmp_path / "base")
    fts = finetune_copies(base, tmp_path, 3)
    out = tmp_path / "merged"
    assert _merge(tmp_path, base, fts, out) == 0
    merged = CLIPModel.from_pretrained(out).eval()
    reference = _reference_model(CLIPModel, base, reference_merge(base, fts, 0.4))
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(2, 16, 16, 3, generator=g) * 255).to(torch.uint8).numpy()
    pixels = CLIPImageProcessor.from_pretrained(out)(list(images), return_tensors="pt")
    ids = torch.tensor([[0, 5, 7, 9], [0, 3, 2, 9]])
    with torch.no_grad():
        got = merged(input_ids=ids, pixel_values=pixels["pixel_values"])
        want = reference(input_ids=ids, pixel_values=pixels["pixel_values"])
    torch.testing.assert_close(got.logits_per_image, want.logits_per_image)
    torch.testing.assert_close(got.image_embeds, want.image_embeds)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_causal_lm_directory_loads_and_generates_like_the_reference(tmp_path, family):
    from transformers import AutoModelForCausalLM, GPT2LMHeadModel, LlamaForCausalLM

    save, cls = {"gpt2": (save_gpt2, GPT2LMHeadModel), "llama": (save_llama, LlamaForCausalLM)}[
        family
    ]
    base = save(tmp_path / "base")
    fts = finetune_copies(base, tmp_path, 2, scale=0.05)
    out = tmp_path / "merged"
    assert _merge(tmp_path, base, fts, out) == 0
    if family == "gpt2":
        assert (out / "generation_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    assert isinstance(merged, cls)
    reference = _reference_model(cls, base, reference_merge(base, fts, 0.4))
    ids = torch.tensor([[1, 7, 3, 9, 4]])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, reference(ids).logits)
    kwargs = {"max_new_tokens": 4, "do_sample": False, "pad_token_id": 0}
    assert torch.equal(merged.generate(ids, **kwargs), reference.generate(ids, **kwargs))


def test_sharded_output_and_sharded_base_load(tmp_path, bert):
    """A 20 KB shard limit cuts the tiny BERT into several shards with transformers' index; the
    sharded output, used as a sharded base, merges again; both load with from_pretrained."""
    from transformers import AutoModel, BertModel

    base, fts = bert
    out = tmp_path / "sharded"
    assert _merge(tmp_path, base, fts, out, "--max-shard-size", "20KB") == 0
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(p.name for p in out.glob("model-*.safetensors"))
    assert len(shards) > 2
    assert shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert not (out / "model.safetensors").exists()
    assert set(index["weight_map"].values()) == set(shards)
    full = load_file(base / "model.safetensors")
    assert set(index["weight_map"]) == set(full)
    assert index["metadata"]["total_size"] == sum(
        v.numel() * v.element_size() for v in full.values()
    )
    assert index["metadata"]["total_parameters"] == sum(v.numel() for v in full.values())
    for shard in shards:  # data bytes, as transformers counts them (headers apart)
        tensors = load_file(out / shard)
        data = sum(v.numel() * v.element_size() for v in tensors.values())
        assert data <= 20_000 or len(tensors) == 1
    merged = AutoModel.from_pretrained(out).eval()
    reference = _reference_model(BertModel, base, reference_merge(base, fts, 0.4))
    ids = torch.tensor([[2, 5, 6, 3]])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids)[0], reference(ids)[0])
    # the sharded directory as a base (streaming path over shards), merged with the same models
    again = tmp_path / "again"
    assert _merge(tmp_path, out, fts, again, "--method", "average") == 0
    assert AutoModel.from_pretrained(again) is not None


def test_dtype_flag_casts_weights_and_config(tmp_path, bert):
    from transformers import AutoModel

    base, fts = bert
    out = tmp_path / "bf16"
    assert _merge(tmp_path, base, fts, out, "--dtype", "bfloat16") == 0
    weights = load_file(out / "model.safetensors")
    assert {v.dtype for v in weights.values()} == {torch.bfloat16}
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    expected = reference_merge(base, fts, 0.4)
    for k, v in weights.items():
        torch.testing.assert_close(v, expected[k].to(torch.bfloat16), rtol=1e-2, atol=1e-2)
    assert AutoModel.from_pretrained(out, dtype="auto").dtype == torch.bfloat16


def test_an_existing_output_directory_is_replaced_whole(tmp_path, bert):
    base, fts = bert
    out = tmp_path / "merged"
    assert _merge(tmp_path, base, fts, out, "--max-shard-size", "20KB") == 0
    assert _merge(tmp_path, base, fts, out) == 0
    assert not list(out.glob("model-*")) and not (out / "model.safetensors.index.json").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_file_the_user_added_to_an_output_directory_survives_a_new_merge(tmp_path, bert, capsys):
    """The merge replaces its own files (here 2 shards by 1 file) and keeps, byte for byte,
    what the user added; a user's file named like one the merge writes is refused, unless
    --force."""
    from transformers import AutoModel

    base, fts = bert
    out = tmp_path / "merged"
    assert _merge(tmp_path, base, fts, out, "--max-shard-size", "20KB") == 0
    first_shard = sorted(p.name for p in out.glob("model-*"))[0]
    notes, data = out / "NOTES.md", out / "eval" / "scores.csv"
    notes.write_bytes(b"my notes \x00\xff")
    data.parent.mkdir()
    data.write_bytes(b"task,acc\n")
    assert _merge(tmp_path, base, fts, out) == 0
    assert notes.read_bytes() == b"my notes \x00\xff" and data.read_bytes() == b"task,acc\n"
    assert not list(out.glob("model-*")) and (out / "model.safetensors").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    # a user's file under a name the next merge writes: refused, nothing changed ...
    mine = out / first_shard
    mine.write_bytes(b"mine")
    before = _digest(out)
    capsys.readouterr()
    assert _merge(tmp_path, base, fts, out, "--max-shard-size", "20KB") == 2
    err = capsys.readouterr().err
    assert f"{first_shard}, which rmtllmf did not write" in err
    assert _digest(out) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    # ... unless --force: the merge's file wins, the rest of the user's stays
    assert _merge(tmp_path, base, fts, out, "--max-shard-size", "20KB", "--force") == 0
    assert mine.read_bytes() != b"mine" and notes.read_bytes() == b"my notes \x00\xff"
    assert AutoModel.from_pretrained(out) is not None


def test_a_failed_merge_leaves_an_existing_output_as_it_was(tmp_path, bert, capsys):
    base, fts = bert
    out = tmp_path / "merged"
    assert _merge(tmp_path, base, fts, out) == 0
    before = _digest(out)
    bad = tmp_path / "bad"
    finetune_copies(base, bad, 1)
    weights = load_file(bad / "ft0" / "model.safetensors")
    weights["pooler.dense.weight"][0, 0] = float("nan")
    save_file(weights, bad / "ft0" / "model.safetensors", {"format": "pt"})
    assert _merge(tmp_path, base, [fts[0], bad / "ft0"], out) == 2
    assert "pooler.dense.weight" in capsys.readouterr().err
    assert _digest(out) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_base_without_tokenizer_is_noted_and_without_config_refused(tmp_path, bert, capsys):
    base, fts = bert
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        (bare / name).write_bytes((base / name).read_bytes())
    assert _merge(tmp_path, bare, fts, tmp_path / "m1") == 0
    assert "no tokenizer or processor files" in capsys.readouterr().err
    (bare / "config.json").unlink()
    assert _merge(tmp_path, bare, fts, tmp_path / "m2") == 2
    err = capsys.readouterr().err
    assert "config.json" in err and "--out" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "m2").exists()


@pytest.mark.parametrize(
    ("out", "words"),
    [
        ("{ft0}", "is one of the inputs"),
        ("{ft0}/model.safetensors", "lies inside the input"),
        ("{base}/merged.safetensors", "lies inside the input"),
        ("{root}", "contains the input"),
        ("merged.bin", "ends in .bin"),
        ("merged.yaml", "ends in .yaml"),
        ("notes", "did not write (todo.txt)"),
        ("file.txt", "is an existing file that is not .safetensors"),
    ],
)
def test_bad_out_is_refused_before_any_work(tmp_path, bert, monkeypatch, capsys, out, words):
    base, fts = bert
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    (tmp_path / "file.txt").write_text("keep me too")
    before = {p: _digest(p) for p in [base, *fts, tmp_path / "notes", tmp_path / "file.txt"]}
    listing = sorted(p.name for p in tmp_path.iterdir())
    target = out.format(ft0=fts[0], base=base, root=base.parent)
    assert _merge(tmp_path, base, fts, target) == 2
    err = capsys.readouterr().err
    assert words in err and "--out" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert {p: _digest(p) for p in before} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == listing


def test_directory_out_needs_a_directory_base(tmp_path, bert, capsys):
    base, fts = bert
    files = [f / "model.safetensors" for f in (base, *fts)]
    args = ["merge", "--base", str(files[0]), "--models", *map(str, files[1:])]
    assert main([*args, "--out", str(tmp_path / "merged")]) == 2
    assert "give --out a .safetensors file" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "merged.safetensors")]) == 0
    assert (tmp_path / "merged.safetensors.json").exists()


def test_save_hf_directory_writes_a_state_dict_that_loads(tmp_path, bert):
    """The reusable writer (for fine-tuned or defended models): an in-memory state dict under
    the base's keys becomes a loadable, sharded directory."""
    from transformers import AutoModel

    from rmtllmf.fusion.hf_dir import save_hf_directory

    base, _ = bert
    state = {k: v * 1.5 for k, v in load_file(base / "model.safetensors").items()}
    written = save_hf_directory(state, tmp_path / "out", base, max_shard_size="30KB")
    assert len(written.shards) > 1 and "tokenizer.json" in written.carried
    loaded = AutoModel.from_pretrained(tmp_path / "out")
    got = loaded.state_dict()
    for k, v in state.items():
        torch.testing.assert_close(got[k], v)


@pytest.mark.parametrize(
    ("text", "size"),
    [("5GB", 5 * 10**9), ("500KB", 500_000), ("2GiB", 2 * 2**30), ("1.5MB", 1_500_000),
     ("100", 100), (" 64kib ", 65536)],
)  # fmt: skip
def test_parse_size(text, size):
    from rmtllmf.fusion.hf_dir import parse_size

    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "5 GB please", "-1KB", "0", "KB"])
def test_parse_size_refuses_nonsense(text):
    from rmtllmf.errors import InputError
    from rmtllmf.fusion.hf_dir import parse_size

    with pytest.raises(InputError, match="max-shard-size"):
        parse_size(text)


def test_atomic_directory_replaces_whole_or_not_at_all(tmp_path):
    from rmtllmf._io import atomic_directory

    target = tmp_path / "d"
    target.mkdir()
    (target / "a").write_text("old")

    def interrupted() -> None:
        with atomic_directory(target) as tmp:
            (tmp / "a").write_text("new")
            raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        interrupted()
    assert (target / "a").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["d"]
    with atomic_directory(target) as tmp:
        (tmp / "b").write_text("new")
    assert [p.name for p in target.iterdir()] == ["b"]
    assert [p.name for p in tmp_path.iterdir()] == ["d"]
