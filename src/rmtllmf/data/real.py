"""Real task suites: image folders on disk and Hugging Face ``datasets``.

Both return :class:`LabelledImages` (uint8 ``(N, S, S, 3)`` resized to the model's input size,
int64 labels, class names), the same form as the embedded suite. When a dataset has no
validation split, validation is 10% of train drawn with a fixed seed, and train is the rest.
FusionBench's dataset ids are listed in :data:`PAPER_DATASETS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from rmtllmf.errors import InputError, hub_unavailable

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
#: paper task -> (dataset id, config) as used by FusionBench
PAPER_DATASETS: dict[str, tuple[str, str | None]] = {
    "sun397": ("tanganke/sun397", None),
    "stanford-cars": ("tanganke/stanford_cars", None),
    "resisc45": ("tanganke/resisc45", None),
    "eurosat": ("tanganke/eurosat", None),
    "svhn": ("ufldl-stanford/svhn", "cropped_digits"),
    "gtsrb": ("tanganke/gtsrb", None),
    "mnist": ("ylecun/mnist", None),
    "dtd": ("tanganke/dtd", None),
}


@dataclass(frozen=True)
class LabelledImages:
    """Images, labels and class names of one split."""

    images: NDArray[np.uint8]
    labels: NDArray[np.int64]
    classnames: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.images) != len(self.labels):
            raise InputError(f"{len(self.images)} images but {len(self.labels)} labels")
        if len(self.labels) and int(self.labels.max()) >= len(self.classnames):
            raise InputError(
                f"label {int(self.labels.max())} but only {len(self.classnames)} class names"
            )


def _to_array(img: Image.Image, size: int) -> NDArray[np.uint8]:
    img = img.convert("RGB")
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.uint8)


def load_image_folder(
    root: str | Path, size: int, limit_per_class: int | None = None
) -> LabelledImages:
    """``root/<class name>/<image>`` to labelled images; classes in sorted order."""
    base = Path(root)
    if not base.is_dir():
        raise InputError(f"image folder {base} does not exist (expected root/<class>/<images>)")
    classes = sorted(p.name for p in base.iterdir() if p.is_dir())
    if not classes:
        raise InputError(f"image folder {base} has no class sub-directories")
    images, labels = [], []
    for c, name in enumerate(classes):
        files = sorted(f for f in (base / name).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        for f in files[:limit_per_class]:
            with Image.open(f) as img:
                images.append(_to_array(img, size))
            labels.append(c)
    if not images:
        raise InputError(f"no images with suffixes {IMAGE_SUFFIXES} under {base}")
    return LabelledImages(np.stack(images), np.array(labels, dtype=np.int64), tuple(classes))


def _split_validation(
    n: int, fraction: float, seed: int
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    order = np.random.default_rng(seed).permutation(n)
    n_val = max(1, round(n * fraction))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def load_hf_dataset(
    name: str | Path,
    split: str,
    size: int,
    *,
    config: str | None = None,
    offline: bool = True,
    image_key: str = "image",
    label_key: str = "label",
    limit: int | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> LabelledImages:
    """A split of a Hugging Face dataset (hub id, or a directory from ``save_to_disk``).

    ``split="validation"`` falls back to 10% of ``train`` (seeded) when the dataset has none,
    and ``split="train"`` then excludes those examples.
    """
    import datasets

    path = Path(name)
    try:
        if path.exists():
            loaded: Any = datasets.load_from_disk(str(path))
        else:
            if offline:
                datasets.config.HF_HUB_OFFLINE = True
            loaded = datasets.load_dataset(str(name), config)
    except (FileNotFoundError, ConnectionError, ValueError) as exc:
        if path.exists():
            raise InputError(f"cannot load the dataset in {name}: {exc}") from exc
        raise InputError(hub_unavailable("dataset", name, exc, offline=offline)) from exc
    if not isinstance(loaded, datasets.DatasetDict):
        loaded = datasets.DatasetDict({"train": loaded})
    names = set(loaded)
    carve = "train" in names and not names & {"validation", "val"}
    if carve and split in ("validation", "val", "train"):
        train_idx, val_idx = _split_validation(len(loaded["train"]), val_fraction, seed)
        ds = loaded["train"].select(train_idx if split == "train" else val_idx)
    elif split in names:
        ds = loaded[split]
    else:
        raise InputError(f"dataset {name} has no split {split!r}; it has {sorted(names)}")
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    feature = ds.features[label_key]
    classnames = tuple(
        getattr(feature, "names", None) or [str(i) for i in range(max(ds[label_key]) + 1)]
    )
    images = np.stack([_to_array(img, size) for img in ds[image_key]])
    return LabelledImages(images, np.asarray(ds[label_key], dtype=np.int64), classnames)


def hold_out(
    data: LabelledImages, fraction: float, seed: int
) -> tuple[LabelledImages, LabelledImages]:
    """A seeded, stratified split into training and validation images (never the same image in
    both): of each class, ``round(fraction * n)`` images (at least one) are held out, leaving
    at least one to train on. An error when some class has fewer than two images."""
    if not 0 < fraction < 1:
        raise InputError(f"validation fraction {fraction} must lie strictly between 0 and 1")
    rng = np.random.default_rng(seed)
    train_idx, val_idx = [], []
    thin = []
    for c, name in enumerate(data.classnames):
        idx = np.flatnonzero(data.labels == c)
        if len(idx) < 2:
            thin.append(name)
            continue
        idx = rng.permutation(idx)
        n_val = min(len(idx) - 1, max(1, round(fraction * len(idx))))
        val_idx.append(idx[:n_val])
        train_idx.append(idx[n_val:])
    if thin:
        raise InputError(
            f"classes {thin} have fewer than 2 images, so none can be held out for validation; "
            "add images or give a separate validation folder"
        )
    tr, va = np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(val_idx))
    return (
        LabelledImages(data.images[tr], data.labels[tr], data.classnames),
        LabelledImages(data.images[va], data.labels[va], data.classnames),
    )
