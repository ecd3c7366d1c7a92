"""The markdown report: the tables behind every figure, the orderings, the configuration.

:func:`render` composes one function per section; each returns its lines (with the blank lines
that separate it from its neighbours), and the report is their concatenation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from rmtllmf.defense import CHANNEL_FREE, DEFENSES, PAPER
from rmtllmf.report.axis_report import LIMIT_TOLERANCE, AxisReport
from rmtllmf.report.receivers import ReceiverRow
from rmtllmf.report.seeds import ALPHA, TEST_NAME, Comparison, Interval, Uncertainty
from rmtllmf.report.tables import AnalysisRow, ChannelRow, Ordering, Summary
from rmtllmf.study.snr_axis import PAPER_POINTS
from rmtllmf.study.spectra import RankSpectra, SpectraCount

Fig2Data = Mapping[str, Mapping[str, Sequence[tuple[int, float, float, float]]]]
"""Per link: line name -> ``(N, mean, min, max)`` points (:func:`tables.fig2_series`)."""
KshotData = Mapping[str, Sequence[tuple[int, float]]]
"""``scenario (link)`` -> ``(k, normalized)`` points (:func:`tables.kshot_series`)."""
NAN = float("nan")


@dataclass(frozen=True)
class ReportMeta:
    """What the report says about where its numbers come from."""

    runs: int
    code_version: str
    pool_id: str | None
    seeds: list[int] | None
    config: str
    """The sweep config, as indented JSON."""
    planned: int | None = None
    """Runs the sweep config plans (``None``: the plan could not be rebuilt)."""
    outside: int = 0
    """Runs in the database of other settings (not reported)."""
    headline_seeds: list[int] | None = None
    """Further seeds of the headline cells (the largest N's ablation on the first link)."""


def _f(x: float) -> str:
    """A number to three decimals, ``n/a`` for NaN."""
    return "n/a" if x != x else f"{x:.3f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A markdown table's lines."""
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(r) + " |" for r in rows),
    ]


def coverage_note(meta: ReportMeta) -> str | None:
    """One sentence when the report covers less than the plan, or the database holds runs of
    other settings; ``None`` for a complete study."""
    parts = []
    if meta.planned is not None and meta.runs < meta.planned:
        parts.append(
            f"**Incomplete: {meta.runs} of the {meta.planned} planned runs** are finished "
            "(cells without runs read n/a and figures lack their points); rerun the same "
            "command to finish the study, or merge the missing shards"
        )
    if meta.outside:
        parts.append(
            f"the database also holds {meta.outside} run(s) of other settings (an earlier "
            "config), which this report leaves out"
        )
    return "; ".join(parts) + "." if parts else None


def _header(meta: ReportMeta) -> list[str]:
    """Title, provenance, coverage and what the numbers mean."""
    note = coverage_note(meta)
    planned = "" if meta.planned is None else f" of {meta.planned} planned"
    return [
        "# R-MTLLMF study report",
        "",
        f"Runs: {meta.runs}{planned} · code version `{meta.code_version}` · pool "
        f"`{meta.pool_id}` · seeds {meta.seeds}"
        + (f" (the headline cells also {meta.headline_seeds})" if meta.headline_seeds else ""),
        "",
        *([note, ""] if note else []),
        "All numbers are normalized accuracies (merged / the task's own fine-tuned accuracy, "
        "averaged over the subset's tasks and then over subsets and seeds).",
        "",
    ]


