"""Two studies' results side by side, cell by cell: does a rerun (another machine, another BLAS,
another thread count) agree with a reference within the reference's uncertainty?

Both are read from their ``summary.json``. A cell is a link × scenario × defense at the largest
``N``, plus the clean merge and the base model alone. For each cell present in both:

* with an interval over seeds in the reference (``uncertainty``, two or more seeds), the rerun's
  mean is *inside* or *outside* the reference's 95% interval;
* with one seed in the reference, there is no interval: the cell is compared by its difference
  alone and reported *no interval* (not counted as agreement).

Some cells draw nothing at random (the clean merge, the base model alone, a blind defense on a
merge that carries nothing): their interval over seeds has no width, though the arithmetic of
another machine may still move them by a rounding. Each interval is therefore widened by
``tolerance`` on either side (:data:`TOLERANCE` by default: one flipped prediction moves a
task's accuracy by 1/500 on the embedded test sets and the eight-task normalized mean by about
0.0003, so 0.005 allows some fifteen).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from rmtllmf.errors import InputError

Status = Literal["inside", "outside", "no interval"]
TOLERANCE = 0.005
"""Normalized accuracy by which each reference interval is widened on either side."""


@dataclass(frozen=True)
class CellComparison:
    """One cell of the two studies."""

    cell: str
    value: float
    reference: float
    lo: float
    hi: float
    status: Status

    def to_json(self) -> dict[str, Any]:
        """As ``rmtllmf compare --json`` prints it."""
        return asdict(self)


def read_summary(path: str | Path, flag: str) -> dict[str, Any]:
    """``summary.json`` of a results directory (or the file itself); errors name ``flag``."""
    p = Path(path)
    file = p / "summary.json" if p.is_dir() else p
    if not file.is_file():
        raise InputError(
            f"{flag} {path} holds no summary.json; give the --out directory of rmtllmf reproduce"
        )
    try:
        summary = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(
            f"{flag}: {file} is not JSON ({exc}); give a study's summary.json"
        ) from exc
    if not isinstance(summary, dict) or "by_link" not in summary:
        raise InputError(f"{flag}: {file} is not a study summary; give rmtllmf reproduce's --out")
    return summary


def _cells(summary: dict[str, Any]) -> dict[str, tuple[float, float, float, int]]:
    """Cell name -> (mean, lo, hi, seeds) from a summary (its intervals where it has them)."""
    unc = summary.get("uncertainty") or {}
    out: dict[str, tuple[float, float, float, int]] = {}

    def put(name: str, mean: float, interval: dict[str, Any] | None) -> None:
        if interval and interval.get("n", 0) >= 2:
            out[name] = (mean, float(interval["lo"]), float(interval["hi"]), int(interval["n"]))
        else:
            out[name] = (mean, math.nan, math.nan, 1)

    for key in ("clean", "base"):
        if isinstance(summary.get(key), int | float):
            put(key, float(summary[key]), unc.get(key))
    for link, cells in summary["by_link"].items():
        for scenario, cell in cells.items():
            for defense, value in cell.items():
                if defense in ("base", "base+realign"):
                    continue  # floors repeated in every cell
                interval = unc.get("by_link", {}).get(link, {}).get(scenario, {}).get(defense)
                put(f"{link} / {scenario} / {defense}", float(value), interval)
    return out


def compare_summaries(
    results: dict[str, Any], reference: dict[str, Any], tolerance: float = TOLERANCE
) -> list[CellComparison]:
    """Every cell present in both studies, the rerun's mean against the reference's interval
    widened by ``tolerance`` (module docs), in the reference's order."""
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise InputError(f"--tolerance {tolerance}: give a finite value of 0 or more")
    if results.get("n_tasks") != reference.get("n_tasks"):
        raise InputError(
            f"the studies' largest task counts differ (N = {results.get('n_tasks')} and "
            f"{reference.get('n_tasks')}); compare results of the same config"
        )
    ours, theirs = _cells(results), _cells(reference)
    out = []
    for name, (ref, lo, hi, n) in theirs.items():
        if name not in ours:
            continue
        value = ours[name][0]
        inside = lo - tolerance <= value <= hi + tolerance
        status: Status = "no interval" if n < 2 else "inside" if inside else "outside"
        out.append(CellComparison(name, value, ref, lo, hi, status))
    if not out:
        raise InputError(
            "the two studies share no cell (link, scenario, defense at the same N); compare "
            "results of the same config"
        )
    return out
