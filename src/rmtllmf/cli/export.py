"""``rmtllmf export``: a study's runs into TensorBoard or MLflow (offline, local files)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rmtllmf.cli.common import check_out_given, check_output_dir, examples


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "export",
        help="write a study's runs to TensorBoard or MLflow (local files, offline)",
        description="Reads a study's results.db (read-only) and writes one tracker run per "
        "finished run: its resolved config flattened as params / hparams, accuracies, "
        "normalized accuracy and per-user MSEs as metrics; the report's figures, report.md and "
        "summary.json go to one more run named 'study'. Exporting again adds only the runs "
        "that are new (e.g. after more shards were merged).",
        epilog=examples(
            "rmtllmf export --to tensorboard --out tb results/ && tensorboard --logdir tb",
            "rmtllmf export --to mlflow --out mlruns results/results.db",
        ),
    )
    p.add_argument("results", type=Path, metavar="RESULTS", help="study directory or results.db")
    p.add_argument("--to", choices=["tensorboard", "mlflow"], required=True, help="tracker")
    p.add_argument(
        "--out", type=Path, required=True, help="log directory (TensorBoard) or file store (MLflow)"
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="write into an --out directory that holds files export did not write (nothing "
        "there is replaced or deleted; the runs are added beside it)",
    )
    p.add_argument(
        "--experiment",
        default=None,
        help="MLflow experiment name (default: the study directory's name)",
    )


def run(args: argparse.Namespace) -> int:
    """Export the study and say where it went."""
    from rmtllmf.app.export import export_study

    check_output_dir(check_out_given(args.out))
    done = export_study(
        args.results, args.to, args.out, experiment=args.experiment, force=args.force
    )
    print(
        f"exported {done.written} run(s) to {args.to} under {args.out} "
        f"({done.skipped} already there); {done.hint}"
    )
    return 0
