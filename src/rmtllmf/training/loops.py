"""Training loops: pretraining the tiny base, fixed prototype heads, fine-tuning, evaluation.

* :func:`pretrain`: multi-head supervised pretraining on the pretext (one linear head per factor
  on the embedding; heads are discarded afterwards).
* :func:`prototype_head`: a task's fixed classifier from the *base* model's embeddings.
* :func:`finetune`: full fine-tuning of the encoder against a fixed head (heads never enter task
  vectors), AdamW with warm-up and cosine decay, seeded; optionally anchored in function space
  (:class:`Anchor`).
* :func:`accuracy`: batched evaluation under ``torch.inference_mode``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import nn

from rmtllmf._progress import progress_bar
from rmtllmf.models.tiny_vit import PrototypeHead, normalise_images

Precision = Literal["fp32", "bf16"]
"""The arithmetic of realignment and evaluation (:func:`compute_precision`)."""


@contextmanager
def compute_precision(precision: Precision) -> Iterator[None]:
    """Run the block's operations in ``precision``: ``bf16`` autocasts matrix products and
    convolutions to bfloat16 on the CPU and, where there is one, on CUDA (PyTorch's autocast
    op lists), while parameters, gradients, optimizer state and the ops autocast keeps in
    float32 (losses such as cross-entropy) stay float32; ``fp32`` changes nothing. Weights are
    cast afresh at every use (autocast's cache is off), so a training loop inside the block sees
    its own updates."""
    with ExitStack() as stack:
        if precision == "bf16":
            # no weight cache: a training loop inside the block must see its own updates
            stack.enter_context(torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False))
            if torch.cuda.is_available():
                stack.enter_context(
                    torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False)
                )
        yield


Encoder = Callable[[torch.Tensor], torch.Tensor]
#: uint8 ``(B, H, W, 3)`` batch to the encoder's input tensor
Preprocess = Callable[[torch.Tensor], torch.Tensor]


def cosine_lr(step: int, total: int, warmup: int) -> float:
    """Learning-rate factor: linear warm-up, then cosine decay to 0."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _batches(n: int, batch: int, steps: int, gen: torch.Generator) -> list[torch.Tensor]:
    order: list[torch.Tensor] = []
    while sum(len(o) for o in order) < steps * batch:
        order.append(torch.randperm(n, generator=gen))
    flat = torch.cat(order)[: steps * batch]
    return list(flat.view(steps, batch))


def pretrain(
    model: nn.Module,
    images: NDArray[np.uint8],
    labels: NDArray[np.int64],
    head_sizes: Sequence[int],
    *,
    steps: int,
    batch: int = 128,
    lr: float = 1e-3,
    weight_decay: float = 0.05,
    loss_weights: Sequence[float] | None = None,
    seed: int = 0,
    progress: bool = False,
) -> list[float]:
    """Supervised multi-factor pretraining; returns the loss per step."""
    embed_dim = int(model.visual_projection.out_features)  # type: ignore[union-attr, arg-type]
    heads = nn.ModuleList(nn.Linear(embed_dim, k) for k in head_sizes)
    params = list(model.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, foreach=True)
    weights = list(loss_weights or [1.0] * len(head_sizes))
    gen = torch.Generator().manual_seed(seed)
    x_all, y_all = torch.from_numpy(images), torch.from_numpy(labels)
    losses = []
    model.train()
    with progress_bar(progress, "pretraining", steps) as advance:
        for step, idx in enumerate(_batches(len(images), batch, steps, gen)):
            for group in opt.param_groups:
                group["lr"] = lr * cosine_lr(step, steps, max(1, steps // 20))
            z = model(normalise_images(x_all[idx]))
            y = y_all[idx]
            terms = [
                w * F.cross_entropy(h(z), y[:, j])
                for j, (h, w) in enumerate(zip(heads, weights, strict=True))
            ]
            loss = torch.stack(terms).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            losses.append(float(loss.detach()))
            advance(f"pretraining loss {losses[-1]:.3f}")
    model.eval()
    return losses


@torch.inference_mode()
def embed(
    model: Encoder,
    images: NDArray[np.uint8],
    batch: int = 128,
    preprocess: Preprocess = normalise_images,
) -> torch.Tensor:
    """Embeddings of uint8 images, batched, in inference mode."""
    out = []
    for i in range(0, len(images), batch):
        out.append(model(preprocess(torch.from_numpy(images[i : i + batch]))))
    return torch.cat(out) if out else torch.zeros(0)


def prototype_head(
    model: Encoder,
    images: NDArray[np.uint8],
    labels: NDArray[np.int64],
    n_classes: int,
    preprocess: Preprocess = normalise_images,
) -> PrototypeHead:
    """Fixed head whose rows are the mean normalised embeddings of each class."""
    z = F.normalize(embed(model, images, preprocess=preprocess), dim=-1)
    return PrototypeHead(_class_means(z, torch.from_numpy(labels), n_classes))


def _class_means(z: torch.Tensor, y: torch.Tensor, n_classes: int) -> torch.Tensor:
    """``(n_classes, d)`` mean of the rows of ``z`` in each class (zeros for an empty class)."""
    rows = []
    for c in range(n_classes):
        members = z[y == c]
        rows.append(members.mean(0) if len(members) else torch.zeros(z.shape[1]))
    return torch.stack(rows)


def probe_head(
    model: Encoder,
    images: NDArray[np.uint8],
    labels: NDArray[np.int64],
    n_classes: int,
    *,
    scale: float = 30.0,
    steps: int = 300,
    lr: float = 0.05,
    weight_decay: float = 1e-4,
    seed: int = 0,
    preprocess: Preprocess = normalise_images,
) -> PrototypeHead:
    """Fixed head fitted as a linear probe on the *base* model's embeddings (LP of LP-FT).

    The head keeps the prototype head's form, ``logits = s * n(z) @ n(W)^T`` with unit rows, so
    it is a cosine classifier like CLIP's zero-shot heads; ``W`` minimises the cross-entropy of
    that form over the labelled ``images`` (full batch, Adam, ``weight_decay * ||W||^2``),
    starting from the class prototypes. Only base embeddings enter, so every party that holds
    the base and the same labelled examples derives the same head.
    """
    z = F.normalize(embed(model, images, preprocess=preprocess), dim=-1)
    y = torch.from_numpy(labels)
    start = F.normalize(_class_means(z, y, n_classes), dim=-1)
    gen = torch.Generator().manual_seed(seed)
    noise = 1e-3 * torch.randn(start.shape, generator=gen)
    with torch.inference_mode(False), torch.enable_grad():
        z = z.clone()
        w = (start + noise).clone().requires_grad_(True)
        opt = torch.optim.Adam([w], lr=lr)
        for _ in range(steps):
            logits = scale * z @ F.normalize(w, dim=-1).T
            loss = F.cross_entropy(logits, y) + weight_decay * w.pow(2).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
    return PrototypeHead(w.detach(), scale)


@dataclass(frozen=True)
class Anchor:
    """A function-space anchor for fine-tuning: public images and the base's embeddings of them.

    Fine-tuning with an anchor minimises

        L(theta) = CE(head(f(x; theta)), y) + beta * E_a || n(f(a; theta)) - n(f(a; theta_0)) ||^2,

    ``n(z) = z / ||z||`` (the embedding the fixed heads read), ``a`` a batch of ``batch`` anchor
    images drawn per step, ``theta_0`` the base. A user fits its own task while keeping the
    base's function on public data that every user shares (an L2-SP / LwF-style regulariser in
    function space; no other user's data is needed). Task arithmetic (eq. 6) adds
    ``lambda sum_q tau_q``: every ``tau_q`` that leaves the shared function alone leaves the other
    tasks' inputs alone too, so the merge keeps more of each task's gain.
    """

    images: NDArray[np.uint8]
    targets: torch.Tensor
    weight: float
    batch: int

    def __post_init__(self) -> None:
        if len(self.images) != len(self.targets) or len(self.images) == 0:
            raise ValueError(
                f"an anchor needs one target per image and at least one image; got "
                f"{len(self.images)} images and {len(self.targets)} targets"
            )
        if self.weight < 0 or self.batch < 1:
            raise ValueError(
                f"anchor weight must be >= 0 and batch >= 1, got {self.weight} and {self.batch}"
            )

    @classmethod
    def from_base(
        cls,
        base: Encoder,
        images: NDArray[np.uint8],
        weight: float,
        batch: int,
        preprocess: Preprocess = normalise_images,
    ) -> Anchor:
        """The anchor whose targets are ``base``'s normalised embeddings of ``images``."""
        targets = F.normalize(embed(base, images, preprocess=preprocess), dim=-1).clone()
        return cls(images, targets, weight, batch)

    def penalty(self, model: Encoder, gen: torch.Generator, preprocess: Preprocess) -> torch.Tensor:
        """``beta`` times the mean squared distance on one random batch of anchor images."""
        idx = torch.randint(0, len(self.images), (self.batch,), generator=gen)
        z = F.normalize(model(preprocess(torch.from_numpy(self.images[idx.numpy()]))), dim=-1)
        return self.weight * (z - self.targets[idx]).pow(2).sum(-1).mean()


def finetune(
    model: nn.Module,
    head: nn.Module,
    images: NDArray[np.uint8],
    labels: NDArray[np.int64],
    *,
    steps: int,
    batch: int = 128,
    lr: float = 1e-4,
    weight_decay: float = 0.1,
    trainable: Callable[[str], bool] | None = None,
    seed: int = 0,
    progress: bool = False,
    description: str = "fine-tuning",
    preprocess: Preprocess = normalise_images,
    anchor: Anchor | None = None,
) -> list[float]:
    """Fine-tune ``model`` (parameters selected by ``trainable``, default all) against the fixed
    ``head``, plus the ``anchor``'s penalty when given; returns the loss per step."""
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    for n, p in model.named_parameters():
        p.requires_grad_(flags[n] and (trainable is None or trainable(n)))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, foreach=True)
    gen = torch.Generator().manual_seed(seed)
    anchor_gen = torch.Generator().manual_seed(seed + 1)
    x_all, y_all = torch.from_numpy(images), torch.from_numpy(labels)
    losses = []
    model.train()
    with progress_bar(progress, description, steps) as advance:
        for step, idx in enumerate(_batches(len(images), batch, steps, gen)):
            for group in opt.param_groups:
                group["lr"] = lr * cosine_lr(step, steps, max(1, steps // 10))
            loss = F.cross_entropy(head(model(preprocess(x_all[idx]))), y_all[idx])
            if anchor is not None and anchor.weight > 0:
                loss = loss + anchor.penalty(model, anchor_gen, preprocess)
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            losses.append(float(loss.detach()))
            advance(description)
    model.eval()
    for n, p in model.named_parameters():
        p.requires_grad_(flags[n])
    return losses


@torch.inference_mode()
def accuracy(
    model: Encoder,
    head: nn.Module,
    images: NDArray[np.uint8],
    labels: NDArray[np.int64],
    preprocess: Preprocess = normalise_images,
) -> float:
    """Top-1 accuracy of ``head(model(images))``."""
    if len(images) == 0:
        return float("nan")
    pred = head(embed(model, images, preprocess=preprocess)).argmax(dim=-1).numpy()
    return float(np.mean(pred == labels))