def _at_largest_n(summ: Summary, unc: Uncertainty | None = None) -> list[str]:
    """Clean merge, floors and every link × scenario × defense at the largest N, each cell with
    its 95% interval over seeds where it ran more than one."""
    lines = [
        f"## At N = {summ.n_tasks} tasks: every link, scenario and defense (summary.json)",
        "",
        f"Clean merge: **{_f(summ.clean)}**; clean + realign (the control: what few-shot "
        f"training adds without any channel noise): **{_f(summ.clean_realign)}**.",
        "",
        f"Floors: the base model alone (the BS discards every received vector) "
        f"**{_f(summ.base)}**, the base realigned with the same few-shot "
        f"data **{_f(summ.base_realign)}**, chance "
        f"**{_f(summ.chance)}**. A defense below `base` made the received "
        "vectors worse than none; below `base+realign`, realignment did better without them.",
        "",
        "Each cell: normalized accuracy (the mean over seeds and, where a cell ran several "
        "seeds, its 95% interval in square brackets), and in round brackets the recovered "
        "fraction (acc − chance) / (clean − chance), comparable to the paper's numbers.",
        "",
    ]
    rec = summ.recovered.by_link
    present = {d for cells in summ.by_link.values() for cell in cells.values() for d in cell}
    extra = [d for d in DEFENSES if d in present and d not in (*PAPER, *CHANNEL_FREE)]
    cols = (*PAPER, *extra, *CHANNEL_FREE)
    rows = []
    for link, by_s in summ.by_link.items():
        for scenario, d in by_s.items():
            r = rec.get(link, {}).get(scenario, {})
            seeds = unc.by_link.get(link, {}).get(scenario, {}) if unc is not None else {}
            cells = (
                f"{_interval(seeds[k]) if k in seeds else _f(d.get(k, NAN))} ({_f(r.get(k, NAN))})"
                for k in cols
            )
            rows.append([link, scenario, *cells])
    header = ["link", "scenario", *(c if c != "r-mtllmf" else "R-MTLLMF" for c in cols)]
    return lines + _table(header, rows)


def _paper(summ: Summary) -> list[str]:
    """The paper's own N = 8 numbers in the same metric (nothing when the summary has none)."""
    paper = summ.paper
    if not paper:
        return []

    def span(pair: Sequence[float]) -> str:
        return _f(pair[0]) if pair[0] == pair[1] else f"{_f(pair[0])}-{_f(pair[1])}"

    return [
        "",
        "The paper's own numbers at N = 8 (CLIP ViT-B/16 on eight datasets of 10-397 classes;"
        f" chance {_f(paper[0].chance)} normalized) in the same metric:",
        "",
        *_table(
            ["scenario", "defense", "normalized", "recovered fraction"],
            [[p.scenario, p.defense, span(p.normalized), span(p.recovered)] for p in paper],
        ),
    ]


def _orderings(order: Sequence[Ordering]) -> list[str]:
    """The paper's claims, checked per link."""
    yes = {True: "yes", False: "**no**"}
    header = [
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
    ]
    body = [
        [
            o.link,
            *(_f(v) for v in (o.clean, o.rm_ideal, o.rm_worst, o.none_worst)),
            yes[o.clean_ge_rm_ideal],
            yes[o.rm_ideal_gt_rm_worst],
            yes[o.rm_worst_gg_none_worst],
            yes[o.both_beat_each],
            yes[o.rm_worst_gt_base],
        ]
        for o in order
    ]
    return [
        "",
        "## The paper's ordering, per link",
        "",
        "clean ≥ R-MTLLMF ideal > R-MTLLMF worst ≫ unprotected worst (≫: by at least 0.1; "
        "worst = the lower of the non-ideal scenarios), both modules together beat each "
        "alone in every scenario, and R-MTLLMF worst beats the base model alone (the received "
        "vectors helped).",
        "",
        *_table(header, body),
    ]


def _fig2(fig2: Fig2Data) -> list[str]:
    """Fig. 2's lines per link: mean [min, max] over subsets at each N."""
    lines = ["", "## Fig. 2 data: normalized accuracy vs N (mean [min, max] over subsets)", ""]
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
    return lines


def _kshot(kshot: KshotData) -> list[str]:
    """Fig. 5's right panel: R-MTLLMF against samples per class."""
    return [
        "## Fig. 5 data: R-MTLLMF vs samples per class k",
        "",
        *_table(
            ["scenario (link)", "k: normalized"],
            [[label, ", ".join(f"{k}: {_f(v)}" for k, v in pts)] for label, pts in kshot.items()],
        ),
    ]


