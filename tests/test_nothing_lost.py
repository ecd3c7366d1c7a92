"""Nothing lost, nothing silently wrong: output directories a command owns, caches keyed by
what they depend on, partial studies that say so, and sizes with bounds.

The bad inputs themselves (a one-line error, every file unchanged byte for byte) are rows of
``tests/test_bad_inputs.py``; here are the paths that succeed and must still keep the user's
files, and the building blocks."""

from __future__ import annotations

import argparse
import csv
import errno
import json
import sqlite3
from pathlib import Path

import pytest
import yaml

from conftest import tiny_zoo_config
from rmtllmf._io import OWNER_MARK, atomic_directory, check_output_dir_owner, directory_owner
from rmtllmf.cli import main
from rmtllmf.errors import InputError


def _study_yaml(root: Path, name: str = "study.yaml", **sweep: object) -> Path:
    cfg = {
        "family": "tiny-vit",
        "zoo": tiny_zoo_config(root, ("signs", "textures")).model_dump(mode="json"),
        "sweep": {
            "task_counts": [2],
            "scenarios": ["ideal"],
            "links": ["relative"],
            "k_values": [1],
            "realign": {"k_per_class": 2, "steps": 2, "batch": 8},
            "analysis": {"samples": 4, "probes": 1},
            "lambda_grid": [0.0, 0.5],
            **sweep,
        },
    }
    path = root / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def _argv(study: Path, out: Path, *extra: str) -> list[str]:
    return ["reproduce", "--config", str(study), "--out", str(out), "--cache",
            str(study.parent / "cache"), "--threads", "1", "--workers", "1", *extra]  # fmt: skip


def _lambdas(out: Path) -> set[float]:
    with (out / "runs.csv").open() as fh:
        return {float(row["lambda"]) for row in csv.DictReader(fh)}


def test_a_partial_study_reports_what_it_has_and_keeps_the_users_files(tmp_path, capsys):
    study = _study_yaml(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "NOTES.md").write_bytes(b"my notes\x00\xff")
    assert main(_argv(study, out, "--max-runs", "2")) == 2  # not the study's directory
    assert "--force" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["NOTES.md"]
    assert main(_argv(study, out, "--max-runs", "2", "--force")) == 0
    err = capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    coverage = summary["coverage"]
    assert coverage["runs"] == 2 and coverage["planned"] > 2 and not coverage["complete"]
    assert f"Incomplete: 2 of the {coverage['planned']} planned runs" in err
    assert f"Incomplete: 2 of the {coverage['planned']} planned runs" in (
        (out / "report.md").read_text()
    )
    assert directory_owner(out)[0] == "reproduce"
    assert main(_argv(study, out)) == 0  # the study's own directory now: no --force needed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["coverage"]["complete"] and summary["coverage"]["note"] is None
    assert "Incomplete" not in (out / "report.md").read_text()
    assert (out / "NOTES.md").read_bytes() == b"my notes\x00\xff"


def test_a_changed_lambda_grid_chooses_lambda_anew_and_reports_only_its_runs(tmp_path):
    out = tmp_path / "out"
    assert main(_argv(_study_yaml(tmp_path, "a.yaml", lambda_grid=[0.3]), out)) == 0
    first = json.loads((out / "summary.json").read_text())
    assert 0.3 in _lambdas(out) and 0.5 not in _lambdas(out)
    assert main(_argv(_study_yaml(tmp_path, "b.yaml", lambda_grid=[0.5]), out)) == 0
    second = json.loads((out / "summary.json").read_text())
    assert 0.5 in _lambdas(out) and 0.3 not in _lambdas(out)  # every reported run used 0.5
    assert second["config"]["lambda_grid"] == [0.5]
    assert second["coverage"]["complete"]
    # every run's config holds lambda, so every earlier run is of other settings: kept, not shown
    assert second["coverage"]["other_settings"] == first["coverage"]["runs"]
    assert "other settings" in (out / "report.md").read_text()
    assert second["clean"] != first["clean"]  # the merge itself changed with lambda


def test_average_records_no_lambda_and_task_arithmetic_its_own(tmp_path):
    import torch
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(4)}, tmp_path / "base.safetensors")
    for i in (1, 2):
        save_file({"w": torch.full((4,), float(i))}, tmp_path / f"ft{i}.safetensors")
    models = [str(tmp_path / "ft1.safetensors"), str(tmp_path / "ft2.safetensors")]
    common = ["merge", "--base", str(tmp_path / "base.safetensors"), "--models", *models]
    assert main([*common, "--method", "average", "--out", str(tmp_path / "avg.safetensors")]) == 0
    record = json.loads((tmp_path / "avg.safetensors.json").read_text())
    assert record["merge"]["method"] == "average" and record["merge"]["scaling"] is None
    assert main([*common, "--lambda", "0.4", "--out", str(tmp_path / "ta.safetensors")]) == 0
    assert json.loads((tmp_path / "ta.safetensors.json").read_text())["merge"]["scaling"] == 0.4
    # a merge's own file is replaced without --force; the record follows it
    assert main([*common, "--lambda", "0.2", "--out", str(tmp_path / "ta.safetensors")]) == 0
    assert json.loads((tmp_path / "ta.safetensors.json").read_text())["merge"]["scaling"] == 0.2


