"""Two models' SNR axes on one figure: normalized accuracy against the per-entry SNR relative to
the task vector (left) and relative to the weights (right), with 95% bands over seeds.

    python scripts/snr_axis_models.py tiny-vit=docs/snr-results minilm=docs/text-snr-results \
        --out docs/snr-models.png

Each argument is a results directory (or its ``summary.json``) of a sweep with ``snr_axis``; the
label is the directory's name unless given as ``LABEL=DIR``. Defenses drawn: none, R-MTLLMF and
shrink (``--defenses`` changes them).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def load(arg: str) -> tuple[str, dict]:
    """``(label, summary.json's snr_axis)`` of ``LABEL=DIR`` or ``DIR``."""
    label, _, where = arg.rpartition("=")
    path = Path(where)
    file = path / "summary.json" if path.is_dir() else path
    axis = json.loads(file.read_text(encoding="utf-8")).get("snr_axis")
    if not axis:
        raise SystemExit(f"{file} holds no snr_axis: run a sweep with snr_axis first")
    return label or path.name, axis


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results", nargs="+", help="results directories (LABEL=DIR allowed)")
    parser.add_argument("--defenses", nargs="+", default=["none", "r-mtllmf", "shrink"])
    parser.add_argument("--out", type=Path, required=True, help="figure file (.png or .pdf)")
    args = parser.parse_args()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True)
    styles = ["-", "--", ":", "-."]
    for (label, axis), style in zip(map(load, args.results), styles, strict=False):
        shift = axis.get("weights_shift_db") or 0.0
        for i, defense in enumerate(args.defenses):
            points = axis["snr"].get(defense)
            if not points:
                continue
            x = [p["snr_db"] for p in points]
            mean, lo, hi = ([p[k] for p in points] for k in ("mean", "lo", "hi"))
            colour = f"C{i}"
            for ax, offset in ((left, 0.0), (right, shift)):
                xs = [v + offset for v in x]
                ax.plot(xs, mean, ls=style, color=colour, marker=".", label=f"{label}: {defense}")
                ax.fill_between(xs, lo, hi, color=colour, alpha=0.12, lw=0)
        base = axis["floors"]["base"]["mean"]
        for ax in (left, right):
            ax.axhline(base, color="0.45", ls=style, lw=0.8, label=f"{label}: base alone")
    left.set_xlabel("per-entry SNR relative to the task vector (dB)")
    right.set_xlabel("SNR relative to the weights' power (dB)")
    left.set_ylabel("normalized accuracy")
    left.set_ylim(0, 1.1)
    right.legend(fontsize=6, ncol=2, loc="lower right")
    fig.suptitle("the SNR axis of each model (bands: 95% over seeds)")
    fig.savefig(args.out, bbox_inches="tight", dpi=150)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
