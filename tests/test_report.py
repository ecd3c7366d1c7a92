"""The report: every artefact written, summary.json recomputed by hand from the database."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rmtllmf.errors import InputError
from rmtllmf.report import write_report
from rmtllmf.report.tables import Ordering, Recovered, Summary, fig2_series, orderings
from rmtllmf.study.store import FinishedRun, ResultsDB, RunRecord
from rmtllmf.study.sweep import run_sweep
from test_sweep import small_config


@pytest.fixture(scope="module")
def report(tiny_zoo, tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    db = ResultsDB(root / "results.db")
    run_sweep(tiny_zoo, "zoo", small_config(seeds=(0, 1), extra_defenses=("shrink",)), db)
    return db, root / "out", write_report(db, root / "out")


def test_every_artefact_is_written(report):
    _, out, summary = report
    for name in (
        "fig2_accuracy_vs_tasks",
        "fig3_cosine_ideal",
        "fig4_cosine_worst",
        "fig5_ablation",
        "hypothesis_rejection",
        "rank_spectra",
    ):
        for ext in ("png", "pdf"):
            assert (out / f"{name}.{ext}").stat().st_size > 1000
    text = (out / "report.md").read_text()
    for heading in (
        "paper's ordering",
        "Fig. 2 data",
        "Fig. 5 data",
        "cosine",
        "Channel per scenario",
        "hypothesis test",
        "Rank spectra",
        "![rank spectra](rank_spectra.png)",
        "received singular values rise above the threshold",
        "Configuration",
    ):
        assert heading in text
    assert (out / "runs.csv").read_text().count("\n") > 10
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))


def _by_hand(r, zoo):
    """A run's normalized accuracy by hand: its per-task accuracies over each task's fine-tuned
    accuracy (the zoo's record), averaged over its tasks; checks the stored value on the way."""
    assert set(r.result.accuracy) == set(r.config.tasks)
    value = np.mean([a / zoo.finetuned_accuracy(t) for t, a in r.result.accuracy.items()])
    assert r.result.normalized == pytest.approx(value)
    return value


def _ablation_by_hand(rows, zoo, link, scenario, defense):
    """:func:`_by_hand` of each ablation run of one cell (N = 3, default k = 2)."""
    return [
        _by_hand(r, zoo)
        for r in rows
        if r.role == "ablation"
        and (len(r.config.tasks), r.config.link, r.config.scenario, r.config.defense)
        == (3, link, scenario, defense)
        and r.config.realign.k_per_class == 2
    ]


def test_summary_matches_a_hand_computation(report, tiny_zoo):
    db, _, summary = report
    rows = list(db.rows())
    assert all(isinstance(r, RunRecord) for r in rows)
    assert summary["n_tasks"] == 3
    assert set(summary["by_link"]) == {"absolute", "symbol"}
    assert set(summary["by_link"]["absolute"]) == {"ideal", "sum-rate"}
    for link in ("absolute", "symbol"):
        for scenario in ("ideal", "sum-rate"):
            for defense in ("none", "freeze", "realign", "r-mtllmf"):
                vals = _ablation_by_hand(rows, tiny_zoo, link, scenario, defense)
                assert len(vals) == 2  # two seeds
                assert summary["by_link"][link][scenario][defense] == pytest.approx(np.mean(vals))
    clean = [
        _by_hand(r, tiny_zoo)
        for r in rows
        if r.config.link == "noiseless" and r.config.defense == "none" and len(r.config.tasks) == 3
    ]
    assert summary["clean"] == pytest.approx(np.mean(clean))

    def mean_of(defense):
        return np.mean(
            [
                _by_hand(r, tiny_zoo)
                for r in rows
                if (r.config.link, r.config.defense, len(r.config.tasks))
                == ("noiseless", defense, 3)
            ]
        )

    assert summary["clean_realign"] == pytest.approx(mean_of("realign"))
    assert summary["base"] == pytest.approx(mean_of("base"))
    assert summary["base_realign"] == pytest.approx(mean_of("base+realign"))
    # chance, by hand: a uniform guess on signs (12 classes), textures (8), counting (8),
    # divided by each task's fine-tuned test accuracy (the zoo's record)
    classes = {"signs": 12, "textures": 8, "counting": 8}
    chance = np.mean([1 / c / tiny_zoo.finetuned_accuracy(t) for t, c in classes.items()])
    assert summary["chance"] == pytest.approx(chance)
    for link, cells in summary["by_link"].items():
        for scenario, cell in cells.items():
            # the floors stand in every cell, at their hand-computed values
            assert cell["base"] == pytest.approx(mean_of("base"))
            assert cell["base+realign"] == pytest.approx(mean_of("base+realign"))
            for defense, value in cell.items():
                got = summary["recovered"]["by_link"][link][scenario][defense]
                assert got == pytest.approx((value - chance) / (summary["clean"] - chance))
    assert {o["link"] for o in summary["orderings"]} == {"absolute", "symbol"}


def test_summary_json_keeps_its_keys_and_order(report):
    _, out, _ = report
    written = json.loads((out / "summary.json").read_text())
    assert list(written) == [
        "n_tasks",
        "clean",
        "clean_realign",
        "base",
        "base_realign",
        "chance",
        "by_link",
        "recovered",
        "paper",
        "orderings",
        "cosine_offdiag",
        "analysis",
        "rank_spectra",
        "code_version",
        "pool_id",
        "seeds",
        "config",
        "figures",
        "coverage",
        "uncertainty",
        "snr_axis",
        "receivers",
    ]
    assert written["snr_axis"] is None  # this sweep ran no SNR axis
    assert written["receivers"] == []  # nor an AirComp link
    assert list(written["recovered"]) == ["clean_realign", "base", "base_realign", "by_link"]
    assert list(written["orderings"][0]) == [
        "link",
        "clean",
        "rm_ideal",
        "rm_worst",
        "none_worst",
        "clean_ge_rm_ideal",
        "rm_ideal_gt_rm_worst",
        "rm_worst_gg_none_worst",
        "both_beat_each",
        "rm_worst_gt_base",
    ]
    assert list(written["analysis"][0]) == [
        "scenario",
        "link",
        "wde_clean",
        "wde_received",
        "sum_mu",
        "sum_mu_ref",
        "reject_robust",
        "reject_paper",
    ]
    assert list(written["paper"][0]) == ["scenario", "defense", "normalized", "recovered", "chance"]


def _summary(clean: float, base: float, by_link: dict) -> Summary:
    """A summary carrying only what :func:`orderings` reads."""
    nan = float("nan")
    return Summary(
        n_tasks=8,
        clean=clean,
        clean_realign=nan,
        base=base,
        base_realign=nan,
        chance=nan,
        by_link=by_link,
        recovered=Recovered(clean_realign=nan, base=nan, base_realign=nan, by_link={}),
    )


def test_orderings_read_the_claims():
    ideal = {"none": 0.7, "freeze": 0.75, "realign": 0.8, "r-mtllmf": 0.85}
    sum_rate = {"none": 0.1, "freeze": 0.2, "realign": 0.3, "r-mtllmf": 0.5}
    good = _summary(0.9, 0.4, {"absolute": {"ideal": ideal, "sum-rate": sum_rate}})
    (o,) = orderings(good)
    assert isinstance(o, Ordering)
    assert (o.link, o.clean, o.rm_ideal, o.rm_worst, o.none_worst) == (
        "absolute",
        0.9,
        0.85,
        0.5,
        0.1,
    )
    assert (
        o.clean_ge_rm_ideal
        and o.rm_ideal_gt_rm_worst
        and o.rm_worst_gg_none_worst
        and o.both_beat_each
        and o.rm_worst_gt_base
    )
    sum_rate = {**sum_rate, "freeze": 0.6}
    (o,) = orderings(_summary(0.9, 0.4, {"absolute": {"ideal": ideal, "sum-rate": sum_rate}}))
    assert not o.both_beat_each
    # the received vectors did worse than discarding them (base 0.55), and 0.5 is not >= 0.45 + 0.1
    sum_rate = {**sum_rate, "none": 0.45}
    (o,) = orderings(_summary(0.9, 0.55, {"absolute": {"ideal": ideal, "sum-rate": sum_rate}}))
    assert not o.rm_worst_gt_base and not o.rm_worst_gg_none_worst


def test_empty_database_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="no finished runs"):
        write_report(ResultsDB(tmp_path / "empty.db"), tmp_path / "out")


