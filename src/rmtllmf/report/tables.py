"""From the sweep's rows to the numbers behind every figure (no plotting here).

All accuracies are *normalized* accuracies (merged / the task's own fine-tuned accuracy,
averaged over the subset's tasks), averaged over subsets and seeds unless stated otherwise.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

Row = Mapping[str, Any]
CLEAR_MARGIN = 0.1
"""What "R-MTLLMF worst ≫ unprotected worst" asks, in normalized accuracy."""


def _mean(values: Iterable[float]) -> float:
    vals = list(values)
    return float(np.mean(vals)) if vals else float("nan")


def largest_n(rows: Sequence[Row]) -> int:
    """The largest task count in the results."""
    return max(len(r["config"]["tasks"]) for r in rows)


def _select(rows: Sequence[Row], **want: Any) -> list[Row]:
    out = []
    for r in rows:
        c = r["config"]
        ok = all(
            (len(c["tasks"]) if k == "n" else c["realign"]["k_per_class"] if k == "k" else c[k])
            == v
            for k, v in want.items()
        )
        if ok:
            out.append(r)
    return out


def normalized(rows: Sequence[Row], **want: Any) -> float:
    """Mean normalized accuracy of the rows matching ``want`` (config fields, ``n``, ``k``)."""
    return _mean(r["result"]["normalized"] for r in _select(rows, **want))


def recovered_fraction(value: float, chance: float, clean: float) -> float:
    """``(acc - chance) / (clean - chance)``: the share of the chance-to-clean range a result
    keeps. Unlike normalized accuracy it compares suites of different class counts (chance is
    0.25 normalized here, 0.0013-0.1 on the paper's datasets)."""
    span = clean - chance
    return float((value - chance) / span) if span > 0 else float("nan")


def summary(rows: Sequence[Row]) -> dict[str, Any]:
    """``summary.json``: clean, clean + realign, the floors (``base``, ``base+realign``,
    ``chance``) and link × scenario × defense at the largest N (default realign ``k``), each
    beside its recovered fraction (:func:`recovered_fraction`) under ``recovered``."""
    n = largest_n(rows)
    ablation = [r for r in rows if r["role"] == "ablation"]
    clean = normalized(rows, n=n, link="noiseless", defense="none")
    floors = {
        "base": normalized(rows, n=n, link="noiseless", defense="base"),
        "base+realign": normalized(rows, n=n, link="noiseless", defense="base+realign"),
    }
    floors = {k: v for k, v in floors.items() if not np.isnan(v)}
    at_n = [r for r in rows if len(r["config"]["tasks"]) == n]
    chance = _mean(r["result"].get("chance", float("nan")) for r in at_n)
    by_link: dict[str, dict[str, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    for r in ablation:
        c = r["config"]
        by_link[c["link"]][c["scenario"]][c["defense"]] = normalized(
            ablation, link=c["link"], scenario=c["scenario"], defense=c["defense"]
        )
    for cells in by_link.values():
        for cell in cells.values():
            cell.update(floors)
    clean_realign = normalized(rows, n=n, link="noiseless", defense="realign")

    def rec(value: float) -> float:
        return recovered_fraction(value, chance, clean)

    return {
        "n_tasks": n,
        "clean": clean,
        "clean_realign": clean_realign,
        "base": floors.get("base", float("nan")),
        "base_realign": floors.get("base+realign", float("nan")),
        "chance": chance,
        "by_link": {link: dict(v) for link, v in by_link.items()},
        "recovered": {
            "clean_realign": rec(clean_realign),
            "base": rec(floors.get("base", float("nan"))),
            "base_realign": rec(floors.get("base+realign", float("nan"))),
            "by_link": {
                link: {s: {d: rec(v) for d, v in cell.items()} for s, cell in cells.items()}
                for link, cells in by_link.items()
            },
        },
    }


def fig2_series(rows: Sequence[Row]) -> dict[str, dict[str, list[tuple[int, float, float, float]]]]:
    """Per link: line name -> ``(N, mean, min, max)`` over subsets (Fig. 2), with the floors
    ``base`` (the BS discards what it received) and ``chance``."""
    out: dict[str, dict[str, list[tuple[int, float, float, float]]]] = {}
    counts = sorted({len(r["config"]["tasks"]) for r in rows})
    links = sorted({r["config"]["link"] for r in rows} - {"noiseless"})
    scenarios = list(
        dict.fromkeys(r["config"]["scenario"] for r in rows if r["config"]["link"] != "noiseless")
    )

    def series(**want: Any) -> list[tuple[int, float, float, float]]:
        pts = []
        for n in counts:
            vals = [
                r["result"]["normalized"]
                for r in _select(rows, n=n, **want)
                if r["role"] in ("clean", "fig2", "ablation")
            ]
            if vals:
                pts.append((n, float(np.mean(vals)), float(np.min(vals)), float(np.max(vals))))
        return pts

    def chance_series() -> list[tuple[int, float, float, float]]:
        pts = []
        for n in counts:
            vals = [
                r["result"]["chance"]
                for r in _select(rows, n=n, link="noiseless", defense="none")
                if "chance" in r["result"]
            ]
            if vals:
                pts.append((n, float(np.mean(vals)), float(np.min(vals)), float(np.max(vals))))
        return pts

    for link in links:
        lines = {
            "clean": series(link="noiseless", defense="none"),
            "base": series(link="noiseless", defense="base"),
            "chance": chance_series(),
        }
        for scenario in scenarios:
            for defense, label in (("none", "unprotected"), ("r-mtllmf", "R-MTLLMF")):
                lines[f"{scenario}, {label}"] = series(
                    link=link, scenario=scenario, defense=defense
                )
        out[link] = lines
    return out


def kshot_series(rows: Sequence[Row]) -> dict[str, list[tuple[int, float]]]:
    """``scenario (link)`` -> ``(k, normalized)`` for R-MTLLMF at the largest N (Fig. 5)."""
    n = largest_n(rows)
    pool = [
        r
        for r in rows
        if r["role"] in ("kshot", "ablation") and r["config"]["defense"] == "r-mtllmf"
    ]
    kshot = [r for r in rows if r["role"] == "kshot"]
    out: dict[str, list[tuple[int, float]]] = {}
    for scenario, link in dict.fromkeys(
        (r["config"]["scenario"], r["config"]["link"]) for r in kshot
    ):
        ks = sorted(
            {
                r["config"]["realign"]["k_per_class"]
                for r in _select(pool, n=n, scenario=scenario, link=link)
            }
        )
        out[f"{scenario} ({link})"] = [
            (k, normalized(pool, n=n, scenario=scenario, link=link, k=k)) for k in ks
        ]
    return out


def mean_cosine(rows: Sequence[Row], **want: Any) -> np.ndarray:
    """Mean received-vector cosine matrix of the undefended runs matching ``want`` at the
    largest N (the defense acts after reception, so ``none`` runs carry every received set)."""
    n = largest_n(rows)
    mats = [
        np.array(r["result"]["received_cosine"]) for r in _select(rows, n=n, defense="none", **want)
    ]
    mats = [m for m in mats if m.size and m.shape == mats[0].shape]
    return np.mean(mats, axis=0) if mats else np.zeros((0, 0))


def offdiag(m: np.ndarray) -> tuple[float, float, float]:
    """(mean, min, max) of the off-diagonal entries."""
    if m.shape[0] < 2:
        return (float("nan"),) * 3
    vals = m[~np.eye(m.shape[0], dtype=bool)]
    return float(vals.mean()), float(vals.min()), float(vals.max())


def channel_table(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """Per scenario: mean μ_q per user position and the implied SINR (``1/μ - 1``, eq. 5) at
    the largest N, with the measured per-entry error of each link."""
    n = largest_n(rows)
    out = []
    ablation = [r for r in rows if r["role"] == "ablation" and r["config"]["defense"] == "none"]
    for scenario in dict.fromkeys(r["config"]["scenario"] for r in ablation):
        sel = _select(ablation, n=n, scenario=scenario)
        mu = np.mean([r["result"]["mse"] for r in sel], axis=0)
        errors = {
            link: float(
                np.mean([np.mean(r["result"]["error_mse"]) for r in _select(sel, link=link)])
            )
            for link in dict.fromkeys(r["config"]["link"] for r in sel)
        }
        out.append(
            {
                "scenario": scenario,
                "mu": mu.tolist(),
                "sinr_db": (10 * np.log10(np.maximum(1 / mu - 1, 1e-30))).tolist(),
                "error_mse": errors,
            }
        )
    return out


def analysis_table(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """WDE and hypothesis-test outcome per scenario × link (analysed runs, mean over seeds)."""
    groups: dict[tuple[str, str], list[dict[str, float]]] = defaultdict(list)
    for r in rows:
        if "analysis" in r["result"]:
            groups[(r["config"]["scenario"], r["config"]["link"])].append(r["result"]["analysis"])
    keys = ("wde_clean", "wde_received", "sum_mu", "sum_mu_ref", "reject_robust", "reject_paper")
    return [
        {"scenario": s, "link": link, **{k: _mean(a[k] for a in items) for k in keys}}
        for (s, link), items in groups.items()
    ]


def orderings(summ: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The paper's claims per link: clean >= R-MTLLMF ideal > R-MTLLMF worst >> unprotected
    worst by at least :data:`CLEAR_MARGIN` (worst = the lower of the non-ideal scenarios), in
    the ablation both modules beat each alone (in every scenario), and R-MTLLMF in the worst
    scenario beats the base model alone (the received vectors helped at all)."""
    out = []
    for link, by_scenario in summ["by_link"].items():
        ideal = next((s for s in by_scenario if s.endswith("ideal")), None)
        worst = [s for s in by_scenario if s != ideal]
        if ideal is None or not worst:
            continue
        rm_ideal = by_scenario[ideal].get("r-mtllmf", float("nan"))
        rm_worst = min(by_scenario[s].get("r-mtllmf", float("nan")) for s in worst)
        none_worst = min(by_scenario[s].get("none", float("nan")) for s in worst)
        both_wins = all(
            d.get("r-mtllmf", -1) > max(d.get("freeze", 2), d.get("realign", 2))
            for d in by_scenario.values()
        )
        out.append(
            {
                "link": link,
                "clean": summ["clean"],
                "rm_ideal": rm_ideal,
                "rm_worst": rm_worst,
                "none_worst": none_worst,
                "clean_ge_rm_ideal": bool(summ["clean"] >= rm_ideal),
                "rm_ideal_gt_rm_worst": bool(rm_ideal > rm_worst),
                "rm_worst_gg_none_worst": bool(rm_worst >= none_worst + CLEAR_MARGIN),
                "both_beat_each": both_wins,
                "rm_worst_gt_base": bool(rm_worst > summ.get("base", float("nan"))),
            }
        )
    return out


PAPER_CLASSES = {
    "Cars": 196,
    "DTD": 47,
    "EuroSAT": 10,
    "GTSRB": 43,
    "MNIST": 10,
    "RESISC45": 45,
    "SUN397": 397,
    "SVHN": 10,
}
"""Class counts of the paper's eight datasets (its chance level)."""
PAPER_FINETUNED_MEAN = 0.923
"""Mean fine-tuned accuracy of the CLIP ViT-B/16 experts of the paper's setting (FusionBench)."""
PAPER_NORMALIZED: dict[str, dict[str, tuple[float, float]]] = {
    "clean": {"none": (0.912, 0.912)},
    "ideal": {"none": (0.363, 0.363), "r-mtllmf": (0.891, 0.891)},
    "sum-rate": {"none": (0.04, 0.06), "r-mtllmf": (0.548, 0.548)},
    "strongest-user": {"none": (0.04, 0.06), "r-mtllmf": (0.533, 0.533)},
}
"""The paper's normalized accuracies at N = 8 (sec. IV, Fig. 2): ``(low, high)`` where it gives a
range (unprotected worst cases: "between 4% and 6%")."""


def paper_reference() -> list[dict[str, Any]]:
    """The paper's N = 8 numbers beside their recovered fraction. Its chance level, normalized,
    is ``mean_t(1 / C_t) / PAPER_FINETUNED_MEAN`` (0.051), the mean fine-tuned accuracy standing
    in for the per-task ones the paper does not list."""
    chance = float(np.mean([1 / c for c in PAPER_CLASSES.values()])) / PAPER_FINETUNED_MEAN
    clean = PAPER_NORMALIZED["clean"]["none"][0]
    return [
        {
            "scenario": scenario,
            "defense": defense,
            "normalized": list(bounds),
            "recovered": [recovered_fraction(b, chance, clean) for b in bounds],
            "chance": chance,
        }
        for scenario, cells in PAPER_NORMALIZED.items()
        for defense, bounds in cells.items()
    ]
