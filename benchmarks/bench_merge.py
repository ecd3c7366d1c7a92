"""Task-arithmetic merge of 8 CLIP ViT-B/16-sized models: rmtllmf vs FusionBench vs mergekit,
against the machine's memory-bandwidth bound, measured in one run.

Models: a CLIPVisionModel ViT-B/16 state dict (85.8M parameters in float32, or bfloat16 with
``--dtype bfloat16``, random weights made here) plus 8 fine-tuned copies (base + small noise), each
an HF directory (config.json + model.safetensors). Every contender runs ``--repeats`` times, each
in a fresh subprocess on warm page cache after ``--warmup`` untimed runs (in a full run here the
first run of rmtllmf, its numpy path and FusionBench was each one's slowest), in rounds that run
each contender once, the first of them rotating (``--order sequential``: each contender's runs one
after the other), and reports its best and median merge wall time (imports excluded) and peak
resident memory (VmHWM, which counts the pages of memory-mapped files while they are mapped), and,
per run, the page faults during the merge (those that read the disk apart: a file that fell out of
the page cache makes a run slow for reasons the merge does not own), its user and system CPU
seconds, and the steal time of the machine's CPUs meanwhile (time a hypervisor gave to other
guests: on the VMs here slow runs of rmtllmf's kernel spend their extra time in the system, not in
their sums), and, right after each run, the time one thread takes to write the output's bytes into
a fresh file (the write half of the merge on its own; see :func:`fresh_write_seconds`). The inputs
are read again before every run: the VMs here run a DAMON scheme (kdamond) that pages out file
pages no process maps once they have gone unread for about a minute, with no memory pressure, and
how much of the inputs it took is reported per run:

* rmtllmf: ``merge_checkpoints`` (linear merges run the compiled kernel: inputs memory-mapped and
  read in place, sums in registers, ``pwrite``);
* rmtllmf-numpy: the same call with ``RMTLLMF_NO_KERNEL=1``, the path taken where no C compiler
  was found at install (blocked ``pread``, one BLAS product per block, ``pwrite``);
* FusionBench: its state-dict arithmetic (``state_dict_sub/add/mul``, the body of
  ``task_arithmetic_merge``) on state dicts loaded with safetensors, then saved;
* mergekit: ``run_merge`` with ``merge_method: task_arithmetic`` (architecture inferred);
* memory-floor: not a merge between files but its floor, ``benchmarks/kernel_floor.c`` built
  here with a C compiler: the kernel's own sums over the same number of inputs and elements held
  in the process's own memory (filled before the clock starts), output copied into memory, on as
  many threads as rmtllmf merges with. No merge between files can beat it at the same moment, so
  next to the bound it tells the machine's share of a merge's time from the file path's (page
  cache, faults, maps, the file system's writes); each round's rmtllmf run is reported as a ratio
  to the floor run of the same round.

Bound = (bytes read + bytes written) / copy bandwidth, where the bandwidth is the best of three
1 GiB ``numpy.copyto`` runs counting read + written bytes, made by one thread and by as many
threads as rmtllmf merges with (``min(4, cpus)``), measured once at the start and again
just before every run: the machine's bandwidth drifts with load over minutes, so each run is
also reported as a ratio to the bound measured next to it (best and median of those ratios).

    python benchmarks/bench_merge.py [--models 8] [--repeats 3] [--warmup 1] [--workdir DIR]
                                     [--json out.json] [--order interleaved|sequential]
                                     [--contenders rmtllmf fusion_bench ...] [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import ctypes
import itertools
import json
import mmap
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

if TYPE_CHECKING:
    import torch

SCALING = 0.3
ITEMSIZE = {"float32": 4, "bfloat16": 2}
FLOOR = "memory-floor"
REPO = Path(__file__).resolve().parents[1]


def vit_b16_vision_config(**extra: Any) -> Any:
    """``CLIPVisionConfig`` with the vision tower of ``openai/clip-vit-base-patch16`` (ViT-B/16 at
    224x224, 85.8M parameters), shared by the benchmarks that build it."""
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        image_size=224,
        patch_size=16,
        **extra,
    )


def make_models(root: Path, n_models: int, dtype: str = "float32") -> tuple[Path, list[Path], int]:
    """Base + fine-tuned CLIPVisionModel ViT-B/16 checkpoints with the installed transformers'
    own key names (built on the meta device, so only the layout is taken from it), stored in
    ``dtype``."""
    import torch
    from safetensors.torch import save_file
    from transformers import CLIPVisionModel

    config: Any = vit_b16_vision_config()
    config.architectures = ["CLIPVisionModel"]
    with torch.device("meta"):
        layout = [
            (k, tuple(v.shape))
            for k, v in CLIPVisionModel(config).state_dict().items()
            if v.is_floating_point()
        ]
    gen = torch.Generator().manual_seed(0)
    base = {name: torch.randn(shape, generator=gen) * 0.02 for name, shape in layout}
    dirs = []
    for i in range(n_models + 1):
        d = root / ("base" if i == 0 else f"ft{i}")
        d.mkdir(parents=True, exist_ok=True)
        config.save_pretrained(d)
        tensors = (
            base
            if i == 0
            else {k: v + 1e-3 * torch.randn(v.shape, generator=gen) for k, v in base.items()}
        )
        save_file(
            {k: v.to(getattr(torch, dtype)) for k, v in tensors.items()}, d / "model.safetensors"
        )
        dirs.append(d)
    n_params = sum(int(np.prod(s)) for _, s in layout)
    return dirs[0], dirs[1:], n_params


RMTLLMF = """
from rmtllmf.fusion import MergeConfig, merge_checkpoints
from rmtllmf.fusion.fast import kernel
extra = {"kernel": kernel.KERNEL is not None}
start()
merge_checkpoints(base, fts, out / "merged.safetensors", MergeConfig(scaling=SCALING))
stop()
"""

RUNNERS = {
    "rmtllmf": RMTLLMF,
    "rmtllmf-numpy": 'import os\nos.environ["RMTLLMF_NO_KERNEL"] = "1"\n' + RMTLLMF,
    "fusion_bench": """
