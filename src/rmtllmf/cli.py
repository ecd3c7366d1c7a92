"""The ``rmtllmf`` command line."""

from __future__ import annotations

import os

# Shared 2-core machines: spinning OpenMP workers make torch several times slower under
# contention; passive waiting is set before torch is first imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from rmtllmf.atomic import write_text_atomic
from rmtllmf.channel.geometry import PathLossConfig
from rmtllmf.channel.link import SymbolLinkConfig
from rmtllmf.channel.report import ChannelSummary, measure, summarize
from rmtllmf.channel.scenario import SCENARIOS, ScenarioConfig, draw_realization
from rmtllmf.errors import InputError, RmtllmfError


def _add_channel_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "channel",
        help="draw one uplink realization and print per-user SNR, SINR, rate and MSE",
        description="Per-user figures of the MIMO uplink (paper eqs. 3-5) for one scenario.",
    )
    p.add_argument("--scenario", choices=SCENARIOS, default="ideal")
    p.add_argument("--users", type=int, default=8, help="single-antenna users Q (default 8)")
    p.add_argument("--antennas", type=int, default=16, help="BS antennas N_R (default 16)")
    p.add_argument("--seed", type=int, default=0)
    jam = p.add_mutually_exclusive_group()
    jam.add_argument("--jammer-dbm", type=float, help="jammer power P_N in dBm")
    jam.add_argument("--jnr-db", type=float, help="jammer power over N_R * thermal (default 10)")
    p.add_argument("--tx-dbm", type=float, default=-10.0, help="user power (default 0.1 mW)")
    p.add_argument("--bandwidth-hz", type=float, default=180e3)
    p.add_argument("--noise-figure-db", type=float, default=5.0)
    p.add_argument(
        "--path-loss", choices=["log-distance", "3gpp-umi", "3gpp-uma"], default="log-distance"
    )
    p.add_argument("--exponent", type=float, default=2.0, help="log-distance exponent")
    p.add_argument("--r-min", type=float, default=100.0, help="closest user distance in m")
    p.add_argument("--r-max", type=float, default=1000.0, help="farthest user distance in m")
    p.add_argument("--qam", type=int, choices=[4, 16, 64, 256], default=64)
    p.add_argument("--bits", type=int, default=8, help="quantiser bits for --symbols")
    p.add_argument(
        "--symbols", type=int, default=0, help="also simulate this many channel uses (measured)"
    )
    p.add_argument("--genie", action="store_true", help="genie-aided SIC for --symbols")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")


def _channel(args: argparse.Namespace) -> int:
    cfg = ScenarioConfig(
        scenario=args.scenario,
        n_users=args.users,
        n_antennas=args.antennas,
        r_min_m=args.r_min,
        r_max_m=args.r_max,
        path_loss=PathLossConfig(model=args.path_loss, exponent=args.exponent),
        tx_power_dbm=args.tx_dbm,
        bandwidth_hz=args.bandwidth_hz,
        noise_figure_db=args.noise_figure_db,
        jammer_dbm=args.jammer_dbm,
        jnr_db=args.jnr_db,
    )
    rng = np.random.default_rng(args.seed)
    channel = draw_realization(cfg, rng)
    summary = summarize(cfg, channel, args.qam)
    if args.symbols > 0:
        link = SymbolLinkConfig(bits=args.bits, modulation_order=args.qam, genie=args.genie)
        summary = measure(summary, channel, link, args.symbols, rng)
    if args.json:
        out = {"config": cfg.model_dump(), "seed": args.seed, **summary.to_dict()}
        print(json.dumps(out, indent=2))
    else:
        _print_summary(summary, args.qam)
    return 0


