"""The ``rmtllmf channel`` command."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rmtllmf.channel import ScenarioConfig, draw_realization, user_mse
from rmtllmf.cli import main


def test_channel_json_matches_the_library(capsys):
    assert main(["channel", "--scenario", "sum-rate", "--seed", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["config"]["scenario"] == "sum-rate"
    assert out["seed"] == 3
    channel = draw_realization(ScenarioConfig(scenario="sum-rate"), np.random.default_rng(3))
    expected = user_mse(channel.H, channel.p, channel.C_z)
    np.testing.assert_allclose([u["mse"] for u in out["users"]], expected, rtol=1e-12)
    assert out["mean_mse"] == pytest.approx(expected.mean())
    assert sorted(u["sic_position"] for u in out["users"]) == list(range(1, 9))


def test_channel_table_with_measurements(capsys):
    args = ["channel", "--users", "3", "--antennas", "4", "--symbols", "2000", "--qam", "16"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "MSE meas." in out
    assert "sum rate" in out
    assert "jammer none" in out


def test_bad_arguments_exit_with_a_message(capsys):
    assert main(["channel", "--users", "0"]) == 2
    err = capsys.readouterr().err
    assert "--users" in err and "n_users" not in err and "pydantic" not in err
    with pytest.raises(SystemExit):
        main(["channel", "--scenario", "nonsense"])


def test_merge_command_writes_model_and_config(tmp_path, capsys):
    import torch
    from safetensors.torch import load_file, save_file

    base = {"w": torch.zeros(3, 2), "ids": torch.arange(3)}
    fts = [{"w": torch.full((3, 2), float(i + 1)), "ids": torch.arange(3)} for i in range(2)]
    save_file(base, tmp_path / "base.safetensors")
    paths = []
    for i, ft in enumerate(fts):
        paths.append(str(tmp_path / f"ft{i}.safetensors"))
        save_file(ft, paths[-1])
    out = tmp_path / "merged.safetensors"
    args = ["merge", "--base", str(tmp_path / "base.safetensors"), "--models", *paths]
    assert main([*args, "--lambda", "0.5", "--out", str(out)]) == 0
    merged = load_file(out)
    torch.testing.assert_close(merged["w"], torch.full((3, 2), 1.5))  # 0.5 * (1 + 2)
    assert torch.equal(merged["ids"], base["ids"])
    record = json.loads((tmp_path / "merged.safetensors.json").read_text())
    assert record["merge"]["scaling"] == 0.5
    assert main([*args, "--method", "bogus", "--out", str(out)]) == 2
    assert "unknown merge method" in capsys.readouterr().err
    torch.save(base, tmp_path / "legacy.bin")
    assert (
        main(
            [
                *args[:1],
                "--base",
                str(tmp_path / "legacy.bin"),
                "--models",
                *paths,
                "--out",
                str(out),
            ]
        )
        == 2
    )
    assert "pickle" in capsys.readouterr().err


def test_a_reader_closing_the_pipe_ends_a_table_command_quietly():
    """``rmtllmf channel | head``: rich's own handler would exit 1; the command exits as any
    closed pipe does (141, nothing on stderr)."""
    import os
    import subprocess
    import sys

    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "rmtllmf", "channel", "--scenario", "ideal"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            check=False,
        )
    finally:
        os.close(write_end)
    assert (proc.returncode, proc.stderr) == (141, "")
