"""Every command answers bad input the same way: a non-zero exit status, one line on stderr
that names the problem and what to do, no traceback, no input file changed, nothing half
written.

Each row of ``CASES`` prepares its inputs in a fresh folder, runs the command in-process through
``rmtllmf.cli.main`` (two rows also as a real process, to show that no traceback reaches the
terminal) and compares the folder before and after. Two bad outputs need a folder of their
own: a read-only one, and a full disk (a 64 KiB tmpfs). Two merges writing the same ``--out`` at
once are no error; their row is the last test: one whole merge is left, never a mix.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from rmtllmf.cli import main

FIX = re.compile(
    r"\b(give|choose|use|drop|fix|add|write|check|rerun|run|pass|convert|re-save|re-download|"
    r"remove|see|install|pick|leave|merge)\b",
    re.IGNORECASE,
)
"""Words with which a message says what to do."""
ERROR_LINE = re.compile(r"^rmtllmf( [a-z-]+)*: error: \S")


@dataclass(frozen=True)
class Case:
    """One bad input: how to prepare it, the command line, a fragment the one-line message must
    hold and the exit status; every file under the case's folder must be unchanged, byte for
    byte, afterwards (the user's files included: the data-loss rows)."""

    id: str
    argv: Callable[[Path], list[str]]
    expect: str
    setup: Callable[[Path], None] = lambda _root: None
    subprocess: bool = False
    status: int = 2


# ---------------------------------------------------------------- inputs the cases share


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _checkpoints(root: Path) -> None:
    """A base, a fine-tune, and broken variants of the fine-tune."""
    import torch
    from safetensors.torch import save_file

    base = {"w": torch.zeros(3, 2), "b": torch.zeros(2)}
    save_file(base, root / "base.safetensors")
    save_file({"w": torch.ones(3, 2), "b": torch.ones(2)}, root / "ft.safetensors")
    data = (root / "ft.safetensors").read_bytes()
    (root / "zero.safetensors").write_bytes(b"")
    (root / "truncated.safetensors").write_bytes(data[:-8])
    (root / "header.safetensors").write_bytes(b"\xff" * 8 + data[8:])
    torch.save(base, root / "pickled.bin")
    save_file({"w": torch.ones(3, 2)}, root / "nokey.safetensors")
    save_file({"w": torch.ones(2, 3), "b": torch.ones(2)}, root / "shape.safetensors")
    save_file(
        {"w": torch.ones(3, 2, dtype=torch.float16), "b": torch.ones(2)},
        root / "dtype.safetensors",
    )
    save_file({"w": torch.full((3, 2), 2.0), "b": torch.ones(2)}, root / "ft2.safetensors")
    nan = torch.ones(3, 2)
    nan[1, 0] = float("nan")
    save_file({"w": nan, "b": torch.ones(2)}, root / "nan.safetensors")
    inf = torch.ones(2)
    inf[1] = float("inf")
    save_file({"w": torch.ones(3, 2), "b": inf}, root / "inf.safetensors")


def _large_checkpoints(root: Path) -> None:
    """A base and a fine-tune of 256 KiB each: their merge does not fit a 64 KiB disk."""
    import torch
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(256, 256)}, root / "base.safetensors")
    save_file({"w": torch.ones(256, 256)}, root / "ft.safetensors")


def _tiny_vit_other(root: Path) -> None:
    from conftest import make_tiny_base

    make_tiny_base(root / "other.safetensors")


def _empty_study(root: Path) -> None:
    from rmtllmf.study.store import ResultsDB

    ResultsDB(root / "empty" / "results.db").close()


def _corrupt_db(root: Path) -> None:
    (root / "study").mkdir()
    (root / "study" / "results.db").write_bytes(b"SQLite format 3\x00" + b"\x00" * 84 + b"junk")


def _user_files(folder: str, *names: str) -> Callable[[Path], None]:
    """A folder of the user's with files of the given names (what a command must not touch)."""

    def setup(root: Path) -> None:
        for name in names:
            _write(root / folder / name, f"the user's own {name}\n")

    return setup