def _print_summary(summary: ChannelSummary, qam: int) -> None:
    table = Table(title=f"Uplink, scenario '{summary.scenario}' ({qam}-QAM theory)")
    for name in ("user", "dist m", "PL dB", "SNR dB", "SIC", "SINR dB", "rate nats", "MSE mu"):
        table.add_column(name, justify="right")
    table.add_column("BER theory", justify="right")
    if summary.measured:
        for name in ("MSE meas.", "BER meas."):
            table.add_column(name, justify="right")
    for i, r in enumerate(summary.users):
        cells = [
            str(r.user),
            f"{r.distance_m:.0f}",
            f"{r.path_loss_db:.1f}",
            f"{r.snr_db:.1f}",
            str(r.sic_position),
            f"{r.sinr_db:.1f}",
            f"{r.rate_nats:.3f}",
            f"{r.mse:.4g}",
            f"{r.ber_theory:.3g}",
        ]
        if summary.measured:
            m = summary.measured[i]
            cells += [f"{m.symbol_mse:.4g}", f"{m.ber:.3g}"]
        table.add_row(*cells)
    console = Console(width=None if sys.stdout.isatty() else 140)
    console.print(table)
    jammer = "none" if summary.jammer_dbm == -np.inf else f"{summary.jammer_dbm:.1f} dBm"
    console.print(
        f"thermal {summary.thermal_dbm:.1f} dBm/antenna, jammer {jammer}, "
        f"sum rate {summary.sum_rate_nats:.3f} nats/use, mean MSE {summary.mean_mse:.4g}"
    )


def _add_merge_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "merge",
        help="merge fine-tuned checkpoints into one model (task arithmetic, average, TIES, DARE)",
        description="Streaming merge: a slice of one tensor per model in memory; writes "
        "safetensors with the base's keys, shapes and dtypes, and the resolved config as OUT.json.",
    )
    p.add_argument(
        "--method",
        default="task-arithmetic",
        help="task-arithmetic (eq. 6), average, ties, dare, or a method registered in code",
    )
    p.add_argument("--base", required=True, help="base model: .safetensors file or HF directory")
    p.add_argument("--models", nargs="+", required=True, help="fine-tuned models (same format)")
    p.add_argument("--lambda", dest="scaling", type=float, default=0.3, help="scaling lambda_N")
    p.add_argument("--density", type=float, default=0.2, help="TIES: fraction of entries kept")
    p.add_argument("--ties-merge", choices=["mean", "sum", "max"], default="mean")
    p.add_argument("--drop-rate", type=float, default=0.5, help="DARE: drop probability p")
    p.add_argument("--dare-combine", choices=["task-arithmetic", "ties"], default="task-arithmetic")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--include", nargs="*", default=["*"], help="parameter name globs to merge")
    p.add_argument("--exclude", nargs="*", default=[], help="globs kept at the base's values")
    p.add_argument("--allow-pickle", action="store_true", help="accept trusted pickle checkpoints")
    p.add_argument("--out", required=True, help="output .safetensors file")


def _merge(args: argparse.Namespace) -> int:
    from rmtllmf.fusion import MergeConfig, ParamFilter, merge_checkpoints

    config = MergeConfig(
        method=args.method,
        scaling=args.scaling,
        density=args.density,
        ties_merge=args.ties_merge,
        drop_rate=args.drop_rate,
        dare_combine=args.dare_combine,
        seed=args.seed,
    )
    params = ParamFilter(include=tuple(args.include), exclude=tuple(args.exclude))
    out = Path(args.out)
    merge_checkpoints(args.base, args.models, out, config, params, allow_pickle=args.allow_pickle)
    record = {
        "base": str(args.base),
        "models": [str(m) for m in args.models],
        "merge": config.model_dump(),
        "params": params.model_dump(),
    }
    write_text_atomic(out.with_suffix(out.suffix + ".json"), json.dumps(record, indent=2))
    print(f"merged {len(args.models)} models with {config.method} into {out}")
    return 0


def default_cache() -> Path:
    """Where built zoos live: ``$RMTLLMF_CACHE`` or ``~/.cache/rmtllmf``."""
    return Path(os.environ.get("RMTLLMF_CACHE", "~/.cache/rmtllmf")).expanduser()


