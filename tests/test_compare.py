"""`rmtllmf compare`: a rerun's cells against a reference's 95% intervals over seeds."""

from __future__ import annotations

import json

import pytest

from rmtllmf.cli import main


def _summary(values: dict[str, float], intervals: dict[str, tuple[float, float]] | None, n=2):
    """A summary.json with the snr link's ideal cell of each defense in ``values``."""
    unc = None
    if intervals is not None:
        unc = {
            "clean": {"mean": 0.77, "lo": 0.77, "hi": 0.77, "n": n},
            "by_link": {
                "snr": {
                    "ideal": {
                        d: {"mean": values[d], "lo": lo, "hi": hi, "n": n}
                        for d, (lo, hi) in intervals.items()
                    }
                }
            },
        }
    return {
        "n_tasks": 8,
        "clean": 0.77,
        "base": 0.67,
        "by_link": {"snr": {"ideal": {**values, "base": 0.67, "base+realign": 0.67}}},
        **({"uncertainty": unc} if unc else {}),
    }


def _write(path, summary):
    path.mkdir()
    (path / "summary.json").write_text(json.dumps(summary))
    return path


def test_cells_inside_outside_and_without_interval(tmp_path, capsys):
    ref = _write(
        tmp_path / "ref",
        _summary(
            {"none": 0.15, "r-mtllmf": 0.42}, {"none": (0.10, 0.20), "r-mtllmf": (0.30, 0.53)}
        ),
    )
    rerun = _write(tmp_path / "rerun", _summary({"none": 0.25, "r-mtllmf": 0.48}, None))
    assert main(["compare", str(rerun), str(ref), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    status = {c["cell"]: c["status"] for c in out["cells"]}
    assert status == {
        "clean": "inside",
        "base": "no interval",  # the reference has no interval for it
        "snr / ideal / none": "outside",  # 0.25 > 0.20
        "snr / ideal / r-mtllmf": "inside",
    }
    assert out["counts"] == {"inside": 2, "outside": 1, "no interval": 1}
    assert main(["compare", str(rerun), str(ref)]) == 0
    assert "2 of 4 cells inside" in capsys.readouterr().out


def test_the_tolerance_widens_each_interval(tmp_path, capsys):
    """A cell no seed moves (zero-width interval) is inside within the tolerance, and outside
    with --tolerance 0 as soon as a rounding moved it."""
    ref = _write(tmp_path / "ref", _summary({"none": 0.673}, {"none": (0.673, 0.673)}))
    rerun = _write(tmp_path / "rerun", _summary({"none": 0.6745}, None))
    main(["compare", str(rerun), str(ref), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert out["tolerance"] == 0.005
    assert {c["cell"]: c["status"] for c in out["cells"]}["snr / ideal / none"] == "inside"
    main(["compare", str(rerun), str(ref), "--json", "--tolerance", "0"])
    cells = json.loads(capsys.readouterr().out)["cells"]
    assert {c["cell"]: c["status"] for c in cells}["snr / ideal / none"] == "outside"
    far = _write(tmp_path / "far", _summary({"none": 0.679}, None))
    main(["compare", str(far), str(ref), "--json"])
    cells = json.loads(capsys.readouterr().out)["cells"]
    assert {c["cell"]: c["status"] for c in cells}["snr / ideal / none"] == "outside"
    assert main(["compare", str(rerun), str(ref), "--tolerance", "-1"]) == 2


def test_a_one_seed_reference_has_no_interval(tmp_path, capsys):
    ref = _write(tmp_path / "ref", _summary({"none": 0.15}, {"none": (0.15, 0.15)}, n=1))
    rerun = _write(tmp_path / "rerun", _summary({"none": 0.15}, None))
    assert main(["compare", str(rerun / "summary.json"), str(ref), "--json"]) == 0
    assert {c["status"] for c in json.loads(capsys.readouterr().out)["cells"]} == {"no interval"}


@pytest.mark.parametrize(
    ("setup", "words"),
    [
        (lambda p: p.mkdir(), "holds no summary.json"),
        (lambda p: (p.mkdir(), (p / "summary.json").write_text("{nope")), "is not JSON"),
        (lambda p: (p.mkdir(), (p / "summary.json").write_text("[1]")), "not a study summary"),
    ],
)
def test_bad_inputs_are_one_line(tmp_path, capsys, setup, words):
    ref = _write(tmp_path / "ref", _summary({"none": 0.1}, None))
    setup(tmp_path / "bad")
    assert main(["compare", str(tmp_path / "bad"), str(ref)]) == 2
    err = capsys.readouterr().err
    assert words in err and "RESULTS" in err and len(err.splitlines()) == 1


def test_different_task_counts_are_refused(tmp_path, capsys):
    ref = _write(tmp_path / "ref", _summary({"none": 0.1}, None))
    other = _summary({"none": 0.1}, None)
    other["n_tasks"] = 4
    rerun = _write(tmp_path / "rerun", other)
    assert main(["compare", str(rerun), str(ref)]) == 2
    assert "task counts differ" in capsys.readouterr().err
