from __future__ import annotations

import math

import numpy as np
import pytest

from omniseg.data.synth.lexicon import SHAPES
from omniseg.data.synth.shapes import POLYGONS, points_in_polygon, rasterize_shape


def ref_in_polygon(px: float, py: float, poly: np.ndarray) -> bool:
    """Slow reference: winding number of a single point."""
    wn = 0
    n = len(poly)
    for k in range(n):
        x0, y0 = poly[k]
        x1, y1 = poly[(k + 1) % n]
        cross = (x1 - x0) * (py - y0) - (px - x0) * (y1 - y0)
        if y0 <= py < y1 and cross > 0:
            wn += 1
        elif y1 <= py < y0 and cross < 0:
            wn -= 1
    return wn != 0


def ref_rasterize(shape, cx, cy, radius, angle, aspect, h, w) -> np.ndarray:
    """Per-pixel loop with explicit geometry for each shape."""
    out = np.zeros((h, w), bool)
    for i in range(h):
        for j in range(w):
            dx, dy = j + 0.5 - cx, i + 0.5 - cy
            u = (math.cos(angle) * dx + math.sin(angle) * dy) / (radius * aspect)
            v = (-math.sin(angle) * dx + math.cos(angle) * dy) / radius
            r = math.hypot(u, v)
            if shape == "circle":
                ins = r <= 1
            elif shape == "ellipse":
                ins = u * u + (v / 0.55) ** 2 <= 1
            elif shape == "ring":
                ins = 0.55 <= r <= 1
            elif shape == "crescent":
                ins = r <= 1 and math.hypot(u - 0.42, v + 0.05) > 0.82
            else:
                ins = ref_in_polygon(u, v, POLYGONS[shape])
            out[i, j] = ins
    return out


def test_circle_hand_worked():
    # radius 2 centered at (2, 2) in a 4 x 4 image: pixel centers at 0.5..3.5, the four corners
    # are at distance sqrt(1.5^2 + 1.5^2) = 2.12 > 2, every other pixel is inside
    m = rasterize_shape("circle", 2, 2, 2, 0.0, 1.0, 4, 4)
    expected = np.ones((4, 4), bool)
    expected[[0, 0, 3, 3], [0, 3, 0, 3]] = False
    np.testing.assert_array_equal(m, expected)


def test_square_hand_worked():
    # half-side 0.7 * 5.5 = 3.85 around (5, 5): pixel centers 1.5..8.5 are inside (|d| <= 3.5)
    m = rasterize_shape("square", 5, 5, 5.5, 0.0, 1.0, 10, 10)
    expected = np.zeros((10, 10), bool)
    expected[1:9, 1:9] = True
    np.testing.assert_array_equal(m, expected)


def test_ring_has_hole_and_cross_is_far_from_box():
    ring = rasterize_shape("ring", 16, 16, 14, 0.3, 1.0, 32, 32)
    assert not ring[16, 16] and ring[16, 16 + 11]
    cross = rasterize_shape("cross", 16, 16, 14, 0.0, 1.0, 32, 32)
    ys, xs = np.nonzero(cross)
    box_area = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
    assert cross.sum() < 0.6 * box_area


@pytest.mark.parametrize("shape", SHAPES)
def test_matches_reference(shape):
    rng = np.random.default_rng(SHAPES.index(shape))
    for _ in range(3):
        cx, cy = rng.uniform(-4, 28, 2)
        radius = rng.uniform(3, 12)
        angle = rng.uniform(0, 2 * math.pi)
        aspect = rng.uniform(0.8, 1.25)
        got = rasterize_shape(shape, cx, cy, radius, angle, aspect, 20, 24)
        want = ref_rasterize(shape, cx, cy, radius, angle, aspect, 20, 24)
        np.testing.assert_array_equal(got, want)


def test_vertices_inside_unit_disk():
    for name, poly in POLYGONS.items():
        assert np.hypot(poly[:, 0], poly[:, 1]).max() <= 1.0 + 1e-9, name


def test_truncation_and_outside():
    m = rasterize_shape("circle", -1, 5, 4, 0.0, 1.0, 10, 10)  # center left of the image
    assert m.any() and not m[:, 4:].any()
    assert not rasterize_shape("star", -50, -50, 5, 0.0, 1.0, 10, 10).any()
    with pytest.raises(ValueError, match="unknown shape"):
        rasterize_shape("blob", 5, 5, 3, 0.0, 1.0, 10, 10)


def test_points_in_polygon_triangle():
    tri = np.array([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0]])
    x = np.array([1.0, 3.0, 1.9, -0.1])
    y = np.array([1.0, 3.0, 1.9, 1.0])
    np.testing.assert_array_equal(points_in_polygon(x, y, tri), [True, False, True, False])
    assert points_in_polygon(np.zeros((0,)), np.zeros((0,)), tri).shape == (0,)