def _add_zoo_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("zoo", help="build the embedded model zoo (tiny base + 8 fine-tunes)")
    zsub = p.add_subparsers(dest="zoo_command", required=True)
    b = zsub.add_parser("build", help="build or reuse the zoo and report the clean merge")
    b.add_argument("--root", type=Path, default=None, help="cache directory (default ~/.cache)")
    b.add_argument("--tasks", nargs="+", default=None, help="subset of the embedded tasks")
    b.add_argument("--steps", type=int, default=None, help="fine-tuning steps per task")
    b.add_argument("--lr", type=float, default=None, help="fine-tuning learning rate")
    b.add_argument("--batch", type=int, default=None, help="fine-tuning batch size")
    b.add_argument("--n-train", type=int, default=None)
    b.add_argument(
        "--anchor-weight",
        type=float,
        default=None,
        help="beta of the function-space anchor on pretext images (0: plain fine-tuning)",
    )
    b.add_argument("--base", default=None, help="tiny base checkpoint (default: shipped)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--threads", type=int, default=None, help="torch threads (default: cores)")
    b.add_argument(
        "--workers",
        type=int,
        default=1,
        help="single-threaded processes that generate data and fine-tune (2 beat 1 process "
        "with 2 threads on 2 cores)",
    )
    b.add_argument("--json", action="store_true", help="print machine-readable JSON")


def _zoo(args: argparse.Namespace) -> int:
    import torch

    from rmtllmf.evaluation import evaluate_clean_merge
    from rmtllmf.zoo import ZooConfig, build_zoo

    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    updates = {
        k: v
        for k, v in {
            "tasks": tuple(args.tasks) if args.tasks else None,
            "steps": args.steps,
            "lr": args.lr,
            "batch": args.batch,
            "n_train": args.n_train,
            "anchor_weight": args.anchor_weight,
            "base": args.base,
            "seed": args.seed,
        }.items()
        if v is not None
    }
    cfg = ZooConfig(**updates)
    zoo = build_zoo(
        args.root or default_cache() / "zoo", cfg, progress=not args.json, workers=args.workers
    )
    report = evaluate_clean_merge(zoo, cfg.tasks)
    base = {t: zoo.record["base"][t]["test"] for t in cfg.tasks}
    ft = {t: zoo.record["finetuned"][t]["test"] for t in cfg.tasks}
    off = report.cosine[~np.eye(len(cfg.tasks), dtype=bool)]
    summary = {
        "root": str(zoo.root),
        "config": cfg.model_dump(),
        "base_test": base,
        "finetuned_test": ft,
        "merged_test": report.test_accuracy,
        "mean_base": float(np.mean(list(base.values()))),
        "mean_finetuned": float(np.mean(list(ft.values()))),
        "mean_merged": float(np.mean(list(report.test_accuracy.values()))),
        "lambda": report.scaling,
        "normalized_accuracy": report.normalized,
        "gap_recovery": report.gap_recovery,
        "cosine_offdiag_mean": float(off.mean()) if off.size else float("nan"),
        "cosine_offdiag_max": float(off.max()) if off.size else float("nan"),
        "cosine": report.cosine.tolist(),
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    table = Table(title=f"Embedded zoo ({zoo.root})")
    for name in ("task", "base", "fine-tuned", "merged (TA)"):
        table.add_column(name, justify="right")
    for t in cfg.tasks:
        table.add_row(t, f"{base[t]:.3f}", f"{ft[t]:.3f}", f"{report.test_accuracy[t]:.3f}")
    table.add_row(
        "mean",
        f"{summary['mean_base']:.3f}",
        f"{summary['mean_finetuned']:.3f}",
        f"{summary['mean_merged']:.3f}",
    )
    console = Console(width=None if sys.stdout.isatty() else 120)
    console.print(table)
    console.print(
        f"task arithmetic, lambda={report.scaling:.2f} (chosen on validation): normalized accuracy "
        f"{report.normalized:.3f}, gap recovery {report.gap_recovery:.2f}; task-vector cosine "
        f"off-diagonal mean {summary['cosine_offdiag_mean']:.3f}, max "
        f"{summary['cosine_offdiag_max']:.3f}"
    )
    return 0


def _add_finetune_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "finetune",
        help="fine-tune a base model on one task; writes the checkpoint and its task vector",
    )
    p.add_argument("--family", choices=["tiny-vit", "hf-clip"], default="tiny-vit")
    p.add_argument("--task", help="tiny-vit: a task of the embedded suite")
    p.add_argument("--base", default=None, help="base model (hf-clip: directory or hub id)")
    p.add_argument("--train-folder", help="hf-clip: image folder root/<class>/<images>")
    p.add_argument("--dataset", help="hf-clip: Hugging Face dataset id or save_to_disk directory")
    p.add_argument("--dataset-config", default=None)
    p.add_argument("--templates", nargs="+", default=None, help="zero-shot prompt templates")
    p.add_argument("--online", action="store_true", help="allow hub downloads (hf-clip)")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=None, help="default 1e-5 (full), 1e-4 (LoRA)")
    p.add_argument("--lora", action="store_true", help="train LoRA adapters (hf-clip, peft)")
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument(
        "--anchor-weight",
        type=float,
        default=None,
        help="beta of the function-space anchor (tiny-vit default 10, hf-clip 0)",
    )
    p.add_argument(
        "--anchor-folder", default=None, help="hf-clip: public anchor images (an image folder)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", required=True, type=Path, help="output directory")