def _cosines(cosines: Mapping[str, tuple[float, float, float]]) -> list[str]:
    """Figs. 3-4: off-diagonal received-vector cosine per reception."""
    return [
        "",
        "## Figs. 3-4 data: received-vector cosine similarity (off-diagonal)",
        "",
        *_table(
            ["reception", "mean", "min", "max"],
            [[name, *(_f(v) for v in vals)] for name, vals in cosines.items()],
        ),
    ]


def _channel(channel: Sequence[ChannelRow], n: int) -> list[str]:
    """μ_q, SINR and the measured per-entry error per scenario at N = ``n``."""
    return [
        "",
        f"## Channel per scenario (N = {n}, mean over seeds)",
        "",
        *_table(
            ["scenario", "μ_q per user", "SINR per user (dB)", "measured per-entry error by link"],
            [
                [
                    c.scenario,
                    ", ".join(f"{m:.3g}" for m in c.mu),
                    ", ".join(f"{s:.1f}" for s in c.sinr_db),
                    ", ".join(f"{k}: {v:.3g}" for k, v in c.error_mse.items()),
                ]
                for c in channel
            ],
        ),
    ]


def _analysis(analysis: Sequence[AnalysisRow]) -> list[str]:
    """WDE and the hypothesis test per scenario × link."""
    header = [
        "scenario",
        "link",
        "WDE clean",
        "WDE received",
        "Σμ measured",
        "Σμ_ref",
        "reject (robust)",
        "reject (paper)",
    ]
    body = [
        [
            a.scenario,
            a.link,
            *(
                _f(v)
                for v in (
                    a.wde_clean,
                    a.wde_received,
                    a.sum_mu,
                    a.sum_mu_ref,
                    a.reject_robust,
                    a.reject_paper,
                )
            ),
        ]
        for a in analysis
    ]
    return [
        "",
        "## Weight disentanglement error and hypothesis test (undefended merge)",
        "",
        "WDE: mean over tasks of the disagreement rate between each task's fine-tuned model and "
        "the merge (eqs. 7-8), for the clean vectors and the received ones. Rejection: share of "
        "test inputs where H0 (noise does not change the logits) is rejected, robust statistic "
        "and the paper's ratio, threshold set at Σμ_ref.",
        "",
        *_table(header, body),
    ]


def _spectra_sentence(counts: Sequence[SpectraCount]) -> str:
    """What the rank spectra show, in numbers: per link, how many received singular values rise
    above the threshold in each scenario and where the strongest clean one sits."""
    parts = []
    for link in dict.fromkeys(c.link for c in counts):
        cs = [c for c in counts if c.link == link]
        above = ", ".join(f"{c.above} ({c.scenario})" for c in cs)
        tops = ", ".join(f"{c.clean_top:.2g}" for c in cs)
        parts.append(
            f"on the {link} link {above} of {cs[0].values} received singular values rise above "
            f"the threshold, and the strongest clean one sits at {tops} times it"
        )
    return "; ".join(parts)