def _hf_base_with_bad_config(root: Path) -> None:
    """A Hugging Face-style base directory whose config.json is not JSON, and a fine-tune."""
    _checkpoints(root)
    (root / "hfbase").mkdir()
    (root / "hfbase" / "model.safetensors").write_bytes((root / "base.safetensors").read_bytes())
    (root / "hfbase" / "config.json").write_text("{not json")


def _nan_tiny_model(root: Path) -> None:
    """The shipped tiny base with one NaN entry."""
    from safetensors.torch import save_file

    from rmtllmf.fusion import load_state_dict
    from rmtllmf.pools.zoo_config import shipped_base_path

    state = load_state_dict(shipped_base_path())
    state["embeddings.class_embedding"][0] = float("nan")
    save_file(state, root / "nan-model.safetensors")


def _clip_shaped(root: Path) -> None:
    """A safetensors file that is no tiny-vit base (other names, no architecture metadata)."""
    import torch
    from safetensors.torch import save_file

    save_file(
        {"vision_model.embeddings.patch_embedding.weight": torch.zeros(4, 3, 16, 16)},
        root / "clip-shaped.safetensors",
    )


def _file(name: str, text: str = "x") -> Callable[[Path], None]:
    return lambda root: _write(root / name, text)


def _yaml(text: str) -> Callable[[Path], None]:
    return _file("study.yaml", text)


def _reproduce(*extra: str) -> Callable[[Path], list[str]]:
    return lambda r: ["reproduce", "--out", str(r / "out"), *extra]


def _config(*extra: str) -> Callable[[Path], list[str]]:
    return lambda r: ["reproduce", "--config", str(r / "study.yaml"), "--out", str(r / "out"),
                      *extra]  # fmt: skip


def _merge(model: str, out: str = "merged.safetensors") -> Callable[[Path], list[str]]:
    return lambda r: ["merge", "--base", str(r / "base.safetensors"), "--models",
                      str(r / "ft.safetensors"), str(r / model), "--out", str(r / out)]  # fmt: skip


def _merge_flags(*extra: str, out: str = "merged.safetensors") -> Callable[[Path], list[str]]:
    """A merge of the base and two fine-tunes with extra flags."""
    return lambda r: ["merge", "--base", str(r / "base.safetensors"), "--models",
                      str(r / "ft.safetensors"), str(r / "ft2.safetensors"), *extra,
                      "--out", str(r / out)]  # fmt: skip


def _both(*setups: Callable[[Path], None]) -> Callable[[Path], None]:
    def setup(root: Path) -> None:
        for step in setups:
            step(root)

    return setup


def _merge_full(*extra: str) -> Callable[[Path], list[str]]:
    """A merge of the large checkpoints onto the 64 KiB disk ``full``."""
    return lambda r: ["merge", "--base", str(r / "base.safetensors"), "--models",
                      str(r / "ft.safetensors"), *extra, "--out",
                      str(r / "full" / "merged.safetensors")]  # fmt: skip