def _finetune(args: argparse.Namespace) -> int:
    import torch

    from rmtllmf.finetune import FinetuneConfig, clip_accuracy, finetune_clip, write_result

    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    if args.family == "tiny-vit":
        from rmtllmf.zoo import ZooConfig, build_zoo

        if not args.task:
            raise InputError("--family tiny-vit needs --task (one of the embedded tasks)")
        cfg = ZooConfig(
            tasks=(args.task,),
            steps=args.steps,
            seed=args.seed,
            base=args.base,
            **({"lr": args.lr} if args.lr else {}),
            **({"anchor_weight": args.anchor_weight} if args.anchor_weight is not None else {}),
        )
        zoo = build_zoo(default_cache() / "zoo", cfg, progress=True)
        record = {
            "family": "tiny-vit",
            "task": args.task,
            "zoo": cfg.model_dump(),
            "base_accuracy": zoo.record["base"][args.task],
            "finetuned_accuracy": zoo.record["finetuned"][args.task],
        }
        out = write_result(args.out, zoo.base_state, zoo.finetuned[args.task], record)
        print(
            f"fine-tuned {args.task}: test accuracy {record['base_accuracy']['test']:.3f} -> "
            f"{record['finetuned_accuracy']['test']:.3f}; wrote {out}"
        )
        return 0

    from rmtllmf.data.real import load_hf_dataset, load_image_folder
    from rmtllmf.models.hf_clip import BASE_IDS, DEFAULT_TEMPLATES, HfClip

    if bool(args.train_folder) == bool(args.dataset):
        raise InputError("--family hf-clip needs exactly one of --train-folder or --dataset")
    clip = HfClip.from_pretrained(args.base or BASE_IDS["vit-b-16"], offline=not args.online)
    if args.train_folder:
        train = load_image_folder(args.train_folder, clip.image_size)
        val = train
    else:
        kw = {"config": args.dataset_config, "offline": not args.online}
        train = load_hf_dataset(args.dataset, "train", clip.image_size, **kw)
        val = load_hf_dataset(args.dataset, "validation", clip.image_size, **kw)
    head = clip.zero_shot_head(train.classnames, tuple(args.templates or DEFAULT_TEMPLATES))
    ft_cfg = FinetuneConfig(
        steps=args.steps,
        batch=args.batch,
        seed=args.seed,
        lora=args.lora,
        lora_rank=args.lora_rank,
        lr=args.lr or (1e-4 if args.lora else 1e-5),
        anchor_weight=args.anchor_weight or 0.0,
    )
    if args.anchor_folder and not args.anchor_weight:
        raise InputError("--anchor-folder is used only with --anchor-weight B > 0; give both")
    anchor_images = (
        load_image_folder(args.anchor_folder, clip.image_size).images
        if args.anchor_folder
        else None
    )
    base_state = clip.vision_state()
    before = clip_accuracy(clip, head, val)
    losses = finetune_clip(clip, train, head, ft_cfg, progress=True, anchor_images=anchor_images)
    after = clip_accuracy(clip, head, val)
    record = {
        "family": "hf-clip",
        "base": str(args.base),
        "finetune": ft_cfg.model_dump(),
        "classnames": list(train.classnames),
        "val_accuracy": {"base": before, "finetuned": after},
        "first_loss": losses[0],
        "last_loss": losses[-1],
    }
    out = write_result(args.out, base_state, clip.vision_state(), record, prefix="vision_model.")
    print(f"fine-tuned: validation accuracy {before:.3f} -> {after:.3f}; wrote {out}")
    return 0


