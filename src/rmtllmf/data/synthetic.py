"""The embedded default suite: eight 32x32 image-classification tasks made on the fly.

Each task mirrors one of the paper's datasets in spirit, with nothing downloaded:

=============  ==========  ===================================================================
task           like        content
=============  ==========  ===================================================================
digits         MNIST       sklearn's real handwritten digits (8x8), upsampled, shifted,
                           rotated, thickened and noised
house-numbers  SVHN        a centre digit in one of 18 fonts on a cluttered colour field, with
                           distractor digits cut by the borders
signs          GTSRB       12 sign classes: frame shape x inner symbol, colours by frame type,
                           perspective-like scaling, blur and noise
textures       DTD         8 procedural texture families with random colours, scales, angles
land-cover     EuroSAT     8 aerial-like classes built from smooth fields, stripes, blocks,
                           rivers and speckle in overlapping palettes
letters        (letters)   upper-case A-T in 18 fonts, tilted and scaled, on noisy fields
counting       (CLEVR)     1-8 small shapes of mixed kind and colour
orientation    (glyphs)    an asymmetric glyph rotated by a multiple of 45 degrees
=============  ==========  ===================================================================

The pretext the tiny base is pretrained on is :mod:`rmtllmf.data.pretext`.

Everything is seeded: ``make_task(name, split, n, seed)`` returns the same images every time.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw, ImageFilter

from rmtllmf.data.render import (
    SIZE,
    add_noise,
    contrasting,
    draw_shape,
    font_paths,
    glyph_layer,
    noise_background,
    paste_mask,
    random_colour,
    texture,
    to_array,
)
from rmtllmf.errors import InputError

Images = NDArray[np.uint8]
Labels = NDArray[np.int64]
TaskFn = Callable[[np.random.Generator, int], tuple[Images, Labels]]

SHAPES = ("circle", "triangle", "square", "diamond", "pentagon", "hexagon", "octagon", "star")


@cache
def _sklearn_digits() -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    from sklearn.datasets import load_digits

    data = load_digits()
    return data.images / 16.0, data.target.astype(np.int64)


def digits(rng: np.random.Generator, n: int) -> tuple[Images, Labels]:
    """Real handwritten digits (sklearn, 1797 samples) with heavy augmentation."""
    source, targets = _sklearn_digits()
    idx = rng.integers(0, len(source), n)
    out = np.empty((n, SIZE, SIZE, 3), np.uint8)
    for i, j in enumerate(idx):
        glyph = Image.fromarray((source[j] * 255).astype(np.uint8)).resize(
            (int(rng.integers(16, 25)),) * 2, Image.Resampling.BICUBIC
        )
        glyph = glyph.rotate(
            float(rng.uniform(-25, 25)), resample=Image.Resampling.BILINEAR, expand=True
        )
        if rng.random() < 0.5:
            glyph = glyph.filter(ImageFilter.MaxFilter(3))
        canvas = Image.new("L", (SIZE, SIZE), int(rng.integers(0, 60)))
        x = int(rng.integers(0, max(1, SIZE - glyph.width + 1)))
        y = int(rng.integers(0, max(1, SIZE - glyph.height + 1)))
        canvas.paste(glyph, (x, y), glyph)
        grey = add_noise(rng, np.asarray(canvas), 25.0)
        tint = rng.uniform(0.6, 1.0, 3)
        out[i] = (grey[..., None] * tint).astype(np.uint8)
    return out, targets[idx]


def house_numbers(rng: np.random.Generator, n: int) -> tuple[Images, Labels]:
    """A centre digit in random font and colour, distractor digits at the sides."""
    n_fonts = len(font_paths())
    labels = rng.integers(0, 10, n)
    out = np.empty((n, SIZE, SIZE, 3), np.uint8)
    for i, label in enumerate(labels):
        canvas = Image.fromarray(noise_background(rng, int(rng.integers(2, 6))))
        bg = canvas.getpixel((16, 16))
        colour = contrasting(rng, bg)  # type: ignore[arg-type]
        for side in (-1, 1):
            d = str(int(rng.integers(0, 10)))
            mask = glyph_layer(d, int(rng.integers(n_fonts)), int(rng.integers(18, 26)))
            paste_mask(canvas, mask, colour, (side * int(rng.integers(15, 20)), 0))
        mask = glyph_layer(
            str(label),
            int(rng.integers(n_fonts)),
            int(rng.integers(18, 27)),
            float(rng.uniform(-10, 10)),
        )
        paste_mask(canvas, mask, colour, (int(rng.integers(-2, 3)), int(rng.integers(-2, 3))))
        out[i] = add_noise(rng, to_array(canvas), 12.0)
    return out, labels


_SIGN_FRAMES = ("circle", "triangle", "octagon", "diamond")
_SIGN_SYMBOLS = ("bar", "arrow", "dot")


def signs(rng: np.random.Generator, n: int) -> tuple[Images, Labels]:
    """Frame shape (4) x inner symbol (3) = 12 classes; frame colours follow the frame type."""
    labels = rng.integers(0, 12, n)
    palettes = {
        "circle": [(200, 30, 30), (30, 60, 200)],
        "triangle": [(210, 40, 30)],
        "octagon": [(190, 20, 20)],
        "diamond": [(230, 200, 20), (240, 160, 20)],
    }
    out = np.empty((n, SIZE, SIZE, 3), np.uint8)
    for i, label in enumerate(labels):
        frame, symbol = _SIGN_FRAMES[label // 3], _SIGN_SYMBOLS[label % 3]
        canvas = Image.fromarray(noise_background(rng, 3))
        draw = ImageDraw.Draw(canvas)
        r = float(rng.uniform(9, 14))
        c = (16 + float(rng.uniform(-3, 3)), 16 + float(rng.uniform(-3, 3)))
        pal = palettes[frame]
        draw_shape(draw, frame, c, r, pal[int(rng.integers(len(pal)))])
        draw_shape(draw, frame, c, r * 0.7, (235, 235, 235))
        ink = (20, 20, 20)
        s = r * 0.45
        if symbol == "bar":
            draw.rectangle((c[0] - s, c[1] - s / 3, c[0] + s, c[1] + s / 3), fill=ink)
        elif symbol == "arrow":
            draw.polygon(
                [(c[0] - s, c[1] + s / 2), (c[0] + s, c[1] + s / 2), (c[0], c[1] - s)], fill=ink
            )
        else:
            draw.ellipse((c[0] - s / 2, c[1] - s / 2, c[0] + s / 2, c[1] + s / 2), fill=ink)
        img = canvas.rotate(float(rng.uniform(-12, 12)), resample=Image.Resampling.BILINEAR)
        if rng.random() < 0.5:
            img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.0))))
        out[i] = add_noise(rng, to_array(img), 15.0)
    return out, labels


def textures(rng: np.random.Generator, n: int) -> tuple[Images, Labels]:
    """8 procedural texture families, two random colours each."""
    labels = rng.integers(0, 8, n)
    out = np.empty((n, SIZE, SIZE, 3), np.uint8)
    for i, label in enumerate(labels):
        t = texture(rng, int(label))[..., None]
        a, b = np.array(random_colour(rng)), np.array(random_colour(rng))
        img = (t * a + (1 - t) * b).astype(np.uint8)
        out[i] = add_noise(rng, img, 20.0)
    return out, labels


_LAND = ("forest", "river", "crops", "residential", "industrial", "pasture", "sea", "highway")


def land_cover(rng: np.random.Generator, n: int) -> tuple[Images, Labels]:
    """8 aerial-like classes from fields, stripes, blocks, rivers and roads."""
    labels = rng.integers(0, 8, n)
    out = np.empty((n, SIZE, SIZE, 3), np.uint8)
    greens = np.array([[40, 90, 40], [70, 120, 50], [90, 130, 60], [60, 100, 70]], np.float32)
    for i, label in enumerate(labels):
        name = _LAND[label]
        base_col = greens[int(rng.integers(len(greens)))] + rng.uniform(-20, 20, 3)
        field = noise_background(rng, int(rng.integers(3, 9))).astype(np.float32) / 255
        img = base_col * (0.7 + 0.6 * field)
        canvas = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(canvas)
        if name == "forest":
            arr = np.asarray(canvas).astype(np.float32) * rng.uniform(0.5, 0.8)
            canvas = Image.fromarray(add_noise(rng, arr.astype(np.uint8), 18.0))
        elif name == "river":
            pts = [
                (x, 16 + 8 * np.sin(x / rng.uniform(4, 8) + rng.uniform(0, 6)))
                for x in range(-2, 35, 3)
            ]
            draw.line(pts, fill=(40, 70, 140), width=int(rng.integers(3, 6)))
        elif name == "crops":
            for k in range(0, SIZE, int(rng.integers(3, 6))):
                draw.line(
                    [(k, 0), (k + rng.uniform(-8, 8), SIZE)], fill=random_colour(rng, 90, 200)
                )
        elif name == "residential":
            for _ in range(int(rng.integers(8, 16))):
                x, y = rng.integers(0, 30, 2)
                draw.rectangle((x, y, x + 3, y + 3), fill=random_colour(rng, 120, 240))
        elif name == "industrial":
            for _ in range(int(rng.integers(2, 5))):
                x, y = rng.integers(0, 24, 2)
                w, h = rng.integers(6, 12, 2)
                draw.rectangle(
                    (x, y, x + w, y + h),
                    fill=tuple(int(v) for v in rng.integers(130, 200, 1).repeat(3)),
                )
        elif name == "pasture":
            arr = np.asarray(canvas).astype(np.float32)
            arr = arr * 0.3 + np.array([150, 170, 90]) * 0.7
            canvas = Image.fromarray(add_noise(rng, arr.astype(np.uint8), 6.0))
        elif name == "sea":
            col = np.array([30, 60, 120]) + rng.uniform(-15, 15, 3)
            arr = col * (0.85 + 0.3 * field)
            canvas = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
        else:  # highway
            a = rng.uniform(-15, 15)
            draw.line(
                [(0, 16 - a), (SIZE, 16 + a)], fill=(110, 110, 110), width=int(rng.integers(3, 6))
            )
            draw.line([(0, 16 - a), (SIZE, 16 + a)], fill=(230, 230, 230), width=1)
        out[i] = add_noise(rng, to_array(canvas), 8.0)
    return out, labels


def _glyph_on_field(
    rng: np.random.Generator,
    char: str,
    sizes: tuple[int, int],
    angle: float,
    shift: int,
    smooth: int,
    noise: float,
) -> NDArray[np.uint8]:
    """``char`` in a random font, size in ``sizes``, rotated by ``angle`` and shifted by up to
    ``shift`` pixels, in a contrasting colour on a smooth random field, plus pixel noise."""
    canvas = Image.fromarray(noise_background(rng, smooth))
    bg = canvas.getpixel((16, 16))
    mask = glyph_layer(char, int(rng.integers(len(font_paths()))), int(rng.integers(*sizes)), angle)
    offset = (int(rng.integers(-shift, shift + 1)), int(rng.integers(-shift, shift + 1)))
    paste_mask(canvas, mask, contrasting(rng, bg), offset)  # type: ignore[arg-type]
    return add_noise(rng, to_array(canvas), noise)


def letters(rng: np.random.Generator, n: int) -> tuple[Images, Labels]:
    """Upper-case A-T (20 classes) in 18 fonts, tilted by up to 15 degrees and scaled, on noisy
    colour fields (tilts up to 30 degrees confused letters the fonts draw alike, and the
    orientation task's rotations)."""
    labels = rng.integers(0, 20, n)
    out = np.empty((n, SIZE, SIZE, 3), np.uint8)
    for i, label in enumerate(labels):
        char = chr(ord("A") + int(label))
        out[i] = _glyph_on_field(rng, char, (18, 27), float(rng.uniform(-15, 15)), 2, 2, 12.0)
    return out, labels


def counting(rng: np.random.Generator, n: int) -> tuple[Images, Labels]:
    """1-8 small shapes of mixed kinds and colours (label = count - 1)."""
    labels = rng.integers(0, 8, n)
    out = np.empty((n, SIZE, SIZE, 3), np.uint8)
    for i, label in enumerate(labels):
        canvas = Image.fromarray(noise_background(rng, 2) // 2)
        draw = ImageDraw.Draw(canvas)
        centres: list[tuple[float, float]] = []
        while len(centres) < label + 1:
            c = (float(rng.uniform(4, 28)), float(rng.uniform(4, 28)))
            if all((c[0] - a) ** 2 + (c[1] - b) ** 2 > 36 for a, b in centres):
                centres.append(c)
        for c in centres:
            draw_shape(
                draw,
                SHAPES[int(rng.integers(len(SHAPES)))],
                c,
                float(rng.uniform(2.2, 3.2)),
                random_colour(rng, 100, 256),
                float(rng.uniform(0, 360)),
            )
        out[i] = add_noise(rng, to_array(canvas), 10.0)
    return out, labels


_ORIENTATION_GLYPHS = ("F", "R", "P", "L", "J", "G", "4", "7")


def orientation(rng: np.random.Generator, n: int) -> tuple[Images, Labels]:
    """An asymmetric glyph rotated by ``label * 45`` degrees (8 classes)."""
    labels = rng.integers(0, 8, n)
    out = np.empty((n, SIZE, SIZE, 3), np.uint8)
    for i, label in enumerate(labels):
        char = _ORIENTATION_GLYPHS[int(rng.integers(len(_ORIENTATION_GLYPHS)))]
        angle = 45.0 * float(label) + float(rng.uniform(-8, 8))
        out[i] = _glyph_on_field(rng, char, (18, 26), angle, 0, 3, 12.0)
    return out, labels


TASKS: dict[str, tuple[TaskFn, tuple[str, ...]]] = {
    "digits": (digits, tuple(str(d) for d in range(10))),
    "house-numbers": (house_numbers, tuple(str(d) for d in range(10))),
    "signs": (signs, tuple(f"{f} with {s}" for f in _SIGN_FRAMES for s in _SIGN_SYMBOLS)),
    "textures": (
        textures,
        ("striped", "chequered", "dotted", "wavy", "grid", "zigzagged", "blotchy", "crosshatched"),
    ),
    "land-cover": (land_cover, _LAND),
    "letters": (letters, tuple(chr(ord("A") + k) for k in range(20))),
    "counting": (counting, tuple(str(k) for k in range(1, 9))),
    "orientation": (orientation, tuple(f"{45 * k} degrees" for k in range(8))),
}
TASK_NAMES = tuple(TASKS)
SPLIT_OFFSETS = {"train": 0, "val": 1, "test": 2, "head": 3, "public": 4}
"""Random stream of each split; ``public`` is the unlabelled sample of every task's domain that
ships with the package (the zoo's function-space anchor)."""


def make_task(name: str, split: str, n: int, seed: int = 0) -> tuple[Images, Labels]:
    """``n`` images and labels of task ``name`` for a split (train / val / test / head /
    public), seeded so that splits never share a random stream."""
    if name not in TASKS:
        raise InputError(f"unknown task {name!r}; the embedded suite has {', '.join(TASK_NAMES)}")
    if split not in SPLIT_OFFSETS:
        raise InputError(f"unknown split {split!r}; use one of {', '.join(SPLIT_OFFSETS)}")
    fn, _ = TASKS[name]
    task_id = TASK_NAMES.index(name)
    rng = np.random.default_rng([seed, task_id, SPLIT_OFFSETS[split]])
    return fn(rng, n)