from safetensors.torch import load_file, save_file
from fusion_bench.utils.state_dict_arithmetic import state_dict_add, state_dict_mul, state_dict_sub
start()
pre = load_file(base / "model.safetensors")
tv = None
for f in fts:
    d = state_dict_sub(load_file(f / "model.safetensors"), pre)
    tv = d if tv is None else state_dict_add(tv, d)
merged = state_dict_add(pre, state_dict_mul(tv, SCALING))
save_file(merged, out / "merged.safetensors")
stop()
""",
    "mergekit": """
import logging
logging.disable(logging.WARNING)
from mergekit.config import MergeConfiguration
from mergekit.merge import MergeOptions, run_merge
cfg = MergeConfiguration.model_validate({
    "merge_method": "task_arithmetic", "base_model": str(base), "dtype": DTYPE,
    "models": [{"model": str(f), "parameters": {"weight": SCALING}} for f in fts],
})
start()
run_merge(cfg, str(out / "mk"), options=MergeOptions(copy_tokenizer=False, lazy_unpickle=True))
stop()
""",
    FLOOR: """
import ctypes
lib = ctypes.CDLL(FLOOR_LIB)
lib.rmt_floor_prepare.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int]
rc = lib.rmt_floor_prepare(len(fts) + 1, ELEMENTS, KERNEL_DTYPE)
if rc:
    raise OSError(-rc, "rmt_floor_prepare: " + os.strerror(-rc))
start()
rc = lib.rmt_floor_run(THREADS)
stop()
if rc:
    raise OSError(-rc, "rmt_floor_run: " + os.strerror(-rc))
""",
}

CHILD = """
import json, os, resource, sys, time
from pathlib import Path
SCALING = {scaling}
DTYPE = {dtype!r}
KERNEL_DTYPE = {kernel_dtype}
ELEMENTS = {elements}
THREADS = {threads}
FLOOR_LIB = {floor_lib!r}
base = Path({base!r}); fts = [Path(p) for p in {fts!r}]; out = Path({out!r})
marks = []
def steal():
    try:
        with open("/proc/stat") as stat:
            return int(stat.readline().split()[8])
    except (OSError, IndexError, ValueError):
        return 0
