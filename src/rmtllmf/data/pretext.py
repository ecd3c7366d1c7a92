"""The pretext the tiny base is pretrained on: every factor of the embedded suite drawn at once
(glyphs from a set disjoint from the task labels, shapes, textures, colours, counts, rotation,
size), several of them labelled (:data:`PRETEXT_HEADS`), so the base learns the factors of
variation without ever seeing a task's label set. Seeded like the tasks."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw

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
from rmtllmf.data.synthetic import SHAPES, Images

#: share of pretext glyphs drawn upright (the rest take the rotation factor)
UPRIGHT_GLYPHS = 0.6
PRETEXT_GLYPHS = tuple("abcdefghijkmnpqrstuvwxyzUVWXYZ#@&%?$+=<>")
PRETEXT_HEADS = {
    "glyph": len(PRETEXT_GLYPHS) + 1,
    "shape": len(SHAPES) + 1,
    "texture": 9,
    "count": 6,
    "fg_hue": 6,
    "bg_hue": 6,
    "rotation": 8,
    "size": 3,
}


def _hue_class(c: tuple[int, int, int]) -> int:
    r, g, b = (v / 255 for v in c)
    mx, mn = max(r, g, b), min(r, g, b)
    if mx - mn < 0.15:
        return 5 if mx > 0.5 else 4  # light / dark grey
    if mx == r:
        return 0 if g < 0.6 * r + 0.4 * b else 1  # red / yellow-ish
    return 2 if mx == g else 3  # green / blue


def _pretext_background(rng: np.random.Generator) -> tuple[int, NDArray[np.uint8]]:
    """The texture factor (0-7: a texture family in two random colours, 8: a smooth noise
    field) and the background image it renders."""
    tex_kind = int(rng.integers(0, 9))
    if tex_kind < 8:
        t = texture(rng, tex_kind)[..., None]
        a, b = np.array(random_colour(rng)), np.array(random_colour(rng))
        return tex_kind, (t * a + (1 - t) * b).astype(np.uint8)
    return tex_kind, noise_background(rng, int(rng.integers(2, 5)))


def _pretext_glyph(
    rng: np.random.Generator,
    canvas: Image.Image,
    fg: tuple[int, int, int],
    rot: int,
    size_cls: int,
    n_fonts: int,
) -> tuple[int, int]:
    """Paste one pretext glyph onto ``canvas``; its label (1-based) and the rotation bin it took."""
    glyph = int(rng.integers(len(PRETEXT_GLYPHS))) + 1
    if rng.random() < UPRIGHT_GLYPHS:
        rot = 0  # identity is ambiguous under rotation (b/q, n/u): mostly upright
    mask = glyph_layer(
        PRETEXT_GLYPHS[glyph - 1],
        int(rng.integers(n_fonts)),
        (14, 19, 25)[size_cls] + int(rng.integers(-1, 2)),
        45.0 * rot,
    )
    paste_mask(canvas, mask, fg, (int(rng.integers(-4, 5)), int(rng.integers(-4, 5))))
    return glyph, rot


def _pretext_shape(
    rng: np.random.Generator, canvas: Image.Image, fg: tuple[int, int, int], rot: int, size_cls: int
) -> int:
    """Draw one shape of size class ``size_cls`` and rotation bin ``rot``; its label (1-based)."""
    shape = int(rng.integers(len(SHAPES))) + 1
    draw = ImageDraw.Draw(canvas)
    draw_shape(
        draw,
        SHAPES[shape - 1],
        (16 + rng.uniform(-4, 4), 16 + rng.uniform(-4, 4)),
        (6.0, 9.0, 12.0)[size_cls],
        fg,
        45.0 * rot + 10,
    )
    return shape


def _pretext_count(rng: np.random.Generator, canvas: Image.Image, fg: tuple[int, int, int]) -> int:
    """Draw 1-5 small shapes of one kind at random places; their count."""
    count = int(rng.integers(1, 6))
    draw = ImageDraw.Draw(canvas)
    kind = SHAPES[int(rng.integers(len(SHAPES)))]
    for _ in range(count):
        draw_shape(
            draw,
            kind,
            (float(rng.uniform(4, 28)), float(rng.uniform(4, 28))),
            2.5,
            fg,
            float(rng.uniform(0, 360)),
        )
    return count


def _pretext_sample(
    rng: np.random.Generator, n_fonts: int
) -> tuple[NDArray[np.uint8], tuple[int, ...]]:
    """One pretext image and its label row: background, foreground colour, rotation and size,
    then a glyph (45%), a shape (30%) or a group of shapes (25%), then pixel noise."""
    tex_kind, bg_arr = _pretext_background(rng)
    canvas = Image.fromarray(bg_arr)
    bg = tuple(int(v) for v in bg_arr.reshape(-1, 3).mean(0))
    fg = contrasting(rng, bg)  # type: ignore[arg-type]
    rot = int(rng.integers(0, 8))
    size_cls = int(rng.integers(0, 3))
    mode = rng.random()
    glyph = shape = 0
    count = 0
    if mode < 0.45:
        glyph, rot = _pretext_glyph(rng, canvas, fg, rot, size_cls, n_fonts)
    elif mode < 0.75:
        shape = _pretext_shape(rng, canvas, fg, rot, size_cls)
    else:
        count = _pretext_count(rng, canvas, fg)
    image = add_noise(rng, to_array(canvas), float(rng.uniform(0, 15)))
    return image, (
        glyph,
        shape,
        tex_kind,
        count,
        _hue_class(fg),
        _hue_class(bg),  # type: ignore[arg-type]
        rot if mode < 0.75 else 0,
        size_cls if mode < 0.75 else 0,
    )


def pretext(rng: np.random.Generator, n: int) -> tuple[Images, NDArray[np.int64]]:
    """Multi-factor images and a label per factor (columns in :data:`PRETEXT_HEADS` order).

    Label sets are disjoint from the tasks': glyphs are lower-case letters, upper-case U-Z and
    symbols; shapes are counted in 0-5 groups; rotation in 8 bins of the glyph/shape angle.
    """
    n_fonts = len(font_paths())
    out = np.empty((n, SIZE, SIZE, 3), np.uint8)
    labels = np.zeros((n, len(PRETEXT_HEADS)), np.int64)
    for i in range(n):
        out[i], labels[i] = _pretext_sample(rng, n_fonts)
    return out, labels