CASES = [
    # reproduce
    Case(
        "missing-config",
        lambda r: ["reproduce", "--config", str(r / "none.yaml")],
        "does not exist",
    ),
    Case("bad-yaml", _config(), "not valid YAML", _yaml("family: [unclosed\n")),
    Case("unknown-key", _config(), "bogus: is not a known setting", _yaml("bogus: 1\n")),
    Case("wrong-type", _config(), "zoo.steps", _yaml("zoo:\n  steps: many\n")),
    Case("wrong-type-sweep", _config(), "task_counts", _yaml("sweep:\n  task_counts: 3\n")),
    Case("empty-config", _config(), "is empty", _yaml("")),
    Case("comment-only-config", _config(), "is empty", _yaml("# nothing yet\n")),
    Case("list-config", _config(), "not a mapping", _yaml("- family\n")),
    Case("out-of-range", _config(), "zoo.steps", _yaml("zoo:\n  steps: 0\n")),
    Case("max-runs-zero", _reproduce("--max-runs", "0"), "--max-runs"),
    Case("quick-and-config", _config("--quick"), "drop --config or --quick", _yaml("{}\n")),
    Case("bad-shard", _reproduce("--shard", "2/2"), "--shard"),
    Case("address-without-ray", _reproduce("--address", "auto"), "--executor ray"),
    Case("gpus-without-ray", _reproduce("--gpus-per-run", "0.5"), "--executor ray"),
    Case("zero-cpus-per-run", _reproduce("--cpus-per-run", "0"), "--cpus-per-run"),
    Case("fractional-cpus-process", _reproduce("--cpus-per-run", "0.5"), "--executor ray"),
    Case(
        "out-is-a-file",
        lambda r: ["reproduce", "--out", str(r / "taken")],
        "is a file",
        _file("taken"),
        subprocess=True,
    ),
    Case(
        "out-under-a-file",
        lambda r: ["reproduce", "--out", str(r / "taken" / "sub")],
        "is a file",
        _file("taken"),
    ),
    Case("read-only-out", lambda r: ["reproduce", "--out", str(r / "ro" / "results")], "read-only"),
    Case(
        "missing-shard",
        lambda r: ["reproduce", "--merge-shards", str(r / "s0"), "--out", str(r / "out")],
        "does not exist",
    ),
    # evaluate
    Case(
        "evaluate-missing-model",
        lambda r: ["evaluate", "--model", str(r / "none.safetensors")],
        "does not exist",
    ),
    Case(
        "evaluate-zero-byte",
        lambda r: ["evaluate", "--model", str(r / "zero.safetensors")],
        "zero.safetensors",
        _checkpoints,
    ),
    Case(
        "evaluate-pickle",
        lambda r: ["evaluate", "--model", str(r / "pickled.bin")],
        "pickle",
        _checkpoints,
    ),
    Case(
        "evaluate-other-architecture",
        lambda r: ["evaluate", "--model", str(r / "other.safetensors")],
        "not a tiny-vit checkpoint of this base",
        _tiny_vit_other,
    ),
    Case(
        "evaluate-unknown-task",
        lambda r: ["evaluate", "--model", str(r / "ft.safetensors"), "--tasks", "weather"],
        "not in the embedded suite",
        _checkpoints,
    ),
    Case(
        "evaluate-bad-split",
        lambda r: ["evaluate", "--model", str(r / "ft.safetensors"), "--split", "train"],
        "--split",
        _checkpoints,
    ),
    Case(
        "evaluate-bad-pair",
        lambda r: [
            "evaluate",
            "--family",
            "hf-clip",
            "--model",
            str(r / "ft.safetensors"),
            "--data",
            "no-equals-sign",
        ],
        "TASK=PATH",
        _checkpoints,
    ),
    Case(
        "evaluate-unknown-family",
        lambda r: ["evaluate", "--family", "hf-vit", "--model", str(r / "ft.safetensors")],
        "--family hf-vit is not a registered family; choose one of tiny-vit, hf-clip",
        _checkpoints,
    ),
    Case(
        "evaluate-family-without-hook",
        lambda r: ["evaluate", "--family", "hf-text", "--model", str(r / "ft.safetensors")],
        "--family hf-text has no evaluate command; evaluate takes tiny-vit, hf-clip",
        _checkpoints,
    ),
    # finetune
    Case("finetune-no-task", lambda r: ["finetune", "--out", str(r / "ft")], "--task"),
    Case(
        "finetune-family-without-hook",
        lambda r: ["finetune", "--family", "hf-causal", "--out", str(r / "ft")],
        "--family hf-causal has no finetune command",
    ),
    Case(
        "finetune-unknown-task",
        lambda r: ["finetune", "--task", "weather", "--out", str(r / "ft")],
        "--task",
    ),
    Case(
        "finetune-out-is-a-file",
        lambda r: ["finetune", "--task", "signs", "--out", str(r / "taken")],
        "is a file",
        _file("taken"),
    ),
    Case(
        "finetune-missing-folder",
        lambda r: [
            "finetune",
            "--family",
            "hf-clip",
            "--train-folder",
            str(r / "none"),
            "--out",
            str(r / "ft"),
        ],
        "is not a directory",
    ),
    Case(
        "finetune-val-fraction",
        lambda r: [
            "finetune",
            "--family",
            "hf-clip",
            "--train-folder",
            str(r),
            "--val-fraction",
            "1.5",
            "--out",
            str(r / "ft"),
        ],
        "--val-fraction",
    ),
    Case(
        "finetune-steps-zero",
        lambda r: ["finetune", "--task", "signs", "--steps", "0", "--out", str(r / "ft")],
        "--steps",
    ),
    # channel
    Case("channel-users-zero", lambda r: ["channel", "--users", "0"], "--users"),
    Case("channel-wrong-type", lambda r: ["channel", "--users", "many"], "--users"),
    Case(
        "channel-jammer-overflow",
        lambda r: ["channel", "--scenario", "sum-rate", "--jammer-dbm", "1e9"],
        "--jammer-dbm",
        subprocess=True,
    ),
    Case(
        "channel-r-min-above-r-max",
        lambda r: ["channel", "--r-min", "900", "--r-max", "10"],
        "--r-min",
    ),
    Case("channel-unknown-flag", lambda r: ["channel", "--jammer", "5"], "unrecognized"),
    # zoo
    Case(
        "zoo-unknown-task",
        lambda r: ["zoo", "build", "--tasks", "weather"],
        "not in the embedded suite",
    ),
    Case(
        "zoo-steps-zero",
        lambda r: ["zoo", "build", "--steps", "0", "--root", str(r / "z")],
        "--steps",
    ),
    Case(
        "zoo-root-is-a-file",
        lambda r: ["zoo", "build", "--root", str(r / "taken")],
        "is a file",
        _file("taken"),
    ),
    Case(
        "zoo-shipped-experts-other-settings",
        lambda r: ["zoo", "build", "--experts", "shipped", "--steps", "5", "--root", str(r / "z")],
        "the settings steps differ from theirs",
    ),
    Case(
        "zoo-missing-base",
        lambda r: ["zoo", "build", "--base", str(r / "none.safetensors"), "--root", str(r / "z")],
        "--base",
    ),
    # export
    Case(
        "export-missing",
        lambda r: ["export", "--to", "mlflow", "--out", str(r / "ml"), str(r / "none")],
        "does not exist",
    ),
    Case(
        "export-not-a-db",
        lambda r: ["export", "--to", "tensorboard", "--out", str(r / "tb"), str(r / "notes.txt")],
        "not a results database",
        _file("notes.txt", "hello"),
    ),
    Case(
        "export-corrupted-db",
        lambda r: ["export", "--to", "tensorboard", "--out", str(r / "tb"), str(r / "study")],
        "not a results database",
        _corrupt_db,
    ),
    Case(
        "export-empty-study",
        lambda r: ["export", "--to", "tensorboard", "--out", str(r / "tb"), str(r / "empty")],
        "no finished runs",
        _empty_study,
    ),
    Case(
        "export-out-is-a-file",
        lambda r: ["export", "--to", "tensorboard", "--out", str(r / "taken"), str(r / "empty")],
        "is a file",
        lambda r: (_empty_study(r), _write(r / "taken", "x")),
    ),
    Case(
        "export-bad-tracker",
        lambda r: ["export", "--to", "wandb", "--out", str(r / "x"), str(r)],
        "--to",
    ),
    # merge: the guards it has
    Case("merge-zero-byte", _merge("zero.safetensors"), "zero.safetensors", _checkpoints),
    Case("merge-truncated", _merge("truncated.safetensors"), "truncated", _checkpoints),
    Case(
        "merge-corrupted-header", _merge("header.safetensors"), "header.safetensors", _checkpoints
    ),
    Case("merge-pickled", _merge("pickled.bin"), "pickle", _checkpoints),
    Case("merge-key-mismatch", _merge("nokey.safetensors"), "'b'", _checkpoints),
    Case("merge-shape-mismatch", _merge("shape.safetensors"), "(2, 3)", _checkpoints),
    Case("merge-dtype-mismatch", _merge("dtype.safetensors"), "float16", _checkpoints),
    Case("merge-missing-model", _merge("none.safetensors"), "does not exist", _checkpoints),
    Case(
        "merge-nan",
        _merge("nan.safetensors"),
        "nan.safetensors: tensor 'w' holds NaN",
        _checkpoints,
        subprocess=True,
    ),
    Case(
        "merge-inf",
        _merge("inf.safetensors"),
        "inf.safetensors: tensor 'b' holds inf",
        _checkpoints,
    ),
    Case(
        "merge-out-is-an-input",
        _merge("ft2.safetensors", "ft.safetensors"),
        "is one of the inputs",
        _checkpoints,
    ),
    Case(
        "merge-out-contains-an-input",
        _merge("ft2.safetensors", "."),  # the folder that holds base, ft and ft2
        "contains the input",
        _checkpoints,
    ),
    Case(
        "merge-disk-full",
        _merge_full(),
        "is full (no space left on device",
        _large_checkpoints,
    ),
    Case(
        "merge-disk-full-streaming",  # ties: the streaming writer, not the fused linear one
        _merge_full("--method", "ties"),
        "is full (no space left on device",
        _large_checkpoints,
    ),
    # the user's files: never replaced or deleted by a command that did not write them
    Case(
        "reproduce-out-holds-user-files",
        lambda r: ["reproduce", "--quick", "--out", str(r / "mine")],
        "did not write (config.json, report.md, runs.csv)",
        _user_files("mine", "report.md", "runs.csv", "config.json"),
        subprocess=True,
    ),
    Case(
        "reproduce-out-is-a-model-directory",
        lambda r: ["reproduce", "--quick", "--out", str(r / "model")],
        "add --force",
        _user_files("model", "config.json", "model.safetensors"),
    ),
    Case(
        "reproduce-merge-shards-into-user-files",
        lambda r: ["reproduce", "--merge-shards", str(r / "empty"), "--out", str(r / "mine")],
        "did not write",
        _both(_empty_study, _user_files("mine", "report.md")),
    ),
    Case(
        "reproduce-same-shard-twice",
        lambda r: [
            "reproduce",
            "--merge-shards",
            str(r / "empty"),
            str(r / "empty" / "results.db"),
            "--out",
            str(r / "out"),
        ],
        "names one shard twice",
        _empty_study,
    ),
    Case(
        "finetune-out-holds-a-model",
        lambda r: ["finetune", "--task", "signs", "--out", str(r / "ft")],
        "did not write (model.safetensors)",
        _user_files("ft", "model.safetensors"),
    ),
    Case(
        "merge-out-is-a-file-no-merge-wrote",
        _merge("ft2.safetensors", "mine.safetensors"),
        "was not written by rmtllmf merge",
        _both(_checkpoints, _file("mine.safetensors", "my model")),
    ),
    Case(
        "merge-record-beside-out-is-the-users",
        _merge("ft2.safetensors"),
        "merged.safetensors.json, which exists and was not written by rmtllmf merge",
        _both(_checkpoints, _file("merged.safetensors.json", '{"mine": 1}')),
    ),
    Case(
        "merge-out-directory-of-user-files",
        _merge("ft2.safetensors", "notes"),
        "did not write (todo.txt)",
        _both(_checkpoints, _user_files("notes", "todo.txt")),
    ),
    Case(
        "export-out-holds-user-files",
        lambda r: ["export", "--to", "tensorboard", "--out", str(r / "tb"), str(r / "empty")],
        "did not write",
        _both(_empty_study, _user_files("tb", "notes.txt")),
    ),
    # results that would be silently wrong
    Case(
        "merge-average-with-lambda",
        _merge_flags("--method", "average", "--lambda", "5"),
        "takes no --lambda",
        _checkpoints,
    ),
    Case(
        "merge-include-matches-nothing",
        _merge_flags("--include", "nomatch.*"),
        "nothing would be merged",
        _checkpoints,
    ),
    Case(
        "merge-exclude-everything",
        _merge_flags("--exclude", "*"),
        "nothing would be merged",
        _checkpoints,
    ),
    Case("merge-lambda-inf", _merge_flags("--lambda", "inf"), "--lambda", _checkpoints),
    Case(
        "merge-base-config-not-json",
        lambda r: [
            "merge",
            "--base",
            str(r / "hfbase"),
            "--models",
            str(r / "ft.safetensors"),
            "--out",
            str(r / "m") + "/",
        ],
        "config.json is not valid JSON",
        _hf_base_with_bad_config,
    ),
    Case(
        "merge-dtype-mismatch-says-convert",
        _merge("dtype.safetensors"),
        "convert it to the base's dtype",
        _checkpoints,
    ),
    Case("zoo-repeated-task", lambda r: ["zoo", "build", "--tasks", "digits", "digits"], "once"),
    Case(
        "zoo-base-of-another-architecture",
        lambda r: [
            "zoo",
            "build",
            "--base",
            str(r / "clip-shaped.safetensors"),
            "--root",
            str(r / "z"),
        ],
        "not a tiny-vit base checkpoint",
        _clip_shaped,
    ),
    Case(
        "evaluate-repeated-task",
        lambda r: ["evaluate", "--model", str(r / "ft.safetensors"), "--tasks", "signs", "signs"],
        "more than once",
        _checkpoints,
    ),
    Case(
        "evaluate-nan-model",
        lambda r: ["evaluate", "--model", str(r / "nan-model.safetensors")],
        "evaluate scores only finite weights",
        _nan_tiny_model,
    ),
    Case(
        "finetune-tiny-vit-with-lora",
        lambda r: ["finetune", "--task", "signs", "--lora", "--out", str(r / "ft")],
        "--lora apply only to --family hf-clip",
    ),
    Case(
        "finetune-tiny-vit-with-train-folder",
        lambda r: ["finetune", "--task", "signs", "--train-folder", str(r), "--out", str(r / "ft")],
        "--train-folder apply only to --family hf-clip",
    ),
    # sizes: each bounded, the message says the bound and the way past
    Case(
        "channel-billion-symbols",
        lambda r: ["channel", "--symbols", "1000000000"],
        "--no-limit",
        subprocess=True,
    ),
    Case(
        "channel-users-5000",
        lambda r: ["channel", "--users", "5000", "--antennas", "5000"],
        "above the bound 1024",
    ),
    Case(
        "channel-users-100000",
        lambda r: ["channel", "--users", "100000", "--antennas", "1"],
        "above the bound 1024",
    ),
    Case(
        "channel-receiver-work",
        lambda r: ["channel", "--users", "300", "--antennas", "400"],
        "eigendecompositions",
    ),
    # found by a probe of about 200 inputs: each refused before any work, in the house's words
    Case("channel-r-max-inf", lambda r: ["channel", "--r-max", "inf"], "finite"),
    Case("channel-r-min-nan", lambda r: ["channel", "--r-min", "nan"], "finite"),
    Case(
        "channel-jammer-in-the-ideal-scenario",
        lambda r: ["channel", "--jnr-db", "20"],
        "--scenario ideal has none",
    ),
    Case("channel-genie-without-symbols", lambda r: ["channel", "--genie"], "--symbols"),
    Case(
        "channel-exponent-with-3gpp",
        lambda r: ["channel", "--path-loss", "3gpp-umi", "--exponent", "4"],
        "--exponent belongs to --path-loss log-distance",
    ),
    Case(
        "zoo-n-train-huge",
        lambda r: ["zoo", "build", "--tasks", "signs", "--n-train", "1000000000000"],
        "--n-train: must be at most 500000",
    ),
    Case("zoo-threads-negative", lambda r: ["zoo", "build", "--threads", "-1"], "--threads"),
    Case("zoo-threads-zero", lambda r: ["zoo", "build", "--threads", "0"], "--threads"),
    Case("zoo-lr-inf", lambda r: ["zoo", "build", "--lr", "inf"], "--lr: must be a finite"),
    Case(
        "evaluate-threads-negative",
        lambda r: ["evaluate", "--model", str(r / "ft.safetensors"), "--threads", "-1"],
        "--threads",
        _checkpoints,
    ),
    Case(
        "finetune-threads-zero",
        lambda r: ["finetune", "--task", "signs", "--threads", "0", "--out", str(r / "ft")],
        "--threads",
    ),
    Case(
        "finetune-lr-zero",
        lambda r: ["finetune", "--task", "signs", "--lr", "0", "--out", str(r / "ft")],
        "--lr: must be above 0",
    ),
    Case("reproduce-empty-out", lambda r: ["reproduce", "--quick", "--out", ""], "--out is empty"),
    Case(
        "reproduce-cache-is-a-file",
        lambda r: ["reproduce", "--quick", "--out", str(r / "out"), "--cache", str(r / "taken")],
        "--cache",
        _file("taken"),
    ),
    Case("reproduce-cpus-nan", _reproduce("--cpus-per-run", "nan"), "--cpus-per-run"),
    Case("reproduce-k-zero", _config(), "k_values", _yaml("sweep:\n  k_values: [0]\n")),
    Case(
        "reproduce-unknown-merge-method",
        _config(),
        "unknown merge method 'slerp'",
        _yaml("sweep:\n  merge_method: slerp\n"),
    ),
    Case(
        "reproduce-sweep-task-not-in-pool",
        _config(),
        "sweep.tasks: weather not in the tiny-vit pool",
        _yaml("sweep:\n  tasks: [weather, signs]\n"),
    ),
    Case(
        "reproduce-zoo-task-unknown",
        _config(),
        "zoo.tasks: weather not in the embedded suite",
        _yaml("zoo:\n  tasks: [weather]\n"),
    ),
    Case(
        "reproduce-clip-without-section",
        _config(),
        "needs a 'clip:' section",
        _yaml("family: hf-clip\n"),
    ),
    Case(
        "merge-option-the-method-lacks",
        _merge_flags("--density", "0.5"),
        "takes no options: density: is not a known setting",
        _checkpoints,
    ),
    Case(
        "merge-density-out-of-range",
        _merge_flags("--method", "ties", "--density", "2"),
        "must be at most 1",
        _checkpoints,
    ),
    Case(
        "merge-method-empty", _merge_flags("--method", ""), "unknown merge method ''", _checkpoints
    ),
    Case(
        "merge-overflow-in-float32",
        _merge_flags("--lambda", "1e40"),
        "pass --allow-nonfinite to keep it",
        _checkpoints,
    ),
    Case(
        "merge-shard-size-for-a-file",
        _merge_flags("--max-shard-size", "1KB"),
        "--max-shard-size shards a directory output",
        _checkpoints,
    ),
    Case(
        "merge-dare-seed-past-2-63",
        _merge_flags("--method", "dare", "--seed", str(2**64)),
        "seed: must be below",
        _checkpoints,
    ),
    Case(
        "finetune-lora-rank-without-lora",
        lambda r: ["finetune", "--task", "signs", "--lora-rank", "4", "--out", str(r / "ft")],
        "--lora-rank",
    ),
    Case(
        "evaluate-hf-clip-flags-with-tiny-vit",
        lambda r: ["evaluate", "--model", str(r / "ft.safetensors"), "--finetuned", "a=b"],
        "--finetuned apply only to --family hf-clip",
        _checkpoints,
    ),
    Case(
        "evaluate-tasks-with-hf-clip",
        lambda r: [
            "evaluate",
            "--family",
            "hf-clip",
            "--model",
            str(r / "ft.safetensors"),
            "--tasks",
            "signs",
            "--data",
            f"signs={r}",
        ],
        "drop --tasks",
        _checkpoints,
    ),
    Case(
        "reproduce-config-is-a-directory",
        lambda r: ["reproduce", "--config", str(r), "--out", str(r / "out")],
        "is a directory",
    ),
]