def _spectra(spectra: RankSpectra | None) -> list[str]:
    """The rank spectra of the clean and received task vectors (nothing when not measured)."""
    if spectra is None or not spectra.receptions:
        return []
    counts = spectra.counts()
    users = len(spectra.receptions[0].users)
    shapes = ", ".join(dict.fromkeys(f"{m}×{n}" for m, n in (t.shape for t in spectra.tensors)))
    body = [
        [
            c.link,
            c.scenario,
            f"{c.above} / {c.values}",
            str(c.above_edge),
            str(c.clean_above),
            _f(c.clean_top),
            _f(c.received_top),
            f"{c.threshold:.3g}",
            f"{c.edge:.3g}",
        ]
        for c in counts
    ]
    header = [
        "link",
        "scenario",
        "received > threshold",
        "received > MP edge",
        "clean > threshold",
        "strongest clean / threshold",
        "strongest received / threshold",
        "threshold (mean)",
        "MP edge (mean)",
    ]
    return [
        "",
        "## Rank spectra of the task vectors: what the svd defense can keep",
        "",
        "![rank spectra](rank_spectra.png)",
        "",
        f"Singular values of {len(spectra.tensors)} weight matrices ({shapes}) of each of the "
        f"{users} users' task vectors at N = {len(spectra.tasks)}, clean and as received, "
        "against each user's Gavish-Donoho threshold `λ*(β)·sqrt(max(m, n))·σ_q` (what the svd "
        "defense keeps) and the Marchenko-Pastur edge `σ_q(sqrt(m) + sqrt(n))` of the noise, "
        "with `σ_q²` the BS's estimate of the per-entry noise. "
        f"In numbers: {_spectra_sentence(counts)} (median over users and matrices).",
        "",
        *_table(header, body),
    ]


def _configuration(meta: ReportMeta) -> list[str]:
    """The resolved sweep config."""
    return ["", "## Configuration", "", "```json", meta.config, "```", ""]


def _interval(i: Interval) -> str:
    """``mean [lo, hi]``, or the mean alone for one seed."""
    return _f(i.mean) if i.n < 2 else f"{_f(i.mean)} [{_f(i.lo)}, {_f(i.hi)}]"


def _uncertainty(unc: Uncertainty | None) -> list[str]:
    """The paired tests of the orderings, where the cells ran more than one seed."""
    if unc is None or not unc.by_link:
        return []
    lines = ["", f"## How sure: {len(unc.seeds)} seed(s), 95% intervals and paired tests", ""]
    tested = [c for c in unc.comparisons if c.difference.n >= 2]
    if not tested:
        lines += [
            f"One seed ({unc.seeds}): no interval, and no ordering can be resolved. A seed draws "
            "the channel, the noise, the few-shot sample and the realignment order; give "
            "`seeds: [0, 1, 2, 3, 4]` under `sweep:` for intervals and tested orderings.",
            "",
        ]
        return lines
    single = sorted(
        {(c.link, c.scenario) for c in unc.comparisons} - {(c.link, c.scenario) for c in tested}
    )
    lines += [
        f"Seeds {unc.seeds}. The cells above carry their 95% Student-t intervals over seeds; "
        f"clean merge {_interval(unc.clean)}, base model alone {_interval(unc.base)}. Each "
        f"ordering by a {TEST_NAME}, at α = {ALPHA}: *holds* / *reversed* when the test "
        "rejects equality, *not resolved* when these seeds cannot tell.",
        "",
    ]
    lines += _table(
        ["link", "scenario", "ordering", "mean difference [95%]", "p", "verdict"],
        [
            [
                c.link,
                c.scenario,
                f"{c.better} > {c.worse}",
                _interval(c.difference),
                "n/a" if c.p_value != c.p_value else f"{c.p_value:.3g}",
                c.verdict,
            ]
            for c in tested
        ],
    )
    if single:
        links = sorted({link for link, _ in single})
        lines += [
            "",
            f"The cells of {', '.join(links)} ran one seed: their orderings are not tested "
            "here (give their sweep more `seeds` to test them).",
        ]
    return lines


def _g(x: float) -> str:
    """A figure over decades, to three significant digits (``n/a`` for NaN)."""
    return "n/a" if x != x else f"{x:.3g}"


