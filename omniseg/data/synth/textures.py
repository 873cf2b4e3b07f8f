"""Procedural textures: smooth noise, stuff backgrounds, object fills, distractor strokes.

Everything takes an explicit ``numpy.random.Generator`` so a scene is a pure function of
its seed. Textures are float32 RGB in [0, 255]; the caller quantizes once at the end.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

#: nominal RGB and texture style of each stuff class (colors deliberately overlap thing colors:
#: green grass vs. green objects, blue water vs. blue objects, sand vs. yellow/orange, ...)
STUFF_STYLE: dict[str, tuple[tuple[int, int, int], str]] = {
    "grass": ((70, 135, 55), "blades"),
    "water": ((50, 95, 165), "waves"),
    "sand": ((205, 180, 125), "speckle"),
    "sky": ((140, 185, 230), "clouds"),
    "wall": ((165, 95, 80), "bricks"),
    "wood": ((130, 85, 50), "grain"),
}


def smooth_noise(
    rng: np.random.Generator, height: int, width: int, cell: float, cell_x: float | None = None
) -> np.ndarray:
    """H x W float32 noise in about [-1, 1], smooth at the scale of ``cell`` pixels.

    A coarse Gaussian grid upsampled bicubically (value noise). ``cell_x`` (default ``cell``)
    sets a different horizontal scale (anisotropic noise, e.g. vertical grass blades).
    """
    gh = max(2, int(math.ceil(height / cell)) + 1)
    gw = max(2, int(math.ceil(width / (cell if cell_x is None else cell_x))) + 1)
    grid = rng.standard_normal((gh, gw), dtype=np.float32)
    img = Image.fromarray(grid, mode="F").resize((width, height), Image.BICUBIC)
    out = np.asarray(img, dtype=np.float32)
    return np.clip(out / 1.5, -1.0, 1.0)


def fractal_noise(rng: np.random.Generator, height: int, width: int, cells: tuple[float, ...]) -> np.ndarray:
    """Sum of :func:`smooth_noise` octaves (weights halve per octave), about [-1, 1]."""
    out = np.zeros((height, width), dtype=np.float32)
    total = 0.0
    for k, cell in enumerate(cells):
        w = 0.5**k
        out += w * smooth_noise(rng, height, width, cell)
        total += w
    return out / total


def stuff_texture(rng: np.random.Generator, stuff: str, height: int, width: int) -> np.ndarray:
    """H x W x 3 float32 texture of a stuff class."""
    base, style = STUFF_STYLE[stuff]
    base_rgb = np.asarray(base, dtype=np.float32) + rng.uniform(-20, 20, 3).astype(np.float32)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    shade = fractal_noise(rng, height, width, (64.0, 16.0, 4.0))
    if style == "blades":
        blades = smooth_noise(rng, height, width, 10.0, cell_x=1.5)
        pattern = blades * 0.8 + 0.3 * rng.standard_normal((height, width), dtype=np.float32)
    elif style == "waves":
        phase = 6.0 * smooth_noise(rng, height, width, 48.0)
        pattern = np.sin(ys / rng.uniform(3.0, 6.0) + phase)
    elif style == "speckle":
        pattern = rng.standard_normal((height, width), dtype=np.float32)
    elif style == "clouds":
        pattern = np.clip(fractal_noise(rng, height, width, (48.0, 12.0)) * 2.5, 0.0, 1.0) * 2.0
    elif style == "bricks":
        bh = rng.uniform(8.0, 14.0)
        bw = 2.2 * bh
        row = np.floor(ys / bh)
        mortar = (ys % bh < 1.5) | ((xs + (row % 2) * bw / 2) % bw < 1.5)
        pattern = np.where(mortar, 2.0, 0.3 * rng.standard_normal((height, width), dtype=np.float32))
    elif style == "grain":
        warp = 10.0 * smooth_noise(rng, height, width, 40.0)
        pattern = np.sin((xs + warp) / rng.uniform(1.5, 3.0))
    else:
        raise ValueError(f"unknown stuff style {style!r}")
    tex = base_rgb[None, None, :] * (1.0 + 0.18 * shade[..., None])
    if style == "clouds":
        tex = tex + (np.asarray([245, 245, 250], np.float32) - tex) * np.clip(pattern[..., None] / 2.0, 0, 1)
    else:
        tex = tex + 14.0 * pattern[..., None].astype(np.float32)
    return tex.astype(np.float32)


def stuff_layout(rng: np.random.Generator, num_regions: int, height: int, width: int) -> np.ndarray:
    """H x W int label map with values in ``[0, num_regions)``: blobby, smooth-edged regions.

    Regions are the argmax of smooth noise fields with a random linear bias each (so they
    form large connected areas rather than speckle).
    """
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    fields = []
    for _ in range(num_regions):
        gx, gy = rng.uniform(-1, 1, 2)
        ramp = (gx * (xs / width - 0.5) + gy * (ys / height - 0.5)) * 2.0
        fields.append(ramp + 0.8 * smooth_noise(rng, height, width, rng.uniform(48.0, 128.0)))
    return np.argmax(np.stack(fields), axis=0)


def object_fill(
    rng: np.random.Generator, rgb: tuple[int, int, int], height: int, width: int, jitter: float
) -> np.ndarray:
    """H x W x 3 float32 fill of one object: jittered color x shading x internal texture.

    The texture (spots, stripes or mottling) and a lighting gradient spread the object's
    pixels over a wide color range, so no single color threshold isolates a class.
    """
    color = np.asarray(rgb, np.float32) + rng.uniform(-jitter, jitter, 3).astype(np.float32)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    gx, gy = rng.uniform(-1, 1, 2)
    light = 1.0 + 0.25 * (gx * (xs / width - 0.5) + gy * (ys / height - 0.5)) * 2.0
    kind = rng.integers(3)
    if kind == 0:  # mottled
        tex = 0.22 * fractal_noise(rng, height, width, (12.0, 4.0))
    elif kind == 1:  # stripes
        a = rng.uniform(0, math.pi)
        period = rng.uniform(4.0, 10.0)
        tex = 0.18 * np.sin((math.cos(a) * xs + math.sin(a) * ys) * 2 * math.pi / period)
    else:  # spots
        tex = 0.3 * np.clip(smooth_noise(rng, height, width, 6.0) * 3.0 - 1.5, -1.0, 0.0)
    fill = color[None, None, :] * (light * (1.0 + tex))[..., None]
    fill += 6.0 * rng.standard_normal((height, width, 1), dtype=np.float32)
    return fill


def draw_strokes(
    rng: np.random.Generator, canvas: np.ndarray, colors: list[tuple[int, int, int]], count: int
) -> None:
    """Draw ``count`` thin distractor strokes (polylines / arcs) in place on an H x W x 3 canvas.

    Strokes use thing colors but are NOT objects: they belong to the stuff under them.
    """
    h, w = canvas.shape[:2]
    layer = Image.new("RGB", (w, h))
    alpha = Image.new("L", (w, h))
    draw, adraw = ImageDraw.Draw(layer), ImageDraw.Draw(alpha)
    for _ in range(count):
        rgb = tuple(int(c) for c in np.clip(np.asarray(colors[rng.integers(len(colors))]) + rng.uniform(-25, 25, 3), 0, 255))
        n = int(rng.integers(3, 7))
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        pts = []
        heading = rng.uniform(0, 2 * math.pi)
        for _ in range(n):
            pts.append((float(x), float(y)))
            heading += rng.normal(0, 0.6)
            step = rng.uniform(8, 30)
            x, y = x + step * math.cos(heading), y + step * math.sin(heading)
        width = int(rng.integers(1, 4))
        draw.line(pts, fill=rgb, width=width)
        adraw.line(pts, fill=255, width=width)
    a = (np.asarray(alpha) > 0)[..., None]
    canvas[:] = np.where(a, np.asarray(layer, np.float32), canvas)
