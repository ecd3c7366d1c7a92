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
    assert "n_users" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["channel", "--scenario", "nonsense"])