def start():
    marks.append((time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF), steal()))
def stop():
    start()
{body}
(t0, r0, s0), (t1, r1, s1) = marks
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
extra = globals().get("extra", {{}})
print(json.dumps({{
    "seconds": t1 - t0, "peak_rss_gib": hwm / 2**20,
    "faults": r1.ru_minflt - r0.ru_minflt, "disk_reads": r1.ru_majflt - r0.ru_majflt,
    "user": r1.ru_utime - r0.ru_utime, "system": r1.ru_stime - r0.ru_stime,
    "steal": (s1 - s0) / os.sysconf("SC_CLK_TCK"), **extra
}}))
"""


def page_cache_bytes(path: Path) -> int:
    """Bytes of ``path`` held in the page cache (``mincore`` over a read-only map of it)."""
    libc = ctypes.CDLL(None, use_errno=True)
    with open(path, "rb") as handle:
        mapped = mmap.mmap(handle.fileno(), 0, prot=mmap.PROT_READ)
    try:
        view = np.frombuffer(mapped, dtype=np.uint8)
        pages = np.zeros(-(-len(mapped) // mmap.PAGESIZE), dtype=np.uint8)
        rc = libc.mincore(
            ctypes.c_void_p(view.ctypes.data),
            ctypes.c_size_t(len(mapped)),
            ctypes.c_void_p(pages.ctypes.data),
        )
        del view  # it holds the map open
        if rc != 0:
            raise OSError(ctypes.get_errno(), f"mincore of {path}")
        return min(int((pages & 1).sum()) * mmap.PAGESIZE, len(mapped))
    finally:
        mapped.close()


def warm(files: list[Path]) -> int:
    """Read ``files`` into the page cache (through one reused buffer: no fresh memory); returns
    how many of their bytes were not there before."""
    missing = sum(f.stat().st_size - page_cache_bytes(f) for f in files)
    buffer = bytearray(1 << 24)
    for f in files:
        with open(f, "rb", buffering=0) as handle:
            while handle.readinto(buffer):
                pass
    return missing


def fresh_write_seconds(folder: Path, size: int) -> float:
    """Seconds one thread takes to write ``size`` bytes into a new file in ``folder`` (given its
    size first, as rmtllmf does), from a 256 KiB buffer that stays in cache, with ``pwrite``: the
    write half of a merge on its own (buffered writes to one file are serialized by the file's
    lock on ext4, so more threads would not write faster). Measured right after each run, in this
    process: on the VMs here it took 0.07-0.10 s after the runs of FusionBench and mergekit,
    whose processes had just freed gigabytes of memory that the new page cache could reuse, and
    0.17-0.39 s after those of rmtllmf and its numpy path, which free little. Our reading, not
    proven: writing into memory the guest has handed back to the host (free page reporting) is
    that slow, and the merge's own writes pay it too in its slow runs, whose extra time is
    system time."""
    block = bytes(range(256)) * 1024
    path = folder / "fresh_write.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        start = time.perf_counter()
        os.posix_fallocate(fd, 0, size)
        for offset in range(0, size, len(block)):
            os.pwrite(fd, block[: size - offset], offset)
        return time.perf_counter() - start
    finally:
        os.close(fd)
        path.unlink()


@dataclass(frozen=True)
class Workload:
    """What every contender merges: ``base`` and ``fts`` (HF directories) of ``elements``
    parameters in ``dtype``, on ``threads`` threads (as many as rmtllmf merges with), and the
    built floor library (``None`` where it could not be built)."""

    base: Path
    fts: list[Path]
    dtype: str
    elements: int
    threads: int
    floor_lib: Path | None

    @property
    def inputs(self) -> list[Path]:
        return [d / "model.safetensors" for d in [self.base, *self.fts]]


def child_code(name: str, work: Workload, out: Path) -> str:
    """The program one fresh process runs to time contender ``name`` once."""
    from rmtllmf.fusion.fast.kernel import DTYPE_CODES

    return CHILD.format(
        scaling=SCALING,
        dtype=work.dtype,
        kernel_dtype=DTYPE_CODES[work.dtype],
        elements=work.elements,
        threads=work.threads,
        floor_lib=str(work.floor_lib),
        base=str(work.base),
        fts=[str(f) for f in work.fts],
        out=str(out),
        body=RUNNERS[name],
    )


def build_floor(folder: Path) -> tuple[Path | None, str]:
    """``benchmarks/kernel_floor.c`` built into ``folder`` with the kernel's own flags
    (``setup.py``; ``$CC`` or ``cc``): the library, or ``None`` and the compiler's reason."""
    lib = folder / "kernel_floor.so"
    compiler = shlex.split(os.environ.get("CC", "cc"))
    command = [
        *compiler,
        "-O2",
        "-ffp-contract=off",
        "-pthread",
        "-shared",
        "-fPIC",
        "-I",
        str(REPO / "src" / "rmtllmf" / "fusion" / "fast"),
        str(REPO / "benchmarks" / "kernel_floor.c"),
        "-o",
        str(lib),
        "-lm",
    ]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError as exc:
        return None, f"no C compiler ({exc})"
    if proc.returncode != 0:
        return None, (proc.stderr.strip().splitlines() or ["compiler failed"])[-1][:300]
    return lib, ""