def test_paper_numbers_in_the_recovered_metric():
    from rmtllmf.report.paper import paper_reference

    # the paper's chance, by hand: a uniform guess on Cars (196 classes), DTD (47), EuroSAT (10),
    # GTSRB (43), MNIST (10), RESISC45 (45), SUN397 (397), SVHN (10), over the mean expert 0.923
    chance = (1 / 196 + 1 / 47 + 1 / 10 + 1 / 43 + 1 / 10 + 1 / 45 + 1 / 397 + 1 / 10) / 8 / 0.923
    rows = {(r.scenario, r.defense): r for r in paper_reference()}
    assert rows[("clean", "none")].chance == pytest.approx(chance)
    assert rows[("clean", "none")].recovered == (1.0, 1.0)
    sr = rows[("sum-rate", "r-mtllmf")].recovered[0]
    assert sr == pytest.approx((0.548 - chance) / (0.912 - chance))
    assert 0.57 < sr < 0.58  # the "about 0.58"
    low, high = rows[("sum-rate", "none")].recovered
    assert low < 0 < high  # "between 4% and 6%" straddles chance


def test_extra_defenses_are_lines_of_fig2_and_cells_of_the_summary(report, tiny_zoo):
    db, _, summary = report
    rows = list(db.rows())
    series = fig2_series(rows)
    for n, mean, _, _ in series["absolute"]["ideal, shrink"]:
        vals = [
            _by_hand(r, tiny_zoo)
            for r in rows
            if (len(r.config.tasks), r.config.link, r.config.scenario, r.config.defense)
            == (n, "absolute", "ideal", "shrink")
        ]
        assert len(vals) == (6 if n == 2 else 2)  # 3 subsets (1 at N = 3) x 2 seeds
        assert mean == pytest.approx(np.mean(vals))
    assert [p[0] for p in series["absolute"]["ideal, shrink"]] == [2, 3]
    assert not any("shrink" in label for label in series["symbol"])  # no noise law there
    assert summary["by_link"]["absolute"]["sum-rate"]["shrink"] == pytest.approx(
        np.mean(_ablation_by_hand(rows, tiny_zoo, "absolute", "sum-rate", "shrink"))
    )
    counts = summary["rank_spectra"]
    assert [(c["link"], c["scenario"]) for c in counts] == [
        ("absolute", "ideal"),
        ("absolute", "sum-rate"),
    ]
    assert all(0 <= c["above"] <= c["values"] for c in counts)


