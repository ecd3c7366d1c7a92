"""``rmtllmf merge`` against ``mergekit-yaml`` as whole processes, as a user runs them: start,
imports, merge of 8 CLIP ViT-B/16-sized checkpoints (85.8M parameters each, float32, task
arithmetic, lambda 0.3), output directory written, exit. Timed by ``hyperfine`` in one run
(contenders interleaved in its rounds, after warm-up runs that also bring the inputs into the
page cache).

    python benchmarks/bench_merge_cli.py [--runs 10] [--warmup 2] [--workdir DIR]
                                         [--baseline-src SRC] [--json OUT.json]

``--baseline-src`` adds ``rmtllmf merge`` run from another checkout's ``src/`` (``PYTHONPATH``),
for a before / after comparison in the same hyperfine run. Needs ``hyperfine`` (``apt-get
install hyperfine``) and ``mergekit`` (``pip install mergekit``).
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

sys.path.insert(0, str(Path(__file__).parent))
from bench_merge import SCALING, make_models


def commands(base: Path, fts: list[Path], out: Path, baseline: Path | None) -> dict[str, str]:
    """The shell command of each contender (each writes its own output directory)."""
    models = " ".join(shlex.quote(str(f)) for f in fts)
    rmtllmf = shutil.which("rmtllmf") or f"{sys.executable} -m rmtllmf"

    def ours(name: str) -> str:
        return (
            f"{rmtllmf} merge --base {shlex.quote(str(base))} --models {models} "
            f"--lambda {SCALING} --out {shlex.quote(str(out / name))} --force"
        )

    config = out / "mergekit.yml"
    config.write_text(
        json.dumps(
            {
                "merge_method": "task_arithmetic",
                "base_model": str(base),
                "models": [{"model": str(f), "parameters": {"weight": SCALING}} for f in fts],
                "dtype": "float32",
            }
        )
    )
    found = {
        "rmtllmf": ours("rmtllmf"),
        "mergekit": f"mergekit-yaml {shlex.quote(str(config))} {shlex.quote(str(out / 'mk'))} "
        "--quiet --no-copy-tokenizer",
    }
    if baseline is not None:
        found["rmtllmf-baseline"] = f"PYTHONPATH={shlex.quote(str(baseline))} " + ours("baseline")
    return found


def outputs_agree(out: Path) -> float:
    """The largest difference between rmtllmf's and mergekit's merged weights."""
    ours = load_file(str(out / "rmtllmf" / "model.safetensors"))
    shards = sorted((out / "mk").glob("*.safetensors"))
    theirs: dict[str, np.ndarray] = {}
    for shard in shards:
        theirs.update(load_file(str(shard)))
    common = [k for k in ours if k in theirs]
    if not common:
        raise SystemExit("the two outputs share no tensor name; compare them by hand")
    return max(float(np.abs(ours[k] - theirs[k]).max()) for k in common)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--models", type=int, default=8)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--baseline-src", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    for tool in ("hyperfine", "mergekit-yaml"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed (apt-get install hyperfine; pip install mergekit)")
    root = args.workdir or Path(tempfile.mkdtemp(prefix="bench-merge-cli-"))
    if not (root / "base" / "model.safetensors").exists():
        make_models(root, args.models)
    base, fts = root / "base", [root / f"ft{i}" for i in range(1, args.models + 1)]
    out = root / "out"
    out.mkdir(exist_ok=True)
    cmds = commands(base, fts, out, args.baseline_src)
    export = out / "hyperfine.json"
    argv = ["hyperfine", "--warmup", str(args.warmup), "--runs", str(args.runs)]
    argv += ["--export-json", str(export)]
    for name, cmd in cmds.items():
        argv += ["-n", name, cmd]
    subprocess.run(argv, check=True)
    results = {r["command"]: r for r in json.loads(export.read_text())["results"]}
    summary = {
        name: {k: round(r[k], 3) for k in ("mean", "stddev", "median", "min", "max")}
        for name, r in results.items()
    }
    ratio = results["mergekit"]["mean"] / results["rmtllmf"]["mean"]
    report = {
        "seconds": summary,
        "mergekit_over_rmtllmf_mean": round(ratio, 2),
        "mergekit_over_rmtllmf_median": round(
            results["mergekit"]["median"] / results["rmtllmf"]["median"], 2
        ),
        "max_abs_difference": outputs_agree(out),
        "commands": cmds,
    }
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