def run_once(code: str, inputs: list[Path], out: Path, bound: CopyBound) -> dict[str, object]:
    """One fresh-process run: the inputs read back into the page cache and the bound measured
    just before it, the write of the output's bytes into a fresh file just after it. Returns
    the child's report with those added, or ``{"error": reason}``."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    os.sync()  # no writeback of earlier files (models, last output) during the run
    missing = warm(inputs) / 2**20
    bound_now = bound.seconds()
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        reason = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return {"error": reason[:300]}
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    result.update(
        evicted_mib=missing,
        bound_seconds=bound_now,
        process_seconds=wall,
        fresh_write_seconds=fresh_write_seconds(out, inputs[0].stat().st_size),
    )
    return result


def summarize(runs: list[dict[str, object]], warmup_seconds: list[float]) -> dict[str, object]:
    """A contender's report from its timed runs: best and median merge seconds, each run's ratio
    to the bound measured just before it (the machine's bandwidth drifts with load over
    minutes), the largest peak RSS and process wall time, and the per-run diagnostics."""

    def each(key: str) -> list[float]:
        return [cast(float, r[key]) for r in runs]

    seconds = each("seconds")
    per_run = {"seconds", "peak_rss_gib", "faults", "disk_reads", "user", "system", "steal"}
    per_run |= {"evicted_mib", "bound_seconds", "process_seconds", "fresh_write_seconds"}
    return {
        **{k: v for k, v in runs[-1].items() if k not in per_run},
        "paired_bound_ratios": [t / b for t, b in zip(seconds, each("bound_seconds"), strict=True)],
        "seconds": min(seconds),
        "median_seconds": float(np.median(seconds)),
        "all_seconds": seconds,
        "all_page_faults": [int(f) for f in each("faults")],
        "all_disk_reads": [int(f) for f in each("disk_reads")],
        "all_user_system_seconds": list(zip(each("user"), each("system"), strict=True)),
        "all_steal_seconds": each("steal"),
        "fresh_write_seconds_after_runs": each("fresh_write_seconds"),
        "evicted_mib_before_runs": each("evicted_mib"),
        "warmup_seconds": warmup_seconds,
        "peak_rss_gib": max(each("peak_rss_gib")),
        "process_seconds": max(each("process_seconds")),
    }


def run_contenders(
    contenders: list[str],
    work: Workload,
    outs: dict[str, Path],
    repeats: int,
    bound: CopyBound,
    warmup: int = 1,
    interleave: bool = True,
) -> dict[str, dict[str, object]]:
    """``warmup`` untimed and ``repeats`` timed fresh-process runs of every contender, each a
    :func:`run_once`. Interleaved (the default), every round runs each contender once, the
    first of them rotating from round to round, so that all of them meet the same phases of a
    machine whose speed drifts (on the VMs here slow phases lasted minutes, and with the
    contenders run one after the other the first one met the one after the models were written
    in several runs); otherwise each contender's runs come one after the other."""
    codes = {name: child_code(name, work, outs[name]) for name in contenders}
    runs: dict[str, list[dict[str, object]]] = {name: [] for name in contenders}
    warmups: dict[str, list[float]] = {name: [] for name in contenders}
    errors: dict[str, dict[str, object]] = {}
    rounds = range(warmup + repeats)
    n = len(contenders)
    if interleave:
        schedule = [(r, contenders[(r + i) % n]) for r in rounds for i in range(n)]
    else:
        schedule = [(r, name) for name in contenders for r in rounds]
    for r, name in schedule:
        if name in errors:
            continue
        result = run_once(codes[name], work.inputs, outs[name], bound)
        if "error" in result:
            errors[name] = result
        elif r < warmup:
            warmups[name].append(cast(float, result["seconds"]))
        else:
            runs[name].append(result)
    return {name: errors.get(name) or summarize(runs[name], warmups[name]) for name in contenders}


