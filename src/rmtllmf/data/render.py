"""Drawing primitives for the embedded synthetic tasks (PIL on 32x32 RGB canvases).

Fonts come from matplotlib's bundled TrueType files (DejaVu, STIX, Computer Modern), so nothing
depends on fonts installed on the system.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import matplotlib
import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw, ImageFont

SIZE = 32

_FONT_FILES = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSans-Oblique.ttf",
    "DejaVuSans-BoldOblique.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf",
    "DejaVuSansMono-Oblique.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSerif-Italic.ttf",
    "DejaVuSerif-BoldItalic.ttf",
    "STIXGeneral.ttf",
    "STIXGeneralBol.ttf",
    "STIXGeneralItalic.ttf",
    "cmr10.ttf",
    "cmss10.ttf",
    "cmtt10.ttf",
    "cmb10.ttf",
)


@cache
def font_paths() -> tuple[Path, ...]:
    """The TrueType fonts used for glyphs (those present in this matplotlib)."""
    root = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    return tuple(root / f for f in _FONT_FILES if (root / f).exists())


@cache
def font(index: int, size: int) -> ImageFont.FreeTypeFont:
    """Font ``index`` (into :func:`font_paths`) at ``size`` pixels."""
    return ImageFont.truetype(str(font_paths()[index % len(font_paths())]), size)


def random_colour(rng: np.random.Generator, lo: int = 0, hi: int = 256) -> tuple[int, int, int]:
    """A random RGB colour with channels in ``[lo, hi)``."""
    c = rng.integers(lo, hi, size=3)
    return int(c[0]), int(c[1]), int(c[2])


def contrasting(rng: np.random.Generator, bg: tuple[int, int, int]) -> tuple[int, int, int]:
    """A random colour whose luminance differs from ``bg`` by at least 80 levels."""
    lum_bg = 0.299 * bg[0] + 0.587 * bg[1] + 0.114 * bg[2]
    while True:
        c = random_colour(rng)
        if abs(0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2] - lum_bg) >= 80:
            return c


def glyph_layer(
    char: str,
    font_index: int,
    size: int,
    angle: float = 0.0,
    scale_box: int = SIZE,
) -> Image.Image:
    """A grey-level mask of ``char`` centred on a ``scale_box`` canvas, rotated by ``angle``."""
    layer = Image.new("L", (scale_box, scale_box), 0)
    draw = ImageDraw.Draw(layer)
    f = font(font_index, size)
    box = draw.textbbox((0, 0), char, font=f)
    w, h = box[2] - box[0], box[3] - box[1]
    draw.text(((scale_box - w) / 2 - box[0], (scale_box - h) / 2 - box[1]), char, fill=255, font=f)
    if angle:
        layer = layer.rotate(angle, resample=Image.Resampling.BILINEAR)
    return layer


def paste_mask(
    canvas: Image.Image, mask: Image.Image, colour: tuple[int, int, int], offset: tuple[int, int]
) -> None:
    """Paint ``colour`` through ``mask`` onto ``canvas`` at ``offset``."""
    solid = Image.new("RGB", mask.size, colour)
    canvas.paste(solid, offset, mask)


def noise_background(rng: np.random.Generator, smooth: int = 4) -> NDArray[np.uint8]:
    """A smooth random colour field (low-resolution noise upsampled)."""
    low = rng.integers(0, 256, size=(smooth, smooth, 3)).astype(np.uint8)
    img = Image.fromarray(low).resize((SIZE, SIZE), Image.Resampling.BICUBIC)
    return np.asarray(img)


def to_array(img: Image.Image) -> NDArray[np.uint8]:
    """RGB uint8 array of shape (32, 32, 3)."""
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def add_noise(rng: np.random.Generator, arr: NDArray[np.uint8], sigma: float) -> NDArray[np.uint8]:
    """Add Gaussian pixel noise of std ``sigma`` and clip."""
    noisy = arr.astype(np.float32) + rng.normal(0.0, sigma, arr.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def regular_polygon(
    center: tuple[float, float], radius: float, sides: int, rotation: float
) -> list[tuple[float, float]]:
    """Vertices of a regular polygon (rotation in degrees)."""
    angles = np.deg2rad(rotation) + 2 * np.pi * np.arange(sides) / sides
    return [(center[0] + radius * np.sin(a), center[1] - radius * np.cos(a)) for a in angles]


def draw_shape(
    draw: ImageDraw.ImageDraw,
    kind: str,
    center: tuple[float, float],
    radius: float,
    colour: tuple[int, int, int],
    rotation: float = 0.0,
    outline: tuple[int, int, int] | None = None,
    width: int = 1,
) -> None:
    """Filled shape: circle, triangle, square, diamond, pentagon, hexagon, octagon or star."""
    x, y = center
    if kind == "circle":
        draw.ellipse(
            (x - radius, y - radius, x + radius, y + radius),
            fill=colour,
            outline=outline,
            width=width,
        )
        return
    sides = {
        "triangle": 3,
        "square": 4,
        "diamond": 4,
        "pentagon": 5,
        "hexagon": 6,
        "octagon": 8,
    }.get(kind)
    if kind == "star":
        outer = regular_polygon(center, radius, 5, rotation)
        inner = regular_polygon(center, radius * 0.45, 5, rotation + 36)
        pts = [p for pair in zip(outer, inner, strict=True) for p in pair]
    elif sides is not None:
        extra = 45.0 if kind == "square" else 0.0
        extra += 22.5 if kind == "octagon" else 0.0
        pts = regular_polygon(center, radius, sides, rotation + extra)
    else:
        raise ValueError(f"unknown shape {kind!r}")
    draw.polygon(pts, fill=colour, outline=outline, width=width)


def texture(rng: np.random.Generator, kind: int) -> NDArray[np.float32]:
    """A grey texture in [0, 1] of one of 8 families."""
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    u = x * np.cos(angle) + y * np.sin(angle)
    v = -x * np.sin(angle) + y * np.cos(angle)
    period = rng.uniform(4, 9)
    if kind == 0:  # stripes
        t = (np.sin(2 * np.pi * u / period) > 0).astype(np.float32)
    elif kind == 1:  # checkerboard
        t = ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)
    elif kind == 2:  # dots
        t = (
            (np.mod(u, period) - period / 2) ** 2 + (np.mod(v, period) - period / 2) ** 2
            < (period / 4) ** 2
        ).astype(np.float32)
    elif kind == 3:  # waves
        t = 0.5 + 0.5 * np.sin(2 * np.pi * (u + 2 * np.sin(2 * np.pi * v / (3 * period))) / period)
    elif kind == 4:  # grid
        t = ((np.mod(u, period) < 1.5) | (np.mod(v, period) < 1.5)).astype(np.float32)
    elif kind == 5:  # zigzag
        t = np.sin(2 * np.pi * (u + np.abs(np.mod(v, period) - period / 2)) / period) > 0
        t = t.astype(np.float32)
    elif kind == 6:  # blotches (thresholded smooth noise)
        t = noise_background(rng, int(rng.integers(4, 8)))[..., 0].astype(np.float32) / 255
        t = (t > np.median(t)).astype(np.float32)
    else:  # crosshatch
        t = (np.sin(2 * np.pi * u / period) > 0.6) | (np.sin(2 * np.pi * v / period) > 0.6)
        t = t.astype(np.float32)
    return np.asarray(t, dtype=np.float32)
