"""PEFT LoRA adapters as fine-tuned models: an adapter directory is its task vector.

A LoRA adapter (``adapter_config.json`` + ``adapter_model.safetensors``, as
``PeftModel.save_pretrained`` writes it) fine-tunes module ``m`` of the base by
``Delta W_m = s_m B_m A_m`` with ``s_m = alpha_m / r_m`` (``alpha_m / sqrt(r_m)`` with
``use_rslora``; ``r_m`` and ``alpha_m`` from ``rank_pattern`` / ``alpha_pattern`` where they name
the module, matched as peft matches them). That is its task vector (eq. 1):
``tau[m.weight] = Delta W_m``, zero elsewhere. Per layer type, as peft's ``get_delta_weight``:

* linear: ``B @ A`` (transposed for GPT-2's ``Conv1D``, ``fan_in_fan_out``);
* embedding: ``(B @ A)^T`` of ``lora_embedding_B`` / ``lora_embedding_A``;
* convolution: ``B @ A`` for 1x1 kernels, else ``A`` convolved with ``B`` (groups of 1).

Tensors saved whole in the adapter (``modules_to_save`` heads, biases trained with ``bias="all"``,
embeddings saved with ``save_embedding_layers``) replace the base's: ``tau = saved - base``.

:class:`AdapterSource` serves the adapter as the fine-tuned model it stands for, one module at a
time (``theta_base + tau`` in float32, computed when a key is read; nothing else is held), so a
merge takes adapters and full checkpoints alike. Adapter keys (``base_model.model.<module>``)
are mapped to the base's key names: the same name, else the one base key that ends with it (an
adapter on ``GPT2Model``, a base saved from ``GPT2LMHeadModel``), else the name with leading
components dropped (the reverse).

Refused, with the reason: other PEFT types (LoHa, LoKr, IA3, AdaLoRA, ...), DoRA, LoRA with
biases on ``B`` (``lora_bias``), initialisations that change the base weights (PiSSA, OLoRA,
CorDA, LoftQ: the adapter is then relative to a different base), layer replication, trainable
token deltas and ``target_parameters``.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from rmtllmf._lazy import lazy_module
from rmtllmf.errors import CheckpointError, InputError
from rmtllmf.fusion.checkpoint import LazyCheckpoint, check_finite

if TYPE_CHECKING:
    import torch
else:
    torch = lazy_module("torch")

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
PEFT_PREFIX = "base_model.model."
_BASE_CHANGING_INITS = ("pissa", "olora", "corda", "loftq")


class BaseModelView(Protocol):
    """What an adapter needs of its base model (a merge's :class:`TensorSource`)."""

    @property
    def label(self) -> str:
        """The base, for messages."""
        ...

    def keys(self) -> list[str]:
        """Tensor names in order."""
        ...

    def meta(self, key: str) -> tuple[tuple[int, ...], torch.dtype]:
        """Shape and dtype of one tensor."""
        ...

    def get(self, key: str) -> torch.Tensor:
        """One tensor."""
        ...


def is_adapter_dir(path: object) -> bool:
    """Whether ``path`` is a PEFT adapter directory (has ``adapter_config.json``)."""
    if not isinstance(path, str | Path):
        return False
    p = Path(path)
    return p.is_dir() and (p / ADAPTER_CONFIG).is_file()


@dataclass(frozen=True)
class LoraModule:
    """One adapted module: its factors' keys in the adapter file and how to combine them."""

    module: str
    """Module name as peft saw it (adapter key without ``base_model.model.`` and the suffix)."""
    a_key: str
    b_key: str
    kind: str  # "linear" | "embedding"
    scaling: float


def _pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """peft's ``get_pattern_key``: the first pattern ``p`` with ``(.*\\.)?(p)$`` matching the
    module name, else ``default``."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def _read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads((path / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {path / ADAPTER_CONFIG}: {exc}") from exc
    if not isinstance(config, dict):
        raise CheckpointError(f"{path / ADAPTER_CONFIG} is not a JSON object")
    return config


def _check_supported(path: Path, config: dict[str, Any]) -> None:
    """Refuse what this module cannot turn into an exact task vector."""
    where = f"adapter {path}"
    kind = str(config.get("peft_type", "")).upper()
    if kind != "LORA":
        raise InputError(
            f"{where} is a {config.get('peft_type') or 'PEFT adapter of unknown type'} adapter; "
            "only LoRA adapters can be merged. Merge it into its base with peft "
            "(model.merge_and_unload()) and give the merged model instead"
        )
    problems = {
        "use_dora": "DoRA (its magnitude re-normalisation is not a low-rank sum)",
        "lora_bias": "LoRA biases on B (lora_bias)",
        "layer_replication": "layer replication",
        "trainable_token_indices": "trainable token deltas",
        "target_parameters": "target_parameters (LoRA on raw parameters)",
    }
    for key, what in problems.items():
        if config.get(key):
            raise InputError(
                f"{where} uses {what}, which is not supported; merge it into its base with peft "
                "(model.merge_and_unload()) and give the merged model instead"
            )
    init = config.get("init_lora_weights")
    if isinstance(init, str) and init.lower().startswith(_BASE_CHANGING_INITS):
        raise InputError(
            f"{where} was initialised with {init!r}, which changes the base weights, so its "
            "factors are relative to another base; save it with peft's "
            "path_initial_model_for_weight_conversion, or merge it with peft and give the "
            "merged model"
        )


def _scaling(config: dict[str, Any], module: str, rank: int, where: str) -> float:
    """``alpha / r`` (``alpha / sqrt(r)`` with rslora) of one module, ``r`` and ``alpha`` from
    the patterns where they name it; ``r`` is checked against the factors' shape."""
    r = int(_pattern_value(config.get("rank_pattern") or {}, module, config.get("r", rank)))
    alpha = float(_pattern_value(config.get("alpha_pattern") or {}, module, config["lora_alpha"]))
    if r != rank:
        raise CheckpointError(
            f"{where}: module {module!r} has rank {rank} in its weights but {r} in "
            "adapter_config.json (r / rank_pattern); the adapter is inconsistent, re-save it"
        )
    return alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r


class AdapterSource:
    """A LoRA adapter read as the fine-tuned model ``base + tau`` it stands for: the base's keys,
    shapes and dtypes; :meth:`get` of an adapted key is ``base + Delta W`` in float32, of any
    other key the base's tensor. :meth:`tau` is the task vector's entry itself. The base's
    tensors come from ``base`` (the merge's own base reader, not closed here)."""

    def __init__(
        self,
        path: str | Path,
        base: BaseModelView,
        *,
        allow_pickle: bool = False,
        allow_nonfinite: bool = False,
    ) -> None:
        self.path = Path(path)
        self.label = f"adapter {self.path}"
        self._base = base
        self._allow_nonfinite = allow_nonfinite
        self._config = _read_config(self.path)
        _check_supported(self.path, self._config)
        weights = next((self.path / n for n in ADAPTER_WEIGHTS if (self.path / n).exists()), None)
        if weights is None:
            raise CheckpointError(
                f"adapter {self.path} has no {ADAPTER_WEIGHTS[0]}; save it with "
                "PeftModel.save_pretrained(...)"
            )
        self._file = LazyCheckpoint(
            weights, allow_pickle=allow_pickle, allow_nonfinite=allow_nonfinite
        )
        try:
            self._modules, self._whole = self._index()
        except BaseException:
            self._file.close()
            raise
        self._cache: tuple[str, torch.Tensor] | None = None

    # mapping -----------------------------------------------------------------------------------
    def _base_key(self, name: str, base_keys: set[str], suffix_index: dict[str, list[str]]) -> str:
        """The base's key for an adapter tensor name (module name + ``.weight``, or a whole
        tensor's key), see the module docs."""
        if name in base_keys:
            return name
        ending = suffix_index.get(name, [])
        if len(ending) == 1:
            return ending[0]
        if len(ending) > 1:
            raise CheckpointError(
                f"{self.label}: {name!r} matches several tensors of the base "
                f"({', '.join(ending[:3])}); is the base the model the adapter was trained on?"
            )
        parts = name.split(".")
        for i in range(1, len(parts) - 1):
            shorter = ".".join(parts[i:])
            if shorter in base_keys:
                return shorter
        raise CheckpointError(
            f"{self.label}: the base {self._base.label} has no tensor for the adapter's {name!r}; "
            "give the base model the adapter was trained on"
        )

    def _index(self) -> tuple[dict[str, LoraModule], dict[str, str]]:
        """The adapted modules and the whole tensors, keyed by the base's key names."""
        groups: dict[str, dict[str, str]] = {}
        whole: list[tuple[str, str]] = []
        for key in self._file.keys():  # noqa: SIM118 (LazyCheckpoint is not a dict)
            name = key.removeprefix(PEFT_PREFIX)
            m = re.match(r"^(.*)\.(lora_A|lora_B)\.weight$", name) or re.match(
                r"^(.*)\.(lora_embedding_A|lora_embedding_B)$", name
            )
            if m:
                groups.setdefault(m.group(1), {})[m.group(2)] = key
            elif "lora_" in name or "token_adapter" in name:
                raise InputError(
                    f"{self.label}: tensor {key!r} is not a plain LoRA factor (DoRA magnitude, "
                    "AdaLoRA or trainable tokens?); only LoRA A/B factors can be merged"
                )
            else:
                plain = name.replace(".base_layer.", ".").replace(".modules_to_save.", ".")
                whole.append((plain, key))
        base_keys = set(self._base.keys())
        suffix_index: dict[str, list[str]] = {}
        for k in base_keys:
            parts = k.split(".")
            for i in range(1, len(parts)):
                suffix_index.setdefault(".".join(parts[i:]), []).append(k)
        modules: dict[str, LoraModule] = {}
        for module, parts_ in groups.items():
            emb = "lora_embedding_A" in parts_ or "lora_embedding_B" in parts_
            a_name, b_name = (
                ("lora_embedding_A", "lora_embedding_B") if emb else ("lora_A", "lora_B")
            )
            if a_name not in parts_ or b_name not in parts_:
                raise CheckpointError(
                    f"{self.label}: module {module!r} has only one of its LoRA factors; re-save "
                    "the adapter"
                )
            rank = self._file.meta(parts_[a_name])[0][0]  # A is (r, in...) for every layer
            target = self._base_key(f"{module}.weight", base_keys, suffix_index)
            if target in modules:
                raise CheckpointError(
                    f"{self.label}: modules {modules[target].module!r} and {module!r} both map "
                    f"to the base's {target!r}"
                )
            scaling = _scaling(self._config, module, rank, self.label)
            modules[target] = LoraModule(
                module, parts_[a_name], parts_[b_name], "embedding" if emb else "linear", scaling
            )
        whole_map: dict[str, str] = {}
        for name, key in whole:
            target = self._base_key(name, base_keys, suffix_index)
            if target in modules:
                continue  # the base layer saved beside its factors: its own value, tau 0
            shape = self._file.meta(key)[0]
            if shape != self._base.meta(target)[0]:
                raise CheckpointError(
                    f"{self.label}: tensor {key!r} has shape {list(shape)}, the base's "
                    f"{target!r} {list(self._base.meta(target)[0])} (a resized vocabulary?); "
                    "give the base the adapter was trained on"
                )
            whole_map[target] = key
        return modules, whole_map

    # the model it stands for ----------------------------------------------------------------
    def keys(self) -> list[str]:
        """The base's keys."""
        return self._base.keys()

    def meta(self, key: str) -> tuple[tuple[int, ...], torch.dtype]:
        """The base's shape and dtype of ``key``."""
        return self._base.meta(key)

    def adapted(self) -> list[str]:
        """The base keys the adapter changes (its task vector's support)."""
        return [*self._modules, *self._whole]

    def tau(self, key: str) -> torch.Tensor | None:
        """The task vector's entry for ``key`` in float32, ``None`` where it is zero."""
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        if key in self._whole:
            delta = self._file.get(self._whole[key]).float() - self._base.get(key).float()
        elif key in self._modules:
            delta = self._delta(key, self._modules[key])
        else:
            return None
        self._cache = (key, delta)
        return delta

    def _delta(self, key: str, m: LoraModule) -> torch.Tensor:
        """``s B A`` of one module, shaped like the base's weight (peft's ``get_delta_weight``)."""
        a = self._file.get(m.a_key).float()
        b = self._file.get(m.b_key).float()
        shape = self._base.meta(key)[0]
        if m.kind == "embedding":
            delta = (b @ a).T
        elif a.dim() == 2:
            delta = b @ a
            if self._config.get("fan_in_fan_out"):
                delta = delta.T
        elif a.dim() in (3, 4, 5):
            if len(shape) != a.dim() or shape[1] != a.shape[1]:
                raise CheckpointError(
                    f"{self.label}: convolution {m.module!r} does not match the base's {key!r} "
                    f"{list(shape)} (grouped convolutions are not supported)"
                )
            if all(s == 1 for s in shape[2:]):
                flat = b.reshape(b.shape[0], b.shape[1]) @ a.reshape(a.shape[0], a.shape[1])
                delta = flat.reshape(*flat.shape, *([1] * (a.dim() - 2)))
            else:
                conv = {
                    3: torch.nn.functional.conv1d,
                    4: torch.nn.functional.conv2d,
                    5: torch.nn.functional.conv3d,
                }[a.dim()]
                delta = conv(a.transpose(0, 1), b).transpose(0, 1)
        else:
            raise CheckpointError(
                f"{self.label}: module {m.module!r} has {a.dim()}-dimensional factors; only "
                "linear, embedding and convolution LoRA layers are supported"
            )
        if tuple(delta.shape) != tuple(shape):
            raise CheckpointError(
                f"{self.label}: module {m.module!r} gives a {list(delta.shape)} update for the "
                f"base's {key!r} of shape {list(shape)}; give the base the adapter was trained on"
            )
        delta = delta * m.scaling
        if not self._allow_nonfinite:
            check_finite(delta, self.label, key)
        return delta

    def get(self, key: str) -> torch.Tensor:
        """The fine-tuned model's tensor: ``base + tau`` in float32 where adapted, else the
        base's tensor."""
        base = self._base.get(key)
        delta = self.tau(key)
        return base if delta is None else base.float() + delta

    def close(self) -> None:
        """Release the adapter file (the base is the caller's)."""
        self._file.close()