# ---------------------------------------------------------------- the checks


def _snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root``: a file's sha256, a folder's mark."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "/"
        for p in sorted(root.rglob("*"))
    }


@contextlib.contextmanager
def _read_only_folder(path: Path) -> Iterator[None]:
    """``path`` as a folder nobody may write to: chmod for users, a read-only tmpfs for root
    (whom permissions do not stop); skips the test where neither is possible."""
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o555)
        try:
            yield
        finally:
            path.chmod(0o755)
        return
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip("a read-only folder needs a non-root user or mount privileges")
    try:
        yield
    finally:
        subprocess.run(["umount", str(path)], check=False)


@contextlib.contextmanager
def _full_folder(path: Path, size: str = "64k") -> Iterator[None]:
    """``path`` as a disk of ``size`` (a tmpfs); skips the test where it cannot be mounted."""
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    if mounted.returncode != 0:
        reason = mounted.stderr.decode(errors="replace").strip() or "mount failed"
        pytest.skip(f"a full disk needs a small tmpfs, and mounting one failed: {reason}")
    try:
        yield
    finally:
        subprocess.run(["umount", str(path)], check=False)


def _run_in_process(argv: list[str], capsys) -> tuple[int, str]:
    try:
        status = main(argv)
    except SystemExit as exc:  # argparse's own errors
        status = int(exc.code or 0)
    return status, capsys.readouterr().err


