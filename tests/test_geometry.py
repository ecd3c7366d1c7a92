"""Link budget, path loss and placement against textbook values."""

from __future__ import annotations

import numpy as np
import pytest

from rmtllmf.channel import (
    PathLossConfig,
    ScenarioConfig,
    dbm_to_watt,
    draw_realization,
    free_space_loss_db,
    path_loss_db,
    place_users,
    rayleigh_fading,
    thermal_noise_power,
    watt_to_dbm,
)
from rmtllmf.errors import InputError


def test_unit_conversions():
    assert dbm_to_watt(-10.0) == pytest.approx(1e-4)  # the paper's 0.1 mW
    assert dbm_to_watt(30.0) == pytest.approx(1.0)
    assert watt_to_dbm(1e-3) == pytest.approx(0.0)


def test_thermal_noise_is_minus_174_dbm_per_hz():
    assert watt_to_dbm(thermal_noise_power(1.0)) == pytest.approx(-174.0)
    # 180 kHz, NF 5 dB: -174 + 52.55 + 5
    assert watt_to_dbm(thermal_noise_power(180e3, 5.0)) == pytest.approx(-116.447, abs=1e-3)
    with pytest.raises(InputError, match="bandwidth"):
        thermal_noise_power(0.0)


def test_free_space_loss_textbook_value():
    # FSPL(1 km, 3.5 GHz) = 20 log10(4 pi 1000 3.5e9 / c) = 103.32 dB
    assert free_space_loss_db(1000.0, 3.5e9) == pytest.approx(103.32, abs=0.01)


def test_log_distance_slope():
    cfg = PathLossConfig(model="log-distance", exponent=3.0, reference_loss_db=40.0)
    loss = path_loss_db(np.array([1.0, 10.0, 100.0]), cfg)
    np.testing.assert_allclose(loss, [40.0, 70.0, 100.0])


@pytest.mark.parametrize(
    ("model", "condition", "expected"),
    [
        # TR 38.901 Table 7.4.1-1 at d2D = 500 m, fc = 3.5 GHz, hUT = 1.5 m, by hand:
        # UMa NLOS: d3D = sqrt(500^2 + 23.5^2) = 500.552; 13.54 + 39.08 log10(d3D) + 20 log10(3.5)
        ("3gpp-uma", "nlos", 13.54 + 39.08 * np.log10(500.552) + 20 * np.log10(3.5)),
        # UMi NLOS: d3D = sqrt(500^2 + 8.5^2) = 500.072; 35.3 log10 + 22.4 + 21.3 log10(3.5)
        ("3gpp-umi", "nlos", 35.3 * np.log10(500.072) + 22.4 + 21.3 * np.log10(3.5)),
        # UMi LOS, d2D < d'BP = 4*9*0.5*3.5e9/c = 420.3 m fails at 500 m: second branch
        (
            "3gpp-umi",
            "los",
            32.4
            + 40 * np.log10(500.072)
            + 20 * np.log10(3.5)
            - 9.5 * np.log10((4 * 9 * 0.5 * 3.5e9 / 299792458.0) ** 2 + 8.5**2),
        ),
    ],
)
def test_3gpp_path_loss(model, condition, expected):
    cfg = PathLossConfig(model=model, condition=condition)
    assert path_loss_db(np.array([500.0]), cfg)[0] == pytest.approx(expected, abs=1e-3)


def test_3gpp_random_parts_need_a_generator():
    with pytest.raises(InputError, match="random generator"):
        path_loss_db(np.array([100.0]), PathLossConfig(model="3gpp-uma", condition="mixed"))
    cfg = PathLossConfig(model="3gpp-uma", condition="mixed", shadowing=True)
    loss = path_loss_db(np.full(2000, 300.0), cfg, np.random.default_rng(0))
    assert 3.0 < np.std(loss) < 15.0


def test_placement_bounds_and_distribution(rng):
    d = place_users(rng, 20_000, 100.0, 1000.0)
    assert d.min() >= 100 and d.max() <= 1000
    assert np.mean(d) == pytest.approx(550.0, rel=0.01)
    area = place_users(rng, 20_000, 100.0, 1000.0, "uniform-area")
    # E[d] for uniform area on an annulus: 2/3 (R^3 - r^3)/(R^2 - r^2)
    assert np.mean(area) == pytest.approx(2 / 3 * (1e9 - 1e6) / (1e6 - 1e4), rel=0.01)
    with pytest.raises(InputError, match="r_min"):
        place_users(rng, 3, 500.0, 100.0)


def test_rayleigh_fading_is_unit_power_circular(rng):
    h = rayleigh_fading(rng, 64, 2000)
    assert np.mean(np.abs(h) ** 2) == pytest.approx(1.0, rel=0.01)
    assert abs(np.mean(h**2)) < 0.01  # circular symmetry


def test_scenario_realization_uses_the_link_budget():
    cfg = ScenarioConfig(scenario="sum-rate", jammer_dbm=-100.0)
    r = draw_realization(cfg, np.random.default_rng(0))
    assert r.H.shape == (16, 8)
    np.testing.assert_allclose(r.p, 1e-4)
    thermal = cfg.thermal_power_w
    np.testing.assert_allclose(np.real(np.trace(r.C_z)), 16 * thermal + 1e-13, rtol=1e-9)
    jnr = ScenarioConfig(scenario="strongest-user", jnr_db=10.0)
    assert jnr.jammer_power_w == pytest.approx(10.0 * 16 * jnr.thermal_power_w)
    assert ScenarioConfig(scenario="ideal", jnr_db=30.0).jammer_power_w == 0.0
    with pytest.raises(ValueError, match="not both"):
        ScenarioConfig(jammer_dbm=0.0, jnr_db=0.0)