def test_evaluate_scores_the_tasks_on_the_default_eight_task_zoo(tmp_path, monkeypatch):
    """``evaluate --tasks digits`` uses the zoo that reproduce and zoo build cache, not a zoo of
    its own (whose expert would be another model): the config it builds is the default."""
    from rmtllmf.pools.tiny_vit_pool import ZooConfig
    from rmtllmf.pools.zoo_config import shipped_base_path

    seen = []

    def fake_build_zoo(root: Path, cfg: ZooConfig, **_: object) -> None:
        seen.append(cfg)
        raise InputError("stop here; the test checks the config")

    monkeypatch.setenv("RMTLLMF_CACHE", str(tmp_path))
    monkeypatch.setattr("rmtllmf.pools.tiny_vit_pool.build_zoo", fake_build_zoo)
    argv = ["evaluate", "--model", str(shipped_base_path()), "--tasks", "digits", "--json"]
    assert main(argv) == 2
    assert seen == [ZooConfig()] and len(seen[0].tasks) == 8


def _channel_args(**given: object) -> argparse.Namespace:
    args = {
        "users": 8,
        "antennas": 16,
        "symbols": 0,
        "no_limit": False,
        "scenario": "ideal",
        "aircomp": False,
    } | given
    return argparse.Namespace(**args)


def test_channel_sizes_are_bounded_and_no_limit_goes_past():
    from rmtllmf.cli.channel import check_sizes

    check_sizes(_channel_args(symbols=2**24))  # 8 users: 16.8M symbols, the bound
    check_sizes(_channel_args(antennas=64, aircomp=True))  # 12800 * 64^3 < 2^33
    with pytest.raises(InputError, match="with AirComp"):
        check_sizes(_channel_args(antennas=128, scenario="aircomp-maxmin"))
    with pytest.raises(InputError, match="give at most --symbols 16777216"):
        check_sizes(_channel_args(symbols=2**24 + 1))
    check_sizes(_channel_args(users=8, antennas=1024))  # 8 * 1024^3 = 2^33, the bound
    with pytest.raises(InputError, match="eigendecompositions"):
        check_sizes(_channel_args(users=9, antennas=1024))
    with pytest.raises(InputError, match="above the bound 1024"):
        check_sizes(_channel_args(users=1025, antennas=1))
    for big in ({"symbols": 10**9}, {"users": 10**5, "antennas": 1}, {"antennas": 5000}):
        check_sizes(_channel_args(no_limit=True, **big))  # past every bound on request
    with pytest.raises(InputError, match="negative"):
        check_sizes(_channel_args(symbols=-1, no_limit=True))


def test_progress_lines_advance_by_steps(capsys):
    from rmtllmf._progress import progress_bar

    with progress_bar(True, "uses", 100) as advance:
        for _ in range(4):
            advance("uses", 30)  # 30, 60, 90, 120: each crosses a 5% line
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" (")[0] for line in lines] == [
        "uses: 30/100",
        "uses: 60/100",
        "uses: 90/100",
        "uses: 120/100",
    ]


def test_disk_errors_read_as_the_users_problem():
    from rmtllmf.cli.common import error_message

    text, status = error_message(sqlite3.OperationalError("database or disk is full"))
    assert status == 2 and "free space" in text and "internal error" not in text
    text, status = error_message(OSError(errno.ENOSPC, "No space left on device"))
    assert status == 2 and "the disk is full" in text and ":;" not in text
    text, _ = error_message(OSError(errno.ENOSPC, "No space left on device", "/x/m.json"))
    assert "writing /x/m.json" in text
    assert error_message(sqlite3.OperationalError("no such column: x"))[1] == 1  # a real bug


def test_replacing_a_directory_keeps_what_the_user_added(tmp_path):
    target = tmp_path / "out"
    with atomic_directory(target, "merge") as tmp:
        (tmp / "ours.bin").write_bytes(b"1")
        (tmp / "old-only.bin").write_bytes(b"1")
    (target / "user.txt").write_bytes(b"keep\x00")
    (target / "user-dir").mkdir()
    (target / "user-dir" / "f").write_bytes(b"f")

    def interrupted() -> None:
        with atomic_directory(target, "merge") as tmp:
            (tmp / "ours.bin").write_bytes(b"2")
            raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        interrupted()
    assert sorted(p.name for p in target.iterdir()) == sorted(
        [OWNER_MARK, "ours.bin", "old-only.bin", "user.txt", "user-dir"]
    )
    with atomic_directory(target, "merge") as tmp:
        (tmp / "ours.bin").write_bytes(b"2")
    assert sorted(p.name for p in target.iterdir()) == sorted(
        [OWNER_MARK, "ours.bin", "user.txt", "user-dir"]
    )
    assert (target / "ours.bin").read_bytes() == b"2"
    assert (target / "user.txt").read_bytes() == b"keep\x00"
    assert (target / "user-dir" / "f").read_bytes() == b"f"
    assert directory_owner(target) == ("merge", frozenset({"ours.bin"}))
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary left


def test_a_directory_is_the_commands_own_new_empty_or_forced(tmp_path):
    check_output_dir_owner(tmp_path / "new", "reproduce")
    (tmp_path / "empty").mkdir()
    check_output_dir_owner(tmp_path / "empty", "reproduce")
    with atomic_directory(tmp_path / "merged", "merge") as tmp:
        (tmp / "model.safetensors").write_bytes(b"")
    check_output_dir_owner(tmp_path / "merged", "merge")
    with pytest.raises(InputError, match="was written by rmtllmf merge"):
        check_output_dir_owner(tmp_path / "merged", "reproduce")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "a.txt").write_text("a")
    with pytest.raises(InputError, match=r"did not write \(a.txt\).*--force"):
        check_output_dir_owner(tmp_path / "mine", "finetune")
    check_output_dir_owner(tmp_path / "mine", "finetune", force=True)