def _run_as_process(argv: list[str], env: dict[str, str]) -> tuple[int, str]:
    done = subprocess.run(
        [sys.executable, "-m", "rmtllmf.cli", *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    return done.returncode, done.stderr


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_answered_in_one_line(case, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RMTLLMF_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    case.setup(tmp_path)
    argv = case.argv(tmp_path)
    folder = (
        _read_only_folder(tmp_path / "ro")
        if case.id == "read-only-out"
        else _full_folder(tmp_path / "full")
        if case.id.startswith("merge-disk-full")
        else None
    )
    with folder or contextlib.nullcontext():
        before = _snapshot(tmp_path)
        if case.subprocess:
            env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
            status, err = _run_as_process(argv, env)
        else:
            status, err = _run_in_process(argv, capsys)
        after = _snapshot(tmp_path)
    assert status == case.status, err
    assert "Traceback" not in err and "pydantic" not in err and "http" not in err, err
    for phrase in (
        "Input should",
        "input should",
        "Extra inputs",
        "allow_nonfinite=",
        "include=(",
        ".partial",
    ):
        assert phrase not in err, f"{phrase!r}: {err}"
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert ERROR_LINE.match(lines[0]), err
    assert case.expect.lower() in lines[0].lower(), err
    assert FIX.search(lines[0].split("error:", 1)[1]), f"no fix named: {err}"
    assert after == before  # no input changed, nothing (half-)written


def test_two_merges_to_one_out_leave_one_whole_merge(tmp_path, monkeypatch):
    """The same ``--out`` written by two processes at once (lambda 0.3 and 0.7): both finish
    (or one refuses in one line), and the file left is exactly one of the two merges, whole,
    with no temporary file beside it and no input changed."""
    import torch
    from safetensors import safe_open

    monkeypatch.setenv("RMTLLMF_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    base = {"w": torch.randn(512, 1024), "b": torch.randn(1024)}  # 2 MiB: the writes overlap
    ft = {k: v + torch.randn_like(v) for k, v in base.items()}
    from safetensors.torch import save_file

    save_file(base, tmp_path / "base.safetensors")
    save_file(ft, tmp_path / "ft.safetensors")
    out = tmp_path / "merged.safetensors"
    argv = ["merge", "--base", str(tmp_path / "base.safetensors"), "--models",
            str(tmp_path / "ft.safetensors"), "--out", str(out), "--lambda"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    before = _snapshot(tmp_path)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "rmtllmf.cli", *argv, lam],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for lam in ("0.3", "0.7")
    ]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    for status, _out, err in results:
        assert "Traceback" not in err, err
        if status != 0:  # a clean refusal
            assert status == 2 and len(err.splitlines()) == 1 and ERROR_LINE.match(err), err
    assert any(status == 0 for status, _, _ in results), results
    after = _snapshot(tmp_path)
    assert {k: after[k] for k in before} == before  # no input changed
    assert sorted(after) == sorted([*before, out.name, f"{out.name}.json"])  # no temp file
    with safe_open(str(out), "pt") as f:
        merged = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is no dict)
    references = [{k: base[k] + lam * (ft[k] - base[k]) for k in base} for lam in (0.3, 0.7)]
    matches = [  # the two merges differ by ~1 per entry; rounding differs by ~1e-7
        merged.keys() == ref.keys()
        and all(torch.allclose(merged[k], ref[k], rtol=0, atol=1e-5) for k in base)
        for ref in references
    ]
    assert sum(matches) == 1, [
        max(float((merged[k] - ref[k]).abs().max()) for k in base) for ref in references
    ]
