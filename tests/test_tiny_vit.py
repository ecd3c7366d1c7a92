"""The tiny CLIP-shaped ViT, prototype heads and the training loops."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rmtllmf.models.tiny_vit import (
    EMBEDDING_PARAMS,
    PrototypeHead,
    TinyVit,
    TinyVitConfig,
    normalise_images,
)
from rmtllmf.training.loops import (
    Anchor,
    accuracy,
    cosine_lr,
    embed,
    finetune,
    probe_head,
    prototype_head,
)

TINY = TinyVitConfig(patch_size=8, hidden=16, layers=1, heads=2, mlp=32, embed_dim=8)


def test_parameter_names_follow_clip():
    names = dict(TinyVit(TINY).named_parameters())
    for name in EMBEDDING_PARAMS:
        assert name in names
    assert "encoder.layers.0.self_attn.q_proj.weight" in names
    assert names["embeddings.position_embedding.weight"].shape == (TINY.n_patches + 1, 16)


def test_forward_shape_and_batch_independence():
    torch.manual_seed(0)
    model = TinyVit(TINY).eval()
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        z = model(x)
        z1 = model(x[:1])
    assert z.shape == (5, 8)
    torch.testing.assert_close(z[:1], z1, rtol=1e-5, atol=1e-5)


def test_prototype_head_is_class_mean_of_normalised_embeddings():
    torch.manual_seed(0)
    model = TinyVit(TINY).eval()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)
    labels = np.array([0, 1, 2] * 4)
    head = prototype_head(model, images, labels, 3)
    z = F.normalize(embed(model, images), dim=-1)
    expected = F.normalize(z[torch.from_numpy(labels) == 1].mean(0), dim=0)
    torch.testing.assert_close(head.weight[1], expected)
    logits = head(embed(model, images))
    torch.testing.assert_close(logits, 30.0 * z @ head.weight.T)


def test_probe_head_fits_what_prototypes_miss():
    """Two classes whose means differ mostly along a noisy axis and a little along a clean one:
    the prototypes follow the means (the noisy axis, about 60% right), the fitted probe must
    find the clean axis, and its cross-entropy under the head's own form is below the
    prototypes'."""
    rng = np.random.default_rng(0)
    n = 200
    labels = np.repeat([0, 1], n // 2)
    feats = np.zeros((n, 3), np.float32)
    feats[:, 0] = 10.0  # shared direction
    feats[:, 1] = 0.5 * labels + rng.normal(0, 1.0, n)  # noisy axis
    feats[:, 2] = 0.1 * labels + rng.normal(0, 0.01, n)  # clean axis
    images = np.zeros((n, 1, 1, 3), np.uint8)
    images[:, 0, 0, 0] = np.arange(n)  # each image names its row of feats (batches split them)

    def encoder(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(feats)[x[:, 0, 0, 0].long()]

    def raw(x: torch.Tensor) -> torch.Tensor:
        return x

    proto = prototype_head(encoder, images, labels, 2, preprocess=raw)
    probe = probe_head(encoder, images, labels, 2, scale=30.0, preprocess=raw)
    z = torch.from_numpy(feats)
    y = torch.from_numpy(labels)
    assert torch.allclose(probe.weight.norm(dim=-1), torch.ones(2))
    ce = {h: float(F.cross_entropy(head(z), y)) for h, head in (("proto", proto), ("probe", probe))}
    acc = {
        h: float((head(z).argmax(-1) == y).float().mean())
        for h, head in (("proto", proto), ("probe", probe))
    }
    assert ce["probe"] < ce["proto"]
    assert acc["proto"] < 0.7 and acc["probe"] > acc["proto"] + 0.15
    again = probe_head(encoder, images, labels, 2, scale=30.0, preprocess=raw)
    assert torch.equal(again.weight, probe.weight)  # seeded


def test_cosine_schedule_closed_form():
    assert cosine_lr(0, 100, 10) == pytest.approx(0.1)
    assert cosine_lr(9, 100, 10) == pytest.approx(1.0)
    assert cosine_lr(55, 100, 10) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert cosine_lr(100, 100, 10) == pytest.approx(0.0)


def test_finetuning_against_a_fixed_head_learns():
    """A head whose prototypes are swapped starts near 0 accuracy; fine-tuning the encoder
    (never the head) must move the embeddings to it."""
    torch.manual_seed(0)
    model = TinyVit(TINY)
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 256)
    images = np.zeros((256, 32, 32, 3), np.uint8)
    images[labels == 0, ..., 0] = 220
    images[labels == 1, ..., 2] = 220
    images = np.clip(images + rng.integers(0, 30, images.shape), 0, 255).astype(np.uint8)
    head = PrototypeHead(prototype_head(model, images, 1 - labels, 2).weight)
    before = accuracy(model, head, images, labels)
    assert before < 0.2
    head_before = head.weight.clone()
    losses = finetune(model, head, images, labels, steps=60, batch=32, lr=3e-3)
    assert losses[-1] < losses[0]
    assert accuracy(model, head, images, labels) > 0.9
    torch.testing.assert_close(head.weight, head_before)  # heads stay fixed


def test_anchor_penalty_is_zero_at_the_base_and_the_distance_elsewhere():
    """At theta_0 the anchor adds nothing, so the first step's loss is plain cross-entropy;
    on another model it is beta times the mean squared distance of normalised embeddings."""
    torch.manual_seed(0)
    model, other = TinyVit(TINY), TinyVit(TINY)
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (40, 32, 32, 3)).astype(np.uint8)
    labels = rng.integers(0, 3, 40)
    anchor = Anchor.from_base(model, images[:8], weight=5.0, batch=8)
    head = PrototypeHead(torch.randn(3, TINY.embed_dim))
    plain = finetune(TinyVit(TINY), head, images, labels, steps=1, batch=16)[0]
    twin = TinyVit(TINY)
    twin.load_state_dict(model.state_dict())
    anchored = finetune(twin, head, images, labels, steps=1, batch=16, anchor=anchor)[0]
    reference = TinyVit(TINY)
    reference.load_state_dict(model.state_dict())
    first = finetune(reference, head, images, labels, steps=1, batch=16)[0]
    assert anchored == pytest.approx(first, rel=1e-6)
    assert plain != pytest.approx(first)  # a different initialisation: the check has teeth
    other.eval()
    with torch.no_grad():
        penalty = anchor.penalty(other, torch.Generator().manual_seed(0), normalise_images)
    z0 = F.normalize(embed(model, images[:8]), dim=-1)
    z1 = F.normalize(embed(other, images[:8]), dim=-1)
    idx = torch.randint(0, 8, (8,), generator=torch.Generator().manual_seed(0))
    expected = 5.0 * (z1[idx] - z0[idx]).pow(2).sum(-1).mean()
    assert float(penalty) == pytest.approx(float(expected), rel=1e-5)


def test_anchor_rejects_mismatched_targets():
    images = np.zeros((4, 32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match="one target per image"):
        Anchor(images, torch.zeros(3, 8), 1.0, 2)
    with pytest.raises(ValueError, match="weight must be >= 0"):
        Anchor(images, torch.zeros(4, 8), -1.0, 2)


def test_progress_logs_plain_lines_off_a_terminal(capsys):
    from rmtllmf._progress import progress_bar

    with progress_bar(True, "work", 40) as advance:
        for _ in range(40):
            advance("work")
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("work:")]
    assert len(lines) == 20  # every 5%
    assert lines[-1].startswith("work: 40/40")
    with progress_bar(False, "quiet", 5) as advance:
        advance("quiet")
    assert capsys.readouterr().err == ""
