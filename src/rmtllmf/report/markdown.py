"""The markdown report: the tables behind every figure, the orderings, the configuration."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def _f(x: float) -> str:
    return "n/a" if x != x else f"{x:.3f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(r) + " |" for r in rows),
    ]


def render(
    summ: Mapping[str, Any],
    order: Sequence[Mapping[str, Any]],
    channel: Sequence[Mapping[str, Any]],
    analysis: Sequence[Mapping[str, Any]],
    cosines: Mapping[str, tuple[float, float, float]],
    fig2: Mapping[str, Mapping[str, Sequence[tuple[int, float, float, float]]]],
    kshot: Mapping[str, Sequence[tuple[int, float]]],
    meta: Mapping[str, Any],
) -> str:
    """The whole report as markdown."""
    n = summ["n_tasks"]
    lines = [
        "# R-MTLLMF study report",
        "",
        f"Runs: {meta['runs']} · code version `{meta['code_version']}` · pool `{meta['pool_id']}`"
        f" · seeds {meta['seeds']}",
        "",
        "All numbers are normalized accuracies (merged / the task's own fine-tuned accuracy, "
        "averaged over the subset's tasks and then over subsets and seeds).",
        "",
        f"## At N = {n} tasks: every link, scenario and defense (summary.json)",
        "",
        f"Clean merge: **{_f(summ['clean'])}**; clean + realign (the control: what few-shot "
        f"training adds without any channel noise): **{_f(summ['clean_realign'])}**.",
        "",
        f"Floors: the base model alone (the BS discards every received vector) "
        f"**{_f(summ.get('base', float('nan')))}**, the base realigned with the same few-shot "
        f"data **{_f(summ.get('base_realign', float('nan')))}**, chance "
        f"**{_f(summ.get('chance', float('nan')))}**. A defense below `base` made the received "
        "vectors worse than none; below `base+realign`, realignment did better without them.",
        "",
        "Each cell: normalized accuracy, and in brackets the recovered fraction "
        "(acc − chance) / (clean − chance), comparable to the paper's numbers.",
        "",
    ]
    rec = summ.get("recovered", {}).get("by_link", {})
    cols = ("none", "freeze", "realign", "r-mtllmf", "base", "base+realign")
    rows = []
    for link, by_s in summ["by_link"].items():
        for scenario, d in by_s.items():
            r = rec.get(link, {}).get(scenario, {})
            rows.append(
                [
                    link,
                    scenario,
                    *(f"{_f(d.get(k, float('nan')))} ({_f(r.get(k, float('nan')))})" for k in cols),
                ]
            )
    lines += _table(
        ["link", "scenario", "none", "freeze", "realign", "R-MTLLMF", "base", "base+realign"], rows
    )
    paper = summ.get("paper", [])
    if paper:
        lines += [
            "",
            "The paper's own numbers at N = 8 (CLIP ViT-B/16 on eight datasets of 10-397 classes;"
            f" chance {_f(paper[0]['chance'])} normalized) in the same metric:",
            "",
        ]

        def span(pair: Sequence[float]) -> str:
            return _f(pair[0]) if pair[0] == pair[1] else f"{_f(pair[0])}-{_f(pair[1])}"

        lines += _table(
            ["scenario", "defense", "normalized", "recovered fraction"],
            [
                [p["scenario"], p["defense"], span(p["normalized"]), span(p["recovered"])]
                for p in paper
            ],
        )
    lines += [
        "",
        "## The paper's ordering, per link",
        "",
        "clean ≥ R-MTLLMF ideal > R-MTLLMF worst ≫ unprotected worst (≫: by at least 0.1; "
        "worst = the lower of the non-ideal scenarios), both modules together beat each "
        "alone in every scenario, and R-MTLLMF worst beats the base model alone (the received "
        "vectors helped).",
        "",
    ]
    yes = {True: "yes", False: "**no**"}
    lines += _table(
        [
            "link",
            "clean",
            "R-MTLLMF ideal",
            "R-MTLLMF worst",
            "none worst",
            "clean ≥ RM ideal",
            "RM ideal > RM worst",
            "RM worst ≫ none worst",
            "both > each",
            "RM worst > base",
        ],
        [
            [
                o["link"],
                _f(o["clean"]),
                _f(o["rm_ideal"]),
                _f(o["rm_worst"]),
                _f(o["none_worst"]),
                yes[o["clean_ge_rm_ideal"]],
                yes[o["rm_ideal_gt_rm_worst"]],
                yes[o["rm_worst_gg_none_worst"]],
                yes[o["both_beat_each"]],
                yes[o["rm_worst_gt_base"]],
            ]
            for o in order
        ],
    )
    lines += ["", "## Fig. 2 data: normalized accuracy vs N (mean [min, max] over subsets)", ""]
    for link, series in fig2.items():
        counts = sorted({p[0] for pts in series.values() for p in pts})
        body = [
            [
                label,
                *(
                    next((f"{_f(m)} [{_f(lo)}, {_f(hi)}]" for k, m, lo, hi in pts if k == c), "")
                    for c in counts
                ),
            ]
            for label, pts in series.items()
        ]
        lines += [f"### link: {link}", "", *_table(["line", *(f"N={c}" for c in counts)], body), ""]
    lines += ["## Fig. 5 data: R-MTLLMF vs samples per class k", ""]
    lines += _table(
        ["scenario (link)", "k: normalized"],
        [[label, ", ".join(f"{k}: {_f(v)}" for k, v in pts)] for label, pts in kshot.items()],
    )
    lines += ["", "## Figs. 3-4 data: received-vector cosine similarity (off-diagonal)", ""]
    lines += _table(
        ["reception", "mean", "min", "max"],
        [[name, *(_f(v) for v in vals)] for name, vals in cosines.items()],
    )
    lines += ["", f"## Channel per scenario (N = {n}, mean over seeds)", ""]
    lines += _table(
        ["scenario", "μ_q per user", "SINR per user (dB)", "measured per-entry error by link"],
        [
            [
                c["scenario"],
                ", ".join(f"{m:.3g}" for m in c["mu"]),
                ", ".join(f"{s:.1f}" for s in c["sinr_db"]),
                ", ".join(f"{k}: {v:.3g}" for k, v in c["error_mse"].items()),
            ]
            for c in channel
        ],
    )
    lines += [
        "",
        "## Weight disentanglement error and hypothesis test (undefended merge)",
        "",
        "WDE: mean over tasks of the disagreement rate between each task's fine-tuned model and "
        "the merge (eqs. 7-8), for the clean vectors and the received ones. Rejection: share of "
        "test inputs where H0 (noise does not change the logits) is rejected, robust statistic "
        "and the paper's ratio, threshold set at Σμ_ref.",
        "",
    ]
    lines += _table(
        [
            "scenario",
            "link",
            "WDE clean",
            "WDE received",
            "Σμ measured",
            "Σμ_ref",
            "reject (robust)",
            "reject (paper)",
        ],
        [
            [
                a["scenario"],
                a["link"],
                *(
                    _f(a[k])
                    for k in (
                        "wde_clean",
                        "wde_received",
                        "sum_mu",
                        "sum_mu_ref",
                        "reject_robust",
                        "reject_paper",
                    )
                ),
            ]
            for a in analysis
        ],
    )
    lines += ["", "## Configuration", "", "```json", meta["config"], "```", ""]
    return "\n".join(lines)