class CopyBound:
    """The bandwidth bound ``traffic / copy bandwidth``. The bandwidth is the best of three 1 GiB
    ``numpy.copyto`` runs, counting read + written bytes, each run made both by one thread and by
    ``threads`` threads copying one slice each (numpy releases the GIL), the highest figure
    taken: a merge that runs on several cores is held to what those cores can copy (on 2 cores
    here, two threads copy about twice as fast as one)."""

    def __init__(self, traffic_bytes: int, threads: int) -> None:
        self.traffic = traffic_bytes
        self.threads = threads
        self.src = np.ones(1 << 28, dtype=np.float32)
        self.dst = np.empty_like(self.src)
        cuts = np.linspace(0, self.src.size, threads + 1).astype(int)
        self.slices = [slice(int(a), int(b)) for a, b in itertools.pairwise(cuts)]
        self.pool = ThreadPoolExecutor(threads)
        self.last: dict[int, float] = {}

    def _copy(self, part: slice) -> None:
        np.copyto(self.dst[part], self.src[part])

    def bandwidth(self) -> float:
        best = {1: np.inf, self.threads: np.inf}
        for _ in range(3):
            for threads in best:
                t = time.perf_counter()
                if threads == 1:
                    np.copyto(self.dst, self.src)
                else:
                    list(self.pool.map(self._copy, self.slices))
                best[threads] = min(best[threads], time.perf_counter() - t)
        self.last = {threads: 2 * self.src.nbytes / t for threads, t in best.items()}
        return max(self.last.values())

    def seconds(self) -> float:
        return self.traffic / self.bandwidth()


def read_bandwidth(arrays: list[np.ndarray], threads: int) -> float:
    """Bytes per second at which ``threads`` threads read ``arrays`` (float32; each thread takes
    the max of one slice of every array, numpy's fastest read here; best of three)."""
    cuts = [np.linspace(0, a.size, threads + 1).astype(int) for a in arrays]

    def read(part: int) -> None:
        for a, c in zip(arrays, cuts, strict=True):
            a[c[part] : c[part + 1]].max()

    best = np.inf
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(3):
            t = time.perf_counter()
            list(pool.map(read, range(threads)))
            best = min(best, time.perf_counter() - t)
    return sum(a.nbytes for a in arrays) / best