def _receivers(receivers: Sequence[ReceiverRow], summ: Summary) -> list[str]:
    """MMSE-SIC against AirComp per scenario (:mod:`rmtllmf.report.receivers`)."""
    if not receivers:
        return []
    defenses = [d for d in DEFENSES if any(d in r.accuracy for r in receivers)]
    lines = [
        "",
        f"## MMSE-SIC against AirComp at N = {summ.n_tasks}",
        "",
        "Both receivers on the same symbols, channel uses, peak power, channel and jammer per "
        "seed (`snr`: MMSE-SIC, each user decoded; `aircomp`, `aircomp-zf`: the MMSE and the "
        "unbiased over-the-air transceivers, the sum read at once). `nmse`: measured error of "
        "the merge's sum over its power, mean [95% interval] over seeds; `sum MSE`: the closed "
        "form the receiver's design promises per entry; `energy`: mean transmit power over "
        "peak. Then normalized accuracy per defense. Floors: base model alone "
        f"{_f(summ.base)}, chance {_f(summ.chance)}; clean merge {_f(summ.clean)}.",
        "",
    ]
    rows = [
        [
            r.scenario,
            r.link,
            _g(r.nmse.mean)
            if r.nmse.n < 2
            else f"{_g(r.nmse.mean)} [{_g(r.nmse.lo)}, {_g(r.nmse.hi)}]",
            _g(r.sum_mse),
            _f(r.energy),
            *(_interval(r.accuracy[d]) if d in r.accuracy else "–" for d in defenses),
        ]
        for r in receivers
    ]
    header = ["scenario", "receiver", "nmse", "sum MSE", "energy", *defenses]
    lines += _table(header, rows)
    paired = [r for r in receivers if r.versus_sic]
    if not paired:
        return lines
    lines += [
        "",
        f"AirComp minus MMSE-SIC, paired over seeds ({TEST_NAME.split(' (')[0]}, α = {ALPHA}): "
        "mean difference [95%] and verdict.",
        "",
    ]
    shown = [d for d in defenses if any(d in r.versus_sic for r in paired)]
    lines += _table(
        ["scenario", "receiver", *shown],
        [
            [
                r.scenario,
                r.link,
                *(
                    f"{_interval(r.versus_sic[d].difference)} {_verdict(r.versus_sic[d])}"
                    if d in r.versus_sic
                    else "–"
                    for d in shown
                ),
            ]
            for r in paired
        ],
    )
    return lines


def _verdict(c: Comparison) -> str:
    """``higher``, ``lower`` or ``n.s.`` for an AirComp-minus-SIC difference."""
    return {"holds": "higher", "reversed": "lower"}.get(c.verdict, "n.s.")


def _snr_axis(axis: AxisReport | None) -> list[str]:
    """The SNR axis: every defense per point with its interval, the bands, the limits, and
    the jammer axis."""
    if axis is None:
        return []
    return [
        "",
        "## The SNR axis (figure snr_axis)",
        "",
        *_snr_points(axis),
        *_snr_bands(axis),
        *_snr_limits(axis),
        *_jammer_axis(axis),
    ]


def _snr_points(axis: AxisReport) -> list[str]:
    """Each defense at each per-entry SNR and on the noiseless link, and the floors."""
    if not axis.snr:
        return []
    shift = axis.weights_shift_db
    lines = [
        "Every user's task vector received as `tau + N(0, E[tau^2] 10^(-SNR/10))` (the awgn "
        "scenario on the snr link, no channel drawn), each defense at each per-entry SNR; "
        "each cell the mean normalized accuracy over seeds [95% interval]. The paper's "
        "operating points on this axis: "
        + ", ".join(f"{s} {db:g} dB" for s, db in PAPER_POINTS.items())
        + "."
        + (
            ""
            if shift is None
            else f" Relative to the weights' power the SNR is {shift:+.1f} dB higher "
            "(E[theta^2] / E[tau^2] of this pool): the axis on which models compare."
        ),
        "",
    ]
    defenses = list(axis.snr)
    grid = [x for x, _ in axis.snr[defenses[0]]]
    rows = [[f"{x:g}", *(_interval(dict(axis.snr[d]).get(x, _NO)) for d in defenses)] for x in grid]
    rows.append(
        [
            "noiseless",
            *(_interval(axis.noiseless[d]) if d in axis.noiseless else "" for d in defenses),
        ]
    )
    lines += _table(["SNR (dB)", *defenses], rows)
    floors = ", ".join(f"{k} {_interval(v)}" for k, v in axis.floors.items())
    return [*lines, "", f"Floors: {floors}.", ""]


