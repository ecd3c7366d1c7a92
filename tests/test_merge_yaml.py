"""mergekit-style merge configs (``rmtllmf merge --config``): the shipped example runs on tiny
models made here and loads with ``from_pretrained``; each supported ``merge_method`` gives the
same tensors as the flag form it maps to (and, where a closed form is simple, the closed form);
bad files are refused in one line that names the YAML key."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from hf_tiny import finetune_copies, save_bert
from rmtllmf.cli import main

EXAMPLE = Path(__file__).resolve().parents[1] / "configs" / "merge" / "task-arithmetic.yaml"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """``models/`` as the example names it: a tiny BERT base, two fine-tuned copies and a LoRA
    adapter."""
    from peft import LoraConfig, get_peft_model
    from transformers import BertModel

    root = tmp_path_factory.mktemp("work")
    models = root / "models"
    base = save_bert(models / "base")
    a, b = finetune_copies(base, models, 2)
    a.rename(models / "ft-sentiment")
    b.rename(models / "ft-topic")
    torch.manual_seed(3)
    config = LoraConfig(
        r=2, lora_alpha=4, target_modules=["query", "dense"], init_lora_weights=False
    )
    peft_model = get_peft_model(BertModel.from_pretrained(base), config)
    peft_model.save_pretrained(models / "lora-qa")
    merged = peft_model.merge_and_unload().state_dict()
    lora = {k: v.detach().clone() for k, v in merged.items()}
    return root, lora


def _run(*args):
    return main(["merge", *map(str, args)])


def _weights(out: Path) -> dict[str, torch.Tensor]:
    if out.is_dir():
        return {k: v for f in sorted(out.glob("*.safetensors")) for k, v in load_file(f).items()}
    return load_file(out)


def test_the_example_config_runs_and_loads(workdir, monkeypatch, capsys):
    from transformers import AutoModel, BertModel

    root, lora = workdir
    monkeypatch.chdir(root)
    assert _run("--config", EXAMPLE, "--out", "merged") == 0
    assert "into merged" in capsys.readouterr().out
    models = root / "models"
    b = load_file(models / "base" / "model.safetensors")
    fa = load_file(models / "ft-sentiment" / "model.safetensors")
    fb = load_file(models / "ft-topic" / "model.safetensors")
    expected = {
        k: v
        if k.startswith("embeddings.")
        else v + 0.4 * ((fa[k] - v) + (fb[k] - v) + 0.5 * (lora[k] - v))
        for k, v in b.items()
    }
    model = AutoModel.from_pretrained(root / "merged").eval()
    state = model.state_dict()
    for k, v in expected.items():
        torch.testing.assert_close(state[k], v, msg=k)
    reference = BertModel.from_pretrained(models / "base").eval()
    reference.load_state_dict(expected, strict=False)
    ids = torch.tensor([[2, 5, 6, 7, 3]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids)[0], reference(ids)[0])
    record = json.loads((root / "merged" / "rmtllmf_merge.json").read_text())
    assert record["config"] == str(EXAMPLE) and record["merge"]["weights"] == [1.0, 1.0, 0.5]


def test_the_example_gives_the_same_tensors_as_its_flags(workdir, monkeypatch):
    root, _ = workdir
    monkeypatch.chdir(root)
    assert _run("--config", EXAMPLE, "--out", "from-yaml.safetensors") == 0
    flags = ["--base", "models/base", "--models", "models/ft-sentiment", "models/ft-topic"]
    flags += ["models/lora-qa", "--lambda", "0.4", "--weights", "1", "1", "0.5"]
    flags += ["--dtype", "float32", "--exclude", "embeddings.*"]
    assert _run(*flags, "--out", "from-flags.safetensors") == 0
    got, want = _weights(root / "from-yaml.safetensors"), _weights(root / "from-flags.safetensors")
    assert got.keys() == want.keys()
    for k in want:
        assert torch.equal(got[k], want[k]), k


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


MODELS = """base_model: models/base
models:
  - model: models/ft-sentiment
    parameters: {weight: 1.0}
  - model: models/ft-topic
    parameters: {weight: 1.0}