def page_cache_read_bandwidth(files: list[Path], threads: int) -> float:
    """:func:`read_bandwidth` of the inputs where they lie in the page cache (memory-mapped).
    Not part of the bound: next to the same reads of the bound's own memory it tells a machine
    whose page cache is slow to read (every contender slow) from a slow merge. The time to read
    every input once at this rate is a floor for any merge here, before a byte is written: on
    these VMs a core reads at most about 10 GB/s however the loads are prefetched, while the
    copy that sets the bound also writes with non-temporal stores, so the bound counts 2-thread
    traffic (up to 30 GB/s seen) that reads alone do not reach (20-23 GB/s in a C loop over 9
    streams)."""
    import mmap

    maps = []
    for f in files:
        with open(f, "rb") as handle:
            maps.append(mmap.mmap(handle.fileno(), 0, prot=mmap.PROT_READ))
    arrays = [np.frombuffer(m, dtype=np.float32, count=len(m) // 4) for m in maps]
    try:
        return read_bandwidth(arrays, threads)
    finally:
        arrays.clear()  # the arrays hold the maps open
        for m in maps:
            m.close()


def check_agreement(outs: dict[str, Path]) -> dict[str, float]:
    from safetensors.torch import load_file

    if not (outs["rmtllmf"] / "merged.safetensors").exists():
        return {}
    ours = load_file(outs["rmtllmf"] / "merged.safetensors")
    diffs = {}
    for name, path in outs.items():
        if name in ("rmtllmf", FLOOR):
            continue
        files = sorted(path.rglob("*.safetensors"))
        peer: dict[str, torch.Tensor] = {}
        for f in files:
            peer.update(load_file(f))
        common = [k for k in ours if k in peer]
        if len(common) != len(ours):
            diffs[name + "_missing_tensors"] = float(len(ours) - len(common))
        if common:
            diffs[name] = max(float((ours[k] - peer[k]).abs().max()) for k in common)
    return diffs


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--models", type=int, default=8)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--repeats", type=int, default=3, help="fresh-process runs per contender")
    parser.add_argument(
        "--warmup",
        type=int,
        default=1,
        help="untimed fresh-process runs per contender before those (reported apart)",
    )
    parser.add_argument("--json", default=None)
    parser.add_argument(
        "--order",
        choices=["interleaved", "sequential"],
        default="interleaved",
        help="interleaved: each round runs every contender once, the first rotating; "
        "sequential: each contender's runs one after the other",
    )
    parser.add_argument(
        "--dtype",
        choices=["float32", "bfloat16"],
        default="float32",
        help="storage dtype of the checkpoints (bfloat16: how large language models are stored)",
    )
    parser.add_argument(
        "--contenders",
        nargs="+",
        choices=list(RUNNERS),
        default=list(RUNNERS),
        help="which merges to run (default: all; rmtllmf is always run)",
    )
    args = parser.parse_args()
    if args.repeats < 1 or args.warmup < 0:
        parser.error("give --repeats 1 or more and --warmup 0 or more")
    contenders = ["rmtllmf", *(c for c in RUNNERS if c in args.contenders and c != "rmtllmf")]
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        root = Path(tmp)
        base, fts, n_params = make_models(root / "models", args.models, args.dtype)
        os.sync()
        warm([f / "model.safetensors" for f in [base, *fts]])
        size = ITEMSIZE[args.dtype] * n_params
        threads = min(4, os.cpu_count() or 1)  # as many as merge_checkpoints runs
        copy_bound = CopyBound((args.models + 1) * size + size, threads)
        bandwidth = copy_bound.bandwidth()
        bound = copy_bound.traffic / bandwidth
        by_threads = ", ".join(
            f"{t} thread{'s' * (t > 1)} {b / 1e9:.1f}" for t, b in copy_bound.last.items()
        )
        report: dict[str, object] = {
            "models": args.models,
            "parameters": n_params,
            "dtype": args.dtype,
            "copy_bandwidth_gbs": bandwidth / 1e9,
            "copy_bandwidth_gbs_by_threads": {t: b / 1e9 for t, b in copy_bound.last.items()},
            "bound_seconds": bound,
            "cpus": os.cpu_count(),
        }
        print(
            f"{args.models} models x {n_params / 1e6:.1f}M {args.dtype}; copy bandwidth "
            f"{bandwidth / 1e9:.1f} GB/s ({by_threads}) -> bound {bound:.2f} s"
        )
        read = page_cache_read_bandwidth([f / "model.safetensors" for f in [base, *fts]], threads)
        read_own = read_bandwidth([copy_bound.src], threads)
        report["read_gbs"] = {"inputs_page_cache": read / 1e9, "bound_memory": read_own / 1e9}
        read_floor = (args.models + 1) * size / read
        report["input_read_seconds"] = read_floor
        print(
            f"reads by {threads} threads: the inputs' page cache {read / 1e9:.1f} GB/s, the "
            f"bound's memory {read_own / 1e9:.1f} GB/s (the same code); reading the inputs "
            f"once at that rate, with nothing written: {read_floor:.2f} s = "
            f"{read_floor / bound:.2f}x the bound"
        )
        floor_lib, floor_error = build_floor(root) if FLOOR in contenders else (None, "")
        if floor_lib is None and FLOOR in contenders:
            contenders.remove(FLOOR)
            report[FLOOR] = {"error": f"not built: {floor_error}"}
            print(f"{FLOOR:>13}: not run (not built: {floor_error})")
        work = Workload(base, fts, args.dtype, n_params, threads, floor_lib)
        outs = {name: root / f"out_{name}" for name in contenders}
        results = run_contenders(
            contenders,
            work,
            outs,
            args.repeats,
            copy_bound,
            args.warmup,
            interleave=args.order == "interleaved",
        )
        report["order"] = args.order
        for name in contenders:
            res = results[name]
            report[name] = res
            if "error" in res:
                print(f"{name:>13}: not run ({res['error']})")
            else:
                secs = cast(float, res["seconds"])
                median = cast(float, res["median_seconds"])
                print(
                    f"{name:>13}: {secs:6.2f} s merge ({secs / bound:4.2f}x bound; median "
                    f"{median:.2f} s = {median / bound:.2f}x), "
                    f"process {cast(float, res['process_seconds']):5.1f} s, "
                    f"peak RSS {cast(float, res['peak_rss_gib']):.2f} GiB"
                )
                paired = cast(list[float], res["paired_bound_ratios"])
                print(
                    f"{'':>13}  each run / the bound measured just before it: best "
                    f"{min(paired):.2f}x, median {float(np.median(paired)):.2f}x; page faults "
                    f"{res['all_page_faults']}, of which disk reads {res['all_disk_reads']}"
                )
                cpu = cast(list[tuple[float, float]], res["all_user_system_seconds"])
                shown = ", ".join(f"{u:.2f}+{k:.2f}" for u, k in cpu)
                steals = ", ".join(f"{t:.2f}" for t in cast(list[float], res["all_steal_seconds"]))
                print(
                    f"{'':>13}  CPU of each run, user+system: [{shown}] s; time the host ran "
                    f"other work on this machine's CPUs meanwhile (steal): [{steals}] s"
                )
                writes = cast(list[float], res["fresh_write_seconds_after_runs"])
                print(
                    f"{'':>13}  writing the output's bytes into a fresh file right after each run "
                    f"(1 thread, pwrite): [{', '.join(f'{w:.3f}' for w in writes)}] s"
                )
                mibs = cast(list[float], res["evicted_mib_before_runs"])
                evicted = ", ".join(f"{m:.0f}" for m in mibs)
                print(f"{'':>13}  inputs evicted before each run, read back: [{evicted}] MiB")
                warmups = cast(list[float], res["warmup_seconds"])
                if warmups:
                    shown = ", ".join(f"{w:.2f}" for w in warmups)
                    print(f"{'':>13}  untimed warm-up runs: {shown} s")
        ours = report["rmtllmf"]
        if isinstance(ours, dict) and "seconds" in ours:
            print(f"rmtllmf's compiled kernel loaded: {ours.get('kernel')}")
            for name in contenders:
                peer = report[name]
                if name not in ("rmtllmf", FLOOR) and isinstance(peer, dict) and "seconds" in peer:
                    print(
                        f"{name:>13} / rmtllmf: {peer['seconds'] / ours['seconds']:.2f}x best, "
                        f"{peer['median_seconds'] / ours['median_seconds']:.2f}x median"
                    )
            floor = report.get(FLOOR)
            if isinstance(floor, dict) and "seconds" in floor:
                rounds = [
                    a / b
                    for a, b in zip(
                        cast(list[float], ours["all_seconds"]),
                        cast(list[float], floor["all_seconds"]),
                        strict=True,
                    )
                ]
                report["rmtllmf_over_floor_by_round"] = rounds
                print(
                    f"rmtllmf / {FLOOR}, round by round: "
                    f"[{', '.join(f'{r:.2f}' for r in rounds)}]; the floor's best is "
                    f"{floor['seconds'] / bound:.2f}x the bound"
                )
        report["max_abs_difference_vs_rmtllmf"] = check_agreement(outs)
        print("max |difference| vs rmtllmf:", report["max_abs_difference_vs_rmtllmf"])
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