def _snr_bands(axis: AxisReport) -> list[str]:
    """Where R-MTLLMF beats each reference by more than its margin."""
    if not axis.bands:
        return []
    lines = [
        "Where R-MTLLMF beats each reference: the paired difference over seeds has its 95% "
        "interval above the margin (one seed: its mean).",
        "",
    ]
    lines += _table(
        ["R-MTLLMF beats", "by more than", "band"],
        [[b.versus, f"{b.margin:g}", b.text] for b in axis.bands],
    )
    return [*lines, ""]


def _snr_limits(axis: AxisReport) -> list[str]:
    """The axis's two limits and whether each is reached."""
    if not axis.limits:
        return []
    lines = [
        "The limits: at the highest SNR each defense against itself on the noiseless link, "
        "at the lowest no defense against chance and shrink against the base model alone; "
        f"reached when the paired difference's 95% interval holds 0 or its mean is within "
        f"{LIMIT_TOLERANCE:g}.",
        "",
    ]
    lines += _table(
        ["SNR (dB)", "defense", "against", "difference [95%]", "reached"],
        [
            [
                f"{lim.snr_db:g}",
                lim.defense,
                lim.reference,
                _interval(lim.difference),
                "yes" if lim.reached else "**no**",
            ]
            for lim in axis.limits
        ],
    )
    return [*lines, ""]


def _jammer_axis(axis: AxisReport) -> list[str]:
    """Each defense against the physical jammer's power, beside the equivalent SNR."""
    lines: list[str] = []
    for scenario, by_defense in axis.jammer.items():
        defenses = list(by_defense)
        points = by_defense[defenses[0]]
        where = "" if "(" in scenario else " on the snr link"
        lines += [
            f"Against the jammer's power: the {scenario} jammer{where}, its "
            "jammer-to-noise ratio swept; beside it the equivalent per-entry SNR, at which "
            "the awgn axis puts as much noise into the merge (S_ref / mean of the users' MSEs; "
            "n/a off the snr link).",
            "",
        ]
        lines += _table(
            ["JNR (dB)", "equivalent SNR (dB)", *defenses],
            [
                [
                    f"{jnr:g}",
                    "n/a" if snr_db != snr_db else f"{snr_db:.1f}",
                    *(_interval(by_defense[d][i][1]) for d in defenses),
                ]
                for i, (jnr, _, snr_db) in enumerate(points)
            ],
        )
        lines.append("")
    return lines


_NO = Interval(NAN, NAN, NAN, 0)


def render(
    summ: Summary,
    order: Sequence[Ordering],
    channel: Sequence[ChannelRow],
    analysis: Sequence[AnalysisRow],
    cosines: Mapping[str, tuple[float, float, float]],
    fig2: Fig2Data,
    kshot: KshotData,
    meta: ReportMeta,
    *,
    spectra: RankSpectra | None = None,
    uncertainty: Uncertainty | None = None,
    axis: AxisReport | None = None,
    receivers: Sequence[ReceiverRow] = (),
) -> str:
    """The whole report as markdown (with the rank spectra when the sweep measured them, and
    the intervals over seeds)."""
    sections = (
        _header(meta),
        _at_largest_n(summ, uncertainty),
        _uncertainty(uncertainty),
        _snr_axis(axis),
        _receivers(receivers, summ),
        _paper(summ),
        _orderings(order),
        _fig2(fig2),
        _kshot(kshot),
        _cosines(cosines),
        _channel(channel, summ.n_tasks),
        _analysis(analysis),
        _spectra(spectra),
        _configuration(meta),
    )
    return "\n".join(line for section in sections for line in section)