def test_the_report_does_not_depend_on_the_order_runs_were_committed(report, tmp_path):
    db, out, summary = report
    shuffled = ResultsDB(tmp_path / "shuffled.db")
    for name in db.meta_keys():
        if name != "code_version":
            shuffled.set_meta(name, db.meta(name))
    for (pool, n), (value, scores) in db.lambdas().items():
        shuffled.set_lambda(pool, n, value, json.loads(scores))
    rows = db.conn.execute("SELECT key, role, n_tasks, config, result, seconds FROM runs")
    listed = rows.fetchall()
    assert len(listed) > 20
    for row in reversed(listed):  # the last finished first, as a parallel executor may
        assert shuffled.commit(FinishedRun(*row))
    assert not shuffled.commit(FinishedRun(*listed[0]))  # a run arriving twice is kept once
    assert write_report(shuffled, tmp_path / "out") == summary
    assert (tmp_path / "out" / "report.md").read_text() == (out / "report.md").read_text()


@pytest.mark.parametrize("killed_at", ["figure", "summary.json", "runs.csv"])
def test_a_report_killed_mid_write_leaves_the_previous_files_intact(
    report, tmp_path, monkeypatch, killed_at
):
    """Each artefact is the previous one or the new one whole, never a half-written file, and
    no temporary file stays behind."""
    import shutil
    from pathlib import Path

    import matplotlib.figure

    import rmtllmf.study.store as store

    db, out, _ = report
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    before = {p.name: p.read_bytes() for p in copy.iterdir()}

    def half_then_die(path) -> None:
        Path(path).write_bytes(b"half a file")
        raise KeyboardInterrupt

    if killed_at == "figure":
        monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda _, p, **k: half_then_die(p))
    elif killed_at == "summary.json":
        real = Path.write_text

        def write_text(self, text, *args, **kwargs):
            if "summary.json" in self.name:
                half_then_die(self)
            return real(self, text, *args, **kwargs)

        monkeypatch.setattr(Path, "write_text", write_text)
    else:
        real_writer = store.csv.writer

        class DyingWriter:
            def __init__(self, fh):
                self.inner, self.rows = real_writer(fh), 0

            def writerow(self, row):
                self.inner.writerow(row)
                self.rows += 1
                if self.rows == 3:
                    raise KeyboardInterrupt

        monkeypatch.setattr(store.csv, "writer", DyingWriter)
    with pytest.raises(KeyboardInterrupt):
        write_report(db, copy)
    after = {p.name: p.read_bytes() for p in copy.iterdir()}
    assert set(after) == set(before), "a temporary file was left behind"
    assert not [name for name, data in after.items() if b"half a file" in data]
    killed = (
        [n for n in after if n.endswith((".png", ".pdf"))] if killed_at == "figure" else [killed_at]
    )
    assert all(after[n] == before[n] for n in killed)
