"""Hugging Face model directories out: what ``from_pretrained`` loads as it is.

A model written for a Hugging Face base (a directory with ``config.json``) is a directory with

* the weights under the base's own key names, as ``model.safetensors``, or, above the maximum
  shard size, as ``model-00001-of-0000N.safetensors`` shards with a
  ``model.safetensors.index.json`` (``{"metadata": {"total_size", "total_parameters"},
  "weight_map": {key: shard}}``, the format transformers writes and reads);
* ``config.json`` and the tokenizer, processor, generation and chat-template files carried over
  from the base (every top-level file of the base directory that is not weights, an index, a
  model card, trainer state or a hidden file), ``config.json``'s ``dtype`` set to the weights'
  when they were cast;
* whatever records the caller adds (``extra_files``: the merge's resolved config).

The directory is written into a temporary directory beside the target and renamed into place
(:func:`rmtllmf._io.atomic_directory`): a failed or interrupted write leaves nothing, and an
older directory at the target stays until the new one is complete.

:func:`write_hf_directory` takes a callback that writes one shard's keys to a path, so a
streaming merge writes each shard without holding the model; :func:`save_hf_directory` does the
same for an in-memory state dict (fine-tuned or defended models). :func:`output_kind` checks an
output path before any work. Nothing here imports transformers.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from safetensors import safe_open

from rmtllmf._io import atomic_directory, check_output_dir_owner
from rmtllmf._lazy import lazy_module
from rmtllmf.errors import CheckpointError, InputError
from rmtllmf.fusion.safetensors_format import DtypeLike, dtype_name

if TYPE_CHECKING:
    import torch
else:
    torch = lazy_module("torch")

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
DEFAULT_MAX_SHARD_SIZE = "5GB"
"""transformers' ``save_pretrained`` default since 4.47 (the Hub's recommended shard size)."""

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
)
"""Files of a tokenizer; any one of them means the base has one."""
PROCESSOR_FILES = (
    "preprocessor_config.json",
    "processor_config.json",
    "video_preprocessor_config.json",
)
"""Files of an image / audio processor."""

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".msgpack", ".h5", ".gguf")
_NOT_CARRIED = {
    "README.md",  # the base's model card describes the base, not the merge
    "trainer_state.json",
    "adapter_config.json",
    "rmtllmf_merge.json",  # a merged base's own record
}
_NOT_CARRIED_SUFFIXES = (".index.json",)

MODEL_FILE_SUFFIXES = frozenset(
    {
        ".bin",
        ".pt",
        ".pth",
        ".ckpt",
        ".pkl",
        ".pickle",
        ".npz",
        ".npy",
        ".gguf",
        ".h5",
        ".onnx",
        ".msgpack",
        ".json",
        ".yaml",
        ".yml",
        ".txt",
        ".csv",
        ".md",
        ".zip",
        ".tar",
        ".gz",
        ".db",
    }
)
"""Extensions of files that an output path ending in them would be mistaken for: refused as
``--out`` (a directory name with another dot in it, ``llama-3.1-merged``, is fine)."""


def is_hf_model_dir(path: str | Path) -> bool:
    """Whether ``path`` is a directory with a ``config.json`` (a Hugging Face model)."""
    p = Path(path)
    return p.is_dir() and (p / CONFIG_NAME).is_file()


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b|b)?\s*$", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_UNITS |= {"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(size: int | str) -> int:
    """Bytes from ``5GB``, ``500KB``, ``1.5GiB``, ``100B`` or a number of bytes (decimal units
    are powers of 10, ``KiB``/``MiB``/``GiB`` powers of 2, as in transformers' ``max_shard_size``).
    """
    if isinstance(size, int) and not isinstance(size, bool):
        value = size
    else:
        match = _SIZE.match(str(size))
        if match is None:
            raise InputError(
                f"max shard size {size!r} is not a size; write a number with a unit such as "
                "5GB, 500MB, 500KB or 2GiB (--max-shard-size)"
            )
        value = math.floor(float(match.group(1)) * _UNITS[(match.group(2) or "b").lower()])
    if value <= 0:
        raise InputError(f"max shard size {size!r} must be positive (--max-shard-size)")
    return value


Layout: TypeAlias = Sequence[tuple[str, tuple[int, ...], DtypeLike]]
"""``(key, shape, dtype)`` of every tensor of a model, in file order."""


def tensor_bytes(shape: Sequence[int], dtype: DtypeLike) -> int:
    """Bytes of a tensor's data."""
    return math.prod(shape) * dtype.itemsize


def plan_shards(layout: Layout, max_shard_bytes: int) -> list[list[str]]:
    """Keys cut into shards in file order, as transformers does: a tensor opens a new shard
    when it would push a non-empty one past ``max_shard_bytes`` (a tensor larger than that is a
    shard of its own)."""
    shards: list[list[str]] = [[]]
    size = 0
    for key, shape, dtype in layout:
        n = tensor_bytes(shape, dtype)
        if shards[-1] and size + n > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(key)
        size += n
    return shards


def shard_names(n: int) -> list[str]:
    """File names of ``n`` shards: ``model.safetensors`` alone, else transformers' numbering."""
    if n == 1:
        return [WEIGHTS_NAME]
    return [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]


def carried_files(base_dir: str | Path) -> list[Path]:
    """The base directory's files that go with its weights: config, tokenizer, processor,
    generation config, chat template (every top-level regular file that is not weights, an
    index, the model card, trainer state, an adapter config or hidden)."""
    out = []
    for f in sorted(Path(base_dir).iterdir()):
        name = f.name
        if not f.is_file() or name.startswith(".") or name in _NOT_CARRIED:
            continue
        if name.endswith(_WEIGHT_SUFFIXES) or name.endswith(_NOT_CARRIED_SUFFIXES):
            continue
        out.append(f)
    return out


def missing_support(base_dir: str | Path) -> list[str]:
    """What a ``from_pretrained`` user may miss in the base directory: ``config.json`` (the
    model does not load without it), a tokenizer, a processor (either is enough)."""
    p = Path(base_dir)
    missing = [] if (p / CONFIG_NAME).is_file() else [CONFIG_NAME]
    if not any((p / n).is_file() for n in (*TOKENIZER_FILES, *PROCESSOR_FILES)):
        missing.append("tokenizer or processor files (" + ", ".join(TOKENIZER_FILES[:2]) + ", ...)")
    return missing


def check_base_dir(base_dir: str | Path, *, require_tokenizer: bool = False) -> list[str]:
    """Raise :class:`~rmtllmf.errors.CheckpointError` if a directory written from the base
    ``base_dir`` would not load (no ``config.json``), or, with ``require_tokenizer``, would
    have no tokenizer or processor; else return what it lacks (see :func:`missing_support`)."""
    base = Path(base_dir)
    missing = missing_support(base)
    if CONFIG_NAME in missing:
        raise CheckpointError(
            f"the base {base} has no {CONFIG_NAME}, so a model directory written from it would "
            "not load with from_pretrained; copy config.json from the base model's repository "
            "into it, or write a .safetensors file instead (--out)"
        )
    read_config(base)
    if missing and require_tokenizer:
        raise CheckpointError(
            f"the base {base} has no {missing[0]}; save the tokenizer / processor into it "
            "(tokenizer.save_pretrained(base_dir)) so that the output carries them"
        )
    return missing


def read_config(base_dir: str | Path) -> dict[str, Any]:
    """The base directory's ``config.json`` as a mapping; a
    :class:`~rmtllmf.errors.CheckpointError` naming the file when it is not a JSON object
    (``from_pretrained`` would fail on a copy of it)."""
    file = Path(base_dir) / CONFIG_NAME
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(
            f"{file} is not valid JSON ({exc}), so no copy of it would load with "
            "from_pretrained; fix or re-download the base's config.json"
        ) from exc
    if not isinstance(config, dict):
        raise CheckpointError(
            f"{file} holds a JSON {type(config).__name__}, not an object of settings; fix or "
            "re-download the base's config.json"
        )
    return config


def _set_dtype(config: Any, name: str) -> Any:
    """``config`` with every ``dtype`` / ``torch_dtype`` entry (nested configs too) set to
    ``name``."""
    if isinstance(config, dict):
        return {
            k: name if k in ("dtype", "torch_dtype") and v is not None else _set_dtype(v, name)
            for k, v in config.items()
        }
    return config


@dataclass(frozen=True)
class WrittenDirectory:
    """What :func:`write_hf_directory` wrote."""

    path: Path
    shards: tuple[str, ...]
    carried: tuple[str, ...]
    missing: tuple[str, ...] = field(default=())
    """What the base lacked that a user may expect (a tokenizer or processor)."""


ShardWriter = Callable[[Path, Sequence[str]], None]
"""``(path, keys)``: write the tensors ``keys`` (in that order) as one safetensors file."""


def write_hf_directory(
    out: str | Path,
    base_dir: str | Path,
    layout: Layout,
    write_shard: ShardWriter,
    *,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
    extra_files: Mapping[str, str] | None = None,
    dtype: DtypeLike | None = None,
    require_tokenizer: bool = False,
    command: str | None = None,
    force: bool = False,
) -> WrittenDirectory:
    """Write a model directory that ``from_pretrained`` loads (see the module docs).

    ``layout`` is the output's ``(key, shape, dtype)`` in file order; ``write_shard(path, keys)``
    writes each shard (it may raise to abort: nothing is left then). ``dtype``, when the weights
    were cast, is written into ``config.json``. ``require_tokenizer`` turns a base without
    tokenizer or processor files into an error instead of a note in the result. ``command``
    marks the directory as that command's output and keeps what a user added to an earlier one
    (:func:`rmtllmf._io.atomic_directory`; ``force`` lets new files replace the user's).
    """
    base = Path(base_dir)
    missing = check_base_dir(base, require_tokenizer=require_tokenizer)
    max_bytes = parse_size(max_shard_size)
    shards = plan_shards(layout, max_bytes)
    names = shard_names(len(shards))
    carried = carried_files(base)
    sizes = {k: tensor_bytes(shape, dt) for k, shape, dt in layout}
    counts = {k: math.prod(shape) for k, shape, _ in layout}
    try:
        with atomic_directory(out, command, force=force) as tmp:
            for f in carried:
                if f.name == CONFIG_NAME and dtype is not None:
                    config = read_config(f.parent)
                    text = json.dumps(_set_dtype(config, dtype_name(dtype)), indent=2)
                    (tmp / CONFIG_NAME).write_text(text + "\n", encoding="utf-8")
                else:
                    shutil.copyfile(f, tmp / f.name)
            for name, keys in zip(names, shards, strict=True):
                write_shard(tmp / name, keys)
            if len(shards) > 1:
                index = {
                    "metadata": {
                        "total_parameters": sum(counts.values()),
                        "total_size": sum(sizes.values()),
                    },
                    "weight_map": {
                        k: name for name, keys in zip(names, shards, strict=True) for k in keys
                    },
                }
                text = json.dumps(index, indent=2, sort_keys=True) + "\n"
                (tmp / INDEX_NAME).write_text(text, encoding="utf-8")
            for name, text in (extra_files or {}).items():
                (tmp / name).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise CheckpointError(f"cannot write the model directory {out}: {exc}") from exc
    return WrittenDirectory(Path(out), tuple(names), tuple(f.name for f in carried), tuple(missing))


def save_hf_directory(
    state: Mapping[str, torch.Tensor],
    out: str | Path,
    base_dir: str | Path,
    *,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
    extra_files: Mapping[str, str] | None = None,
    dtype: DtypeLike | None = None,
    require_tokenizer: bool = False,
    command: str | None = None,
    force: bool = False,
) -> WrittenDirectory:
    """:func:`write_hf_directory` for an in-memory state dict (keys in its order). The state
    should hold the full model under the base's key names (copy untouched keys from the base)."""
    layout = [(k, tuple(v.shape), v.dtype) for k, v in state.items()]

    def write(path: Path, keys: Sequence[str]) -> None:
        tensors = {k: state[k].detach().contiguous().clone() for k in keys}
        from safetensors.torch import save_file

        save_file(tensors, path, {"format": "pt"})

    return write_hf_directory(
        out,
        base_dir,
        layout,
        write,
        max_shard_size=max_shard_size,
        extra_files=extra_files,
        dtype=dtype,
        require_tokenizer=require_tokenizer,
        command=command,
        force=force,
    )


OutputKind = Literal["file", "directory"]


MERGE_METADATA = "rmtllmf_merge"
"""The safetensors metadata key under which a merge records its config: a file that has it
was written by a merge."""


def written_by_merge(path: str | Path) -> bool:
    """Whether the safetensors file ``path`` was written by a merge (:data:`MERGE_METADATA` in
    its header); ``False`` for anything unreadable."""
    try:
        with safe_open(str(path), framework="pt") as fh:
            return MERGE_METADATA in (fh.metadata() or {})
    except Exception:  # any unreadable file is simply not ours
        return False


def _classify(out: str | Path, flag: str) -> OutputKind:
    """What the output path ``out`` names: ``"file"`` for a ``.safetensors`` path,
    ``"directory"`` for a directory (an existing one, a path ending in ``/``, or a path without a
    file extension); any other file name is an error."""
    text, p = str(out), Path(out)
    if not text.strip():
        raise InputError(f"{flag} is empty; give a .safetensors file or a directory")
    if p.is_dir():
        if p.suffix == ".safetensors":
            raise InputError(
                f"{flag} {out} is a directory named like a file; give a new .safetensors path "
                "or a directory without the .safetensors extension"
            )
        return "directory"
    if p.exists():
        if p.suffix != ".safetensors":
            raise InputError(
                f"{flag} {out} is an existing file that is not .safetensors; give a "
                ".safetensors file or a directory"
            )
        return "file"
    if text.endswith(("/", os.sep)):
        return "directory"
    if p.suffix == ".safetensors":
        return "file"
    if p.suffix.lower() in MODEL_FILE_SUFFIXES:
        raise InputError(
            f"{flag} {out} ends in {p.suffix}; the output is a .safetensors file or a "
            f"directory: give {p.with_suffix('.safetensors')} or {p.with_suffix('')}/"
        )
    return "directory"


def _check_apart_from_inputs(out: str | Path, inputs: Iterable[str | Path], flag: str) -> None:
    """``out`` is not, does not lie inside and does not contain any of ``inputs``."""
    target = Path(out).resolve()
    for given in inputs:
        src = Path(given).resolve()
        if target == src:
            raise InputError(
                f"{flag} {out} is one of the inputs ({given}); writing there would replace it. "
                "Give a new path"
            )
        if target.is_relative_to(src):
            raise InputError(
                f"{flag} {out} lies inside the input {given}; writing there would change that "
                "model. Give a path outside it"
            )
        if src.is_relative_to(target):
            raise InputError(
                f"{flag} {out} contains the input {given}; replacing it would delete that model. "
                "Give another path"
            )


def _check_writable(out: str | Path, kind: OutputKind, flag: str) -> None:
    """The output's nearest existing folder is a writable directory, and an existing output
    directory's folder is writable too (it is replaced by a rename)."""
    p = Path(out)
    target = p.resolve()
    probe = target.parent if kind == "file" or not p.exists() else target
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise InputError(f"{flag} {out}: {probe} is a file; give a path under a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise InputError(f"{flag} {out}: {probe} is read-only; choose a location you may write to")
    if kind == "directory" and p.exists() and not os.access(target.parent, os.W_OK | os.X_OK):
        raise InputError(
            f"{flag} {out}: its folder {target.parent} is read-only, so the directory cannot be "
            "replaced; choose a location you may write to"
        )


def output_kind(
    out: str | Path,
    inputs: Iterable[str | Path] = (),
    flag: str = "--out",
    *,
    force: bool = False,
    command: str = "merge",
) -> OutputKind:
    """Check an output path before any work and say what it is (:func:`_classify`).

    Raises :class:`~rmtllmf.errors.InputError`, naming ``flag`` and the fix, for a name that is
    neither, a path that is, lies inside or contains one of ``inputs``, a location that cannot
    be written, and, unless ``force``, an existing file that no merge wrote or an existing
    directory that ``command`` did not write (:func:`rmtllmf._io.check_output_dir_owner`).
    """
    kind = _classify(out, flag)
    _check_apart_from_inputs(out, inputs, flag)
    p = Path(out)
    if kind == "directory" and p.is_dir():
        check_output_dir_owner(p, command, force=force, flag=flag)
    if kind == "file" and p.exists() and not force and not written_by_merge(p):
        raise InputError(
            f"{flag} {out} exists and was not written by rmtllmf merge; give a new path, or add "
            "--force to replace it"
        )
    _check_writable(out, kind, flag)
    return kind