def _add_evaluate_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("evaluate", help="per-task and normalized accuracy of a model")
    p.add_argument("--family", choices=["tiny-vit", "hf-clip"], default="tiny-vit")
    p.add_argument("--model", required=True, help="checkpoint to evaluate (e.g. a merge)")
    p.add_argument("--tasks", nargs="+", default=None, help="tiny-vit: embedded tasks")
    p.add_argument("--split", default="test")
    p.add_argument("--base", default=None, help="hf-clip: base model directory or id")
    p.add_argument(
        "--data",
        nargs="+",
        default=[],
        metavar="TASK=PATH",
        help="hf-clip: image folder or dataset per task",
    )
    p.add_argument(
        "--finetuned",
        nargs="*",
        default=[],
        metavar="TASK=CKPT",
        help="hf-clip: fine-tuned checkpoints, the normalisers",
    )
    p.add_argument("--online", action="store_true")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", action="store_true")


def _pairs(items: Sequence[str], flag: str) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise InputError(f"{flag} expects TASK=PATH items, got {item!r}")
        out[name] = value
    return out


def _evaluate(args: argparse.Namespace) -> int:
    import torch

    from rmtllmf.fusion import load_state_dict
    from rmtllmf.metrics import normalized_accuracy

    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    finetuned: dict[str, float] = {}
    if args.family == "tiny-vit":
        from rmtllmf.zoo import ZooConfig, build_zoo

        cfg = ZooConfig(**({"tasks": tuple(args.tasks)} if args.tasks else {}))
        zoo = build_zoo(default_cache() / "zoo", cfg, progress=not args.json)
        acc = zoo.task_accuracy(load_state_dict(args.model), cfg.tasks, args.split)
        finetuned = {t: zoo.finetuned_accuracy(t, args.split) for t in cfg.tasks}
    else:
        from rmtllmf.data.real import load_hf_dataset, load_image_folder
        from rmtllmf.finetune import clip_accuracy
        from rmtllmf.models.hf_clip import BASE_IDS, HfClip, vision_state

        data_paths = _pairs(args.data, "--data")
        if not data_paths:
            raise InputError("--family hf-clip needs --data TASK=PATH for at least one task")
        clip = HfClip.from_pretrained(args.base or BASE_IDS["vit-b-16"], offline=not args.online)
        suites = {}
        for task, path in data_paths.items():
            suites[task] = (
                load_image_folder(path, clip.image_size)
                if Path(path).is_dir() and not (Path(path) / "dataset_dict.json").exists()
                else load_hf_dataset(path, args.split, clip.image_size, offline=not args.online)
            )
        heads = {t: clip.zero_shot_head(d.classnames) for t, d in suites.items()}

        def score(checkpoint: str) -> dict[str, float]:
            clip.load_vision_state(vision_state(checkpoint))
            return {t: clip_accuracy(clip, heads[t], d) for t, d in suites.items()}

        for task, ckpt in _pairs(args.finetuned, "--finetuned").items():
            finetuned[task] = score(ckpt)[task]
        acc = score(args.model)
    result: dict[str, object] = {
        "model": args.model,
        "split": args.split,
        "accuracy": acc,
        "mean_accuracy": float(np.mean(list(acc.values()))),
    }
    if finetuned and set(acc) <= set(finetuned):
        result["finetuned_accuracy"] = finetuned
        result["normalized_accuracy"] = normalized_accuracy(acc, finetuned)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    table = Table(title=f"{args.model} ({args.split})")
    for name in ("task", "accuracy", "fine-tuned", "normalized"):
        table.add_column(name, justify="right")
    for t, a in acc.items():
        f = finetuned.get(t)
        table.add_row(
            t, f"{a:.3f}", "-" if f is None else f"{f:.3f}", "-" if f is None else f"{a / f:.3f}"
        )
    Console(width=None if sys.stdout.isatty() else 120).print(table)
    if "normalized_accuracy" in result:
        print(
            f"mean accuracy {result['mean_accuracy']:.3f}, "
            f"normalized accuracy {result['normalized_accuracy']:.3f}"
        )
    return 0


