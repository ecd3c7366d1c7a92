"""What the experiment needs from a model family and its task suite (FusionBench's *model
pool* and *task pool* in one small interface).

:class:`rmtllmf.pools.tiny_vit.Zoo` (the embedded ``tiny-vit``) and
:class:`rmtllmf.pools.clip.ClipPool` (``hf-clip``) implement it; the channel, the merge, the
defense and the metrics only ever see this.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from rmtllmf.training.loops import Preprocess

Split = tuple[NDArray[np.uint8], NDArray[np.int64]]


class ModelPool(Protocol):
    """A base model, one fine-tuned model per task, fixed task heads and task data.

    State dicts share one key set (``base_state``'s); ``model_from_state`` returns a module
    whose ``state_dict()`` has exactly those keys and maps preprocessed images to embeddings
    that ``heads[task]`` turns into logits.
    """

    @property
    def finetuned(self) -> Mapping[str, Mapping[str, torch.Tensor]]: ...

    @property
    def heads(self) -> Mapping[str, nn.Module]: ...

    @property
    def data(self) -> Mapping[str, Mapping[str, Split]]: ...

    @property
    def pool_id(self) -> str: ...

    @property
    def base_state(self) -> dict[str, torch.Tensor]: ...

    @property
    def embedding_names(self) -> tuple[str, ...]: ...

    def preprocess(self, images: torch.Tensor) -> torch.Tensor: ...

    def n_classes(self, task: str) -> int: ...

    def model_from_state(self, state: Mapping[str, torch.Tensor]) -> nn.Module: ...

    def task_accuracy(
        self, state: Mapping[str, torch.Tensor], tasks: Sequence[str], split: str = "test"
    ) -> dict[str, float]: ...

    def finetuned_accuracy(self, task: str, split: str = "test") -> float: ...

    def base_accuracy(self, task: str, split: str = "test") -> float: ...


__all__ = ["ModelPool", "Preprocess", "Split"]
