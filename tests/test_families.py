"""Model families as one registry: a family defined in one test module alone
(``tests/toy_family.py``, a two-layer network on Gaussian clusters) runs ``rmtllmf reproduce``
end to end, in this process and in worker processes, without a line changed anywhere else."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from rmtllmf.app import Family, family_names, get_family, register_family, unregister_family
from rmtllmf.app.reproduce import ReproduceConfig, build_pool, load_config
from rmtllmf.cli import main
from rmtllmf.errors import InputError
from rmtllmf.study.store import ResultsDB
from toy_family import ToyConfig, build_toy_pool

STUDY = {
    "family": "toy-mlp",
    "toy": {"steps": 60},
    "sweep": {
        "task_counts": [2, 3],
        "scenarios": ["ideal", "strongest-user"],
        "links": ["relative", "weights"],
        "k_values": [1],
        "realign": {"k_per_class": 2, "steps": 2, "batch": 8},
        "analysis": {"samples": 4, "probes": 1},
        "lambda_grid": [0.0, 0.5, 1.0],
    },
}


def _study(tmp_path: Path) -> Path:
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(STUDY))
    return path


def test_the_toy_family_is_registered_beside_the_builtins(tmp_path):
    assert {"tiny-vit", "hf-clip", "hf-text", "hf-causal", "toy-mlp"} <= set(family_names())
    assert get_family("toy-mlp").module == "toy_family"
    pool = build_pool(load_config(_study(tmp_path)), tmp_path / "cache", progress=False)
    assert all(pool.finetuned_accuracy(t, "val") > 0.9 for t in ToyConfig().tasks)
    assert all(pool.base_accuracy(t, "val") < 0.8 for t in ToyConfig().tasks)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_reproduce_runs_a_family_defined_in_a_test(tmp_path, workers, capsys):
    out = tmp_path / "out"
    argv = ["reproduce", "--config", str(_study(tmp_path)), "--out", str(out)]
    argv += ["--cache", str(tmp_path / "cache"), "--threads", "1", "--workers", workers]
    assert main(argv) == 0
    assert "Normalized accuracy at N = 3" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_tasks"] == 3
    assert summary["clean"] > summary["chance"]
    resolved = json.loads((out / "config.json").read_text())["reproduce"]
    assert resolved["family"] == "toy-mlp" and resolved["toy"] == ToyConfig(steps=60).model_dump(
        mode="json"
    )
    db = ResultsDB(out / "results.db", read_only=True)
    try:
        roles = {r[0] for r in db.conn.execute("SELECT DISTINCT role FROM runs")}
    finally:
        db.close()
    assert {"clean", "ablation"} <= roles


def test_a_family_name_or_section_is_taken_once():
    clash = Family(
        name="toy-mlp",
        section="other",
        config=ToyConfig,
        build=build_toy_pool,
        tasks=lambda c: c.tasks,
        seconds_per_run=1.0,
    )
    with pytest.raises(InputError, match="name is taken by family 'toy-mlp'"):
        register_family(clash)
    with pytest.raises(InputError, match="section 'zoo' is taken by family 'tiny-vit'"):
        register_family(Family(**{**clash.__dict__, "name": "toy-2", "section": "zoo"}))
    register_family(Family(**{**clash.__dict__, "name": "toy-2", "section": "toy2"}))
    try:
        assert ReproduceConfig(family="toy-2").pool_config() == ToyConfig()
    finally:
        unregister_family("toy-2")
    with pytest.raises(InputError, match="family 'toy-2' is not registered; choose one of"):
        get_family("toy-2")


def test_a_config_section_no_family_owns_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"family": "toy-mlp", "toyy": {}}))
    with pytest.raises(InputError, match=r"toyy: is not a known setting.*toy \(toy-mlp\)"):
        load_config(path)
    path.write_text(yaml.safe_dump({"family": "toy-mlpp"}))
    with pytest.raises(InputError, match="family 'toy-mlpp' is not registered"):
        load_config(path)
    path.write_text(yaml.safe_dump({"family": "toy-mlp", "toy": {"dims": 3}}))
    with pytest.raises(InputError, match=r"toy\.dims: is not a known setting"):
        load_config(path)


def test_the_architecture_doc_lists_every_builtin_family():
    doc = (Path(__file__).parents[1] / "docs" / "architecture.md").read_text(encoding="utf-8")
    rows = [line for line in doc.splitlines() if line.startswith("| `")]
    for name in family_names():
        family = get_family(name)
        if family.module.startswith("rmtllmf."):
            row = next((r for r in rows if r.startswith(f"| `{name}`")), None)
            assert row is not None, f"docs/architecture.md has no row for family {name}"
            assert f"`{family.section}:`" in row
            assert family.module.removeprefix("rmtllmf.").replace(".", "/") + ".py" in row