def _add_reproduce_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "reproduce",
        help="run the whole study (zoo, sweep, figures, report) on the embedded default",
    )
    p.add_argument("--quick", action="store_true", help="a sample of subsets (minutes)")
    p.add_argument("--config", type=Path, default=None, help="YAML study config (configs/)")
    p.add_argument("--out", type=Path, default=Path("results"), help="results directory")
    p.add_argument("--cache", type=Path, default=None, help="zoo / pool cache directory")
    p.add_argument("--reset", action="store_true", help="discard an existing results database")
    p.add_argument("--max-runs", type=int, default=None, help="stop after this many runs")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="single-threaded processes for the zoo and the sweep (default: cores for "
        "tiny-vit, 1 for hf-clip)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: cores)")


def _reproduce(args: argparse.Namespace) -> int:
    import torch

    from rmtllmf.reproduce import load_config, quick_config, reproduce

    if args.quick and args.config is not None:
        raise InputError("--quick runs the embedded default; drop --config or --quick")
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    cfg = (
        load_config(args.config)
        if args.config is not None
        else quick_config()
        if args.quick
        else None
    )
    if cfg is None:
        from rmtllmf.reproduce import ReproduceConfig

        cfg = ReproduceConfig()
    workers = args.workers or ((os.cpu_count() or 1) if cfg.family == "tiny-vit" else 1)
    summary = reproduce(
        cfg,
        args.out,
        cache=args.cache or default_cache(),
        reset=args.reset,
        max_runs=args.max_runs,
        workers=workers,
    )
    console = Console(width=None if sys.stdout.isatty() else 120)
    table = Table(title=f"Normalized accuracy at N = {summary['n_tasks']} ({args.out})")
    for name in ("link", "scenario", "none", "freeze", "realign", "R-MTLLMF"):
        table.add_column(name, justify="right")
    for link, by_s in summary["by_link"].items():
        for scenario, d in by_s.items():
            table.add_row(
                link,
                scenario,
                *(
                    f"{d.get(k, float('nan')):.3f}"
                    for k in ("none", "freeze", "realign", "r-mtllmf")
                ),
            )
    console.print(table)
    console.print(
        f"clean {summary['clean']:.3f}, clean + realign {summary['clean_realign']:.3f}; "
        f"floors: base {summary['base']:.3f}, base + realign {summary['base_realign']:.3f}, "
        f"chance {summary['chance']:.3f}; report: {args.out / 'report.md'}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="rmtllmf", description="Resilient multi-task model fusion over jammed MIMO uplinks."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_channel_parser(sub)
    _add_merge_parser(sub)
    _add_zoo_parser(sub)
    _add_finetune_parser(sub)
    _add_evaluate_parser(sub)
    _add_reproduce_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rmtllmf`` console script."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "channel":
            return _channel(args)
        if args.command == "merge":
            return _merge(args)
        if args.command == "zoo":
            return _zoo(args)
        if args.command == "finetune":
            return _finetune(args)
        if args.command == "evaluate":
            return _evaluate(args)
        if args.command == "reproduce":
            return _reproduce(args)
    except (RmtllmfError, ValueError) as exc:
        print(f"rmtllmf: error: {exc}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
