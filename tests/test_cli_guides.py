"""A CLI that guides: help with descriptions, examples and defaults, --version, one-line errors
that name the flag, --debug, notices before long work, held-out validation, readable records."""

from __future__ import annotations

import argparse
import json
import os
import stat

import pytest

from rmtllmf import __version__
from rmtllmf.app.tiny_vit_family import announce_zoo
from rmtllmf.cli import COMMANDS, build_parser, main
from rmtllmf.cli.common import HelpFormatter


def _subparsers(parser: argparse.ArgumentParser, prefix: str = "rmtllmf"):
    """Every (name, parser) below ``parser``, nested ones too (``zoo build``)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield f"{prefix} {name}", sub
                yield from _subparsers(sub, f"{prefix} {name}")


SUBCOMMANDS = dict(_subparsers(build_parser()))


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_every_flag_shows_its_default(name):
    formatter = HelpFormatter(prog=name)
    for action in SUBCOMMANDS[name]._actions:
        if not action.option_strings or action.dest in ("help", "debug"):
            continue
        if isinstance(action, argparse._SubParsersAction):
            continue
        text = formatter._get_help_string(action)
        assert "default" in text or "(required)" in text, (name, action.option_strings, text)


@pytest.mark.parametrize(
    "name",
    sorted(n for n in SUBCOMMANDS if n != "rmtllmf merge"),  # merge: its owner's parser
)
def test_every_subcommand_has_a_description_and_an_example(name, capsys):
    sub = SUBCOMMANDS[name]
    assert sub.description and len(sub.description) > 40
    assert sub.epilog and "examples:" in sub.epilog and "rmtllmf " in sub.epilog
    with pytest.raises(SystemExit) as exit_:
        main([*name.split()[1:], "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "default" in out


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"rmtllmf {__version__}"


def test_validation_errors_name_the_flag_in_one_line_and_debug_shows_the_traceback(capsys):
    assert main(["channel", "--users", "0", "--antennas", "-2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "--users" in err and "--antennas" in err
    assert "n_users" not in err and "pydantic" not in err and "http" not in err
    assert main(["channel", "--r-min", "10", "--r-max", "5"]) == 2
    assert "--r-min=10.0 must not exceed --r-max=5.0" in capsys.readouterr().err
    assert main(["channel", "--users", "0", "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.rstrip().endswith(
        "(see rmtllmf channel --help)"
    )
    assert main(["--debug", "channel", "--users", "0"]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_argparse_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["channel", "--users", "many"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "--users" in err and "rmtllmf channel --help" in err


@pytest.mark.parametrize("value", ["1e9", "-1e9", "inf", "nan"])
def test_absurd_jammer_power_is_a_clean_error(value, capsys):
    """No numpy overflow warning (pytest turns RuntimeWarning into an error), one line."""
    assert main(["channel", "--scenario", "sum-rate", f"--jammer-dbm={value}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--jammer-dbm" in err
    assert ("finite" if value in ("inf", "nan") else "200") in err


def test_announce_zoo_says_what_will_be_built_and_how_long(tiny_zoo, tmp_path, capsys):
    announce_zoo(tiny_zoo.root.parent, tiny_zoo.config, workers=2)
    assert capsys.readouterr().err == ""  # built: nothing to say
    announce_zoo(tmp_path / "empty", tiny_zoo.config, workers=2)
    err = capsys.readouterr().err
    assert "building the embedded zoo first: 3 fine-tune(s)" in err
    assert "about" in err and "2 process(es)" in err


def test_evaluate_checks_the_model_before_building_any_zoo(tmp_path, monkeypatch, capsys):
    from conftest import make_tiny_base

    monkeypatch.setenv("RMTLLMF_CACHE", str(tmp_path / "cache"))
    assert main(["evaluate", "--model", str(tmp_path / "missing.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "--model" in err and "does not exist" in err
    other = make_tiny_base(tmp_path / "other-architecture.safetensors")
    assert main(["evaluate", "--model", str(other)]) == 2
    err = capsys.readouterr().err
    assert "is not a tiny-vit checkpoint of this base" in err and err.count("\n") == 1
    assert main(["evaluate", "--model", str(other), "--split", "train"]) == 2
    assert "--split" in capsys.readouterr().err
    assert not (tmp_path / "cache" / "zoo").exists()  # nothing was built


def test_published_records_are_readable_by_the_group(tmp_path):
    import torch
    from safetensors.torch import save_file

    from rmtllmf._io import atomic_output, write_text_atomic

    umask = os.umask(0o022)
    os.umask(umask)

    write_text_atomic(tmp_path / "config.json", "{}")
    with atomic_output(tmp_path / "model.safetensors") as tmp:
        save_file({"w": torch.zeros(2)}, tmp)  # safetensors itself creates 0600 files
    for name in ("config.json", "model.safetensors"):
        mode = stat.S_IMODE(os.stat(tmp_path / name).st_mode)
        assert mode == 0o666 & ~umask
        if umask == 0o022:
            assert mode == 0o644


def test_image_folder_validation_is_held_out():
    import numpy as np

    from rmtllmf.data.real import LabelledImages, hold_out

    labels = np.repeat(np.arange(3), [5, 2, 10])
    images = np.arange(len(labels), dtype=np.uint8)[:, None, None, None] * np.ones(
        (1, 2, 2, 3), dtype=np.uint8
    )
    data = LabelledImages(images, labels.astype(np.int64), ("a", "b", "c"))
    train, val = hold_out(data, 0.2, seed=0)
    seen_train = {int(x) for x in train.images[:, 0, 0, 0]}
    seen_val = {int(x) for x in val.images[:, 0, 0, 0]}
    assert not seen_train & seen_val and len(seen_train | seen_val) == len(labels)
    assert sorted(np.bincount(val.labels).tolist()) == [1, 1, 2]  # every class, at least one
    again = hold_out(data, 0.2, seed=0)[1]
    assert np.array_equal(again.images, val.images)  # seeded
    with pytest.raises(ValueError, match="fewer than 2 images"):
        hold_out(LabelledImages(images[:6], labels[:6].astype(np.int64), ("a", "b")), 0.2, 0)


def test_finetune_image_folder_reports_held_out_validation(tiny_clip, tmp_path, capsys):
    root, _, folder = tiny_clip
    argv = ["finetune", "--family", "hf-clip", "--base", str(root / "base"), "--train-folder",
            str(folder), "--steps", "1", "--batch", "2", "--threads", "1", "--lr", "1e-3",
            "--out", str(tmp_path / "ft")]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "held out" in out and "on 2 images" in out  # 1 of 4 per class, 2 classes
    record = json.loads((tmp_path / "ft" / "finetune.json").read_text())
    assert record["validation"]["images"] == 2 and record["train_images"] == 6


def test_evaluate_on_an_image_folder_says_it_scores_all_images(tiny_clip, capsys):
    root, fts, folder = tiny_clip
    argv = ["evaluate", "--family", "hf-clip", "--base", str(root / "base"), "--model",
            str(fts[1]), "--data", f"colours={folder}", "--threads", "1"]  # fmt: skip
    assert main([*argv, "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["split"] == "all images" and record["scored"] == {"colours": "all images"}
    assert main(argv) == 0
    assert "(all images)" in capsys.readouterr().out
    assert all(name in COMMANDS for name in ("export", "reproduce", "evaluate"))
