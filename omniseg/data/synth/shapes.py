"""Exact binary rasterization of the synthetic thing shapes.

A shape is placed by its center ``(cx, cy)``, radius ``r`` (pixels, half the size of its
unit-disk frame), rotation ``angle`` (radians) and ``aspect`` (x stretch before rotation).
Pixel ``(i, j)`` (row, column) is inside when its center ``(j + 0.5, i + 0.5)``, mapped into
the shape's unit frame, satisfies the shape's implicit test. No anti-aliasing: the mask is
exactly the set of pixels painted with the object's color.
"""

from __future__ import annotations

import math

import numpy as np


def _regular_polygon(n: int, radius: float = 1.0, phase: float = -math.pi / 2) -> np.ndarray:
    a = phase + 2 * math.pi * np.arange(n) / n
    return np.stack([radius * np.cos(a), radius * np.sin(a)], axis=1)


def _star_polygon(points: int = 5, inner: float = 0.42) -> np.ndarray:
    a = -math.pi / 2 + math.pi * np.arange(2 * points) / points
    rad = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([rad * np.cos(a), rad * np.sin(a)], axis=1)


def _cross_polygon(arm: float = 0.32, length: float = 0.94) -> np.ndarray:
    a, b = arm, length  # arm end corners at radius hypot(a, b) < 1
    return np.array(
        [[-a, -b], [a, -b], [a, -a], [b, -a], [b, a], [a, a], [a, b], [-a, b], [-a, a], [-b, a], [-b, -a], [-a, -a]],
        dtype=float,
    )


#: polygon vertices in the unit frame (x right, y down) for the polygonal shapes; every vertex lies
#: inside the unit disk, so a shape's extent never exceeds its frame diameter at any rotation
POLYGONS: dict[str, np.ndarray] = {
    "square": np.array([[-0.7, -0.7], [0.7, -0.7], [0.7, 0.7], [-0.7, 0.7]]),
    "triangle": _regular_polygon(3),
    "diamond": np.array([[0.0, -1.0], [0.68, 0.0], [0.0, 1.0], [-0.68, 0.0]]),
    "hexagon": _regular_polygon(6, phase=0.0),
    "star": _star_polygon(),
    "cross": _cross_polygon(),
    # pretraining-world shapes (lexicon.PRETRAINING_SHAPES)
    "pentagon": _regular_polygon(5),
    "octagon": _regular_polygon(8, phase=math.pi / 8),
    "trapezoid": np.array([[-0.9, 0.4], [0.9, 0.4], [0.45, -0.4], [-0.45, -0.4]]),
    "arrow": np.array([[-0.95, -0.22], [0.2, -0.22], [0.2, -0.6], [0.95, 0.0], [0.2, 0.6], [0.2, 0.22],
                       [-0.95, 0.22]]),
}


def points_in_polygon(x: np.ndarray, y: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Even-odd crossing test.

    Args:
        x, y: point coordinates, any (equal) shape.
        poly: V x 2 polygon vertices (simple polygon, either orientation).

    Returns:
        bool array of the shape of ``x``.
    """
    inside = np.zeros(x.shape, dtype=bool)
    n = len(poly)
    for k in range(n):
        x0, y0 = poly[k]
        x1, y1 = poly[(k + 1) % n]
        if y0 == y1:
            continue
        crosses = (y0 > y) != (y1 > y)
        x_at = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
        inside ^= crosses & (x < x_at)
    return inside


def unit_shape_test(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Whether unit-frame points ``(u, v)`` lie inside ``shape`` (frame = unit disk)."""
    if shape == "circle":
        return u * u + v * v <= 1.0
    if shape == "ellipse":
        return u * u + (v / 0.55) ** 2 <= 1.0
    if shape == "ring":
        r2 = u * u + v * v
        return (r2 <= 1.0) & (r2 >= 0.55**2)
    if shape == "crescent":
        return (u * u + v * v <= 1.0) & ((u - 0.42) ** 2 + (v + 0.05) ** 2 > 0.82**2)
    if shape == "heart":  # (x^2 + y^2 - 1)^3 <= x^2 y^3 with y up, scaled into the unit disk
        x, y = u * 1.35, -v * 1.35 + 0.15
        return (x * x + y * y - 1.0) ** 3 <= x * x * y**3
    if shape == "semicircle":
        return (u * u + v * v <= 1.0) & (v <= 0.15)
    if shape in POLYGONS:
        return points_in_polygon(u, v, POLYGONS[shape])
    raise ValueError(f"unknown shape {shape!r}")


def rasterize_shape(
    shape: str,
    cx: float,
    cy: float,
    radius: float,
    angle: float,
    aspect: float,
    height: int,
    width: int,
) -> np.ndarray:
    """Binary H x W mask of a placed shape (clipped at the image borders = truncation).

    Args:
        shape: one of :data:`omniseg.data.synth.lexicon.SHAPES`.
        cx, cy: center in pixels (may lie outside the image).
        radius: half-size of the shape's frame in pixels (> 0).
        angle: rotation in radians.
        aspect: horizontal stretch of the frame before rotation (1 = none).
        height, width: image size.

    Returns:
        H x W bool mask.
    """
    mask = np.zeros((height, width), dtype=bool)
    ext = radius * max(aspect, 1.0) + 1.0
    x0, x1 = max(0, int(math.floor(cx - ext))), min(width, int(math.ceil(cx + ext)) + 1)
    y0, y1 = max(0, int(math.floor(cy - ext))), min(height, int(math.ceil(cy + ext)) + 1)
    if x0 >= x1 or y0 >= y1:
        return mask
    ys, xs = np.mgrid[y0:y1, x0:x1]
    dx = xs + 0.5 - cx
    dy = ys + 0.5 - cy
    c, s = math.cos(angle), math.sin(angle)
    # inverse rotation, then undo the stretch
    u = (c * dx + s * dy) / (radius * aspect)
    v = (-s * dx + c * dy) / radius
    mask[y0:y1, x0:x1] = unit_shape_test(shape, u, v)
    return mask