"""


@pytest.mark.parametrize(
    ("yaml", "flags"),
    [
        (
            "merge_method: ties\nparameters: {density: 0.5, lambda: 0.8}\n",
            ["--method", "ties", "--density", "0.5", "--lambda", "0.8"],
        ),
        (
            "merge_method: ties\nparameters: {density: 0.3, normalize: false}\n",
            ["--method", "ties", "--density", "0.3", "--merge", "sum", "--lambda", "1"],
        ),
        (
            "merge_method: dare_linear\nparameters: {density: 0.7, lambda: 0.5}\n"
            "rmtllmf: {seed: 4}\n",
            ["--method", "dare", "--drop-rate", "0.30000000000000004", "--lambda", "0.5",
             "--seed", "4"],
        ),
        (
            "merge_method: dare_ties\nparameters: {density: 0.6}\n",
            ["--method", "dare", "--combine", "ties", "--density", "1.0", "--merge", "sum",
             "--drop-rate", "0.4", "--lambda", "1"],
        ),
        (
            "merge_method: task_arithmetic\ndtype: bfloat16\nparameters: {lambda: 0.3}\n",
            ["--lambda", "0.3", "--dtype", "bfloat16"],
        ),
    ],
)  # fmt: skip
def test_yaml_and_flags_give_the_same_tensors(workdir, tmp_path, monkeypatch, yaml, flags):
    root, _ = workdir
    monkeypatch.chdir(root)
    config = _write(tmp_path / "merge.yaml", MODELS + yaml)
    assert _run("--config", config, "--out", tmp_path / "yaml.safetensors") == 0
    given = ["--base", "models/base", "--models", "models/ft-sentiment", "models/ft-topic"]
    assert _run(*given, *flags, "--out", tmp_path / "flags.safetensors") == 0
    got, want = _weights(tmp_path / "yaml.safetensors"), _weights(tmp_path / "flags.safetensors")
    for k in want:
        assert torch.equal(got[k], want[k]), k


def _files(tmp_path: Path, n: int = 3) -> tuple[Path, list[Path], dict, list[dict]]:
    g = torch.Generator().manual_seed(0)
    base = {"w": torch.randn(6, 5, generator=g), "ids": torch.arange(3)}
    save_file(base, tmp_path / "base.safetensors")
    fts, paths = [], []
    for i in range(n):
        ft = {"w": base["w"] + 0.1 * torch.randn(6, 5, generator=g), "ids": torch.arange(3)}
        paths.append(tmp_path / f"ft{i}.safetensors")
        save_file(ft, paths[-1])
        fts.append(ft)
    return tmp_path / "base.safetensors", paths, base, fts


def _entries(paths: list[Path], weights: list[float]) -> str:
    return "".join(
        f"  - model: {p}\n    parameters: {{weight: {w}}}\n"
        for p, w in zip(paths, weights, strict=True)
    )


def test_linear_without_base_is_the_weighted_average(tmp_path):
    _, paths, base, fts = _files(tmp_path)
    config = _write(
        tmp_path / "m.yaml", "merge_method: linear\nmodels:\n" + _entries(paths, [1.0, 3.0, 4.0])
    )
    assert _run("--config", config, "--out", tmp_path / "m.safetensors") == 0
    got = load_file(tmp_path / "m.safetensors")
    want = (fts[0]["w"] + 3 * fts[1]["w"] + 4 * fts[2]["w"]) / 8
    torch.testing.assert_close(got["w"], want)
    assert torch.equal(got["ids"], base["ids"])


def test_normalized_task_arithmetic_and_weighted_ties_closed_forms(tmp_path):
    base_file, paths, base, fts = _files(tmp_path)
    taus = [ft["w"] - base["w"] for ft in fts]
    w = [1.0, 2.0, 5.0]
    head = f"base_model: {base_file}\nmodels:\n" + _entries(paths, w)
    ta = _write(tmp_path / "ta.yaml", head + "merge_method: task_arithmetic\n"
                "parameters: {lambda: 0.5, normalize: true}\n")  # fmt: skip
    assert _run("--config", ta, "--out", tmp_path / "ta.safetensors") == 0
    want = base["w"] + 0.5 * sum(wq * t for wq, t in zip(w, taus, strict=True)) / sum(w)
    torch.testing.assert_close(load_file(tmp_path / "ta.safetensors")["w"], want)
    # TIES without trimming (density 1): sign of sum_q w_q tau_q, then the weighted disjoint
    # mean sum_q w_q tau_q [agree] / sum_q w_q [agree] (mergekit's normalised TIES)
    ties = _write(tmp_path / "ties.yaml", head + "merge_method: ties\n")
    assert _run("--config", ties, "--out", tmp_path / "ties.safetensors") == 0
    stacked = torch.stack([wq * t for wq, t in zip(w, taus, strict=True)])
    sign = torch.sign(stacked.sum(0))
    agree = torch.sign(stacked) == sign
    weights = torch.tensor(w).reshape(3, 1, 1)
    want = base["w"] + (stacked * agree).sum(0) / (weights * agree).sum(0)
    torch.testing.assert_close(load_file(tmp_path / "ties.safetensors")["w"], want)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", "is empty"),
        ("merge_method: [\n", "is not valid YAML at line"),
        ("- a\n- b\n", "must be a mapping"),
        (MODELS + "merge_methd: ties\n", "merge_methd: is not a known setting"),
        (MODELS + "merge_method: slerp\n", "merge_method: 'slerp' is not supported; rmtllmf "
         "merges with task_arithmetic, ties, dare_linear, dare_ties, linear"),
        (MODELS.replace("weight: 1.0}\n  - model: models/ft-topic", "weight: [0, 1]}\n"
         "  - model: models/ft-topic") + "merge_method: ties\n",
         "models[0].parameters.weight: give one number"),
        (MODELS.replace("{weight: 1.0}", "{weight: 1.0, densty: 0.2}", 1)
         + "merge_method: ties\n", "models[0].parameters.densty: is not a known setting"),
        (MODELS.replace("models/ft-topic", "models/ft-nowhere") + "merge_method: ties\n",
         "models[1].model: 'models/ft-nowhere' does not exist here"),
        (MODELS.replace("{weight: 1.0}", "{}", 1) + "merge_method: ties\n",
         "models[0].parameters.weight is required"),
        (MODELS.replace("{weight: 1.0}", "{weight: 1.0, density: 0.2}", 1)
         + "merge_method: ties\n", "different densities"),
        (MODELS + "merge_method: ties\nslices: []\n", "slices: mergekit's layer slices"),
        (MODELS + "merge_method: ties\ndtype: float8\n", "dtype: 'float8' is not one of"),
        (MODELS + "merge_method: task_arithmetic\nparameters: {density: 0.5}\n",
         "density has no meaning"),
        (MODELS + "merge_method: dare_ties\nparameters: {rescale: false}\n",
         "rescale: false is not supported"),
        (MODELS.replace("base_model: models/base\n", "") + "merge_method: ties\n",
         "base_model is required"),
        (MODELS + "merge_method: ties\ntokenizer_source: union\n", "tokenizer_source"),
    ],
)  # fmt: skip
def test_bad_configs_are_refused_naming_the_key(
    workdir, tmp_path, monkeypatch, capsys, text, words
):
    root, _ = workdir
    monkeypatch.chdir(root)
    config = _write(tmp_path / "bad.yaml", text)
    out = tmp_path / "out.safetensors"
    assert _run("--config", config, "--out", out) == 2
    err = capsys.readouterr().err
    assert words in err, err
    assert str(config) in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "pydantic" not in err
    assert not out.exists()


def test_config_and_model_flags_together_are_refused(workdir, monkeypatch, capsys):
    root, _ = workdir
    monkeypatch.chdir(root)
    assert _run("--config", EXAMPLE, "--lambda", "0.5", "--out", "x.safetensors") == 2
    assert "drop --lambda" in capsys.readouterr().err
    assert _run("--models", "models/ft-topic", "--out", "x.safetensors") == 2
    assert "--base is required (or give --config" in capsys.readouterr().err


def test_missing_config_file(tmp_path, capsys):
    assert _run("--config", tmp_path / "nope.yaml", "--out", tmp_path / "o.safetensors") == 2
    assert "does not exist" in capsys.readouterr().err


def test_out_equal_to_the_config_is_refused(workdir, tmp_path, monkeypatch, capsys):
    root, _ = workdir
    monkeypatch.chdir(root)
    copy = tmp_path / "cfg"
    copy.mkdir()
    shutil.copy(EXAMPLE, copy / "merge.yaml")
    assert _run("--config", copy / "merge.yaml", "--out", copy / "merge.yaml") == 2
    assert "--out" in capsys.readouterr().err
    assert (copy / "merge.yaml").read_text() == EXAMPLE.read_text()


@pytest.mark.parametrize(
    "cfg",
    [
        {"scaling": 0.5},
        {"method": "ties", "scaling": 0.7, "options": {"density": 0.4}},
        {"method": "ties", "options": {"density": 0.6, "merge": "sum"}},
        {"method": "dare", "options": {"combine": "ties", "density": 0.5, "drop_rate": 0.3}},
        {"method": "dare", "options": {"drop_rate": 0.2}},
    ],
)
def test_per_model_weights_agree_across_the_drivers(tmp_path, monkeypatch, cfg):
    """MergeConfig.weights, merged in memory, from files (fused or streaming) and in slices of
    7 entries, give the same tensors."""
    import rmtllmf.fusion.drivers as merge_module
    from merge_helpers import random_models
    from rmtllmf.fusion import MergeConfig, TaskVector, merge_checkpoints, merge_task_vectors

    config = MergeConfig(**cfg, weights=(0.5, 2.0, -0.25))
    base, fts = random_models(3)
    expected = merge_task_vectors(base, [TaskVector.from_models(base, f) for f in fts], config)
    save_file(base, tmp_path / "base.safetensors")
    paths = []
    for i, ft in enumerate(fts):
        paths.append(tmp_path / f"ft{i}.safetensors")
        save_file(ft, paths[-1])
    merge_checkpoints(tmp_path / "base.safetensors", paths, tmp_path / "m.safetensors", config)
    monkeypatch.setattr(merge_module, "SLICE_ELEMENTS", 7)
    merge_checkpoints(base, fts, tmp_path / "sliced.safetensors", config)
    for out in ("m.safetensors", "sliced.safetensors"):
        got = load_file(tmp_path / out)
        for k in base:
            torch.testing.assert_close(got[k], expected[k], msg=f"{out} {k}")
    with pytest.raises(ValueError, match="3 merge weights for 2 models"):
        merge_checkpoints(base, fts[:2], tmp_path / "x.safetensors", config)
