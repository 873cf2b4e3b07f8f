from __future__ import annotations

import math

import numpy as np
import pytest

from omniseg.data.synth.lexicon import PRETRAINING_SHAPES, SHAPES
from omniseg.data.synth.shapes import POLYGONS, points_in_polygon, rasterize_shape, unit_shape_test

ALL_SHAPES = SHAPES + PRETRAINING_SHAPES


def _regular(n: int, phase_deg: float) -> list[tuple[float, float]]:
    """Vertices of a regular n-gon on the unit circle, the first at ``phase_deg`` (y down)."""
    return [(math.cos(math.radians(phase_deg + 360 * k / n)), math.sin(math.radians(phase_deg + 360 * k / n)))
            for k in range(n)]


#: the pretraining shapes' polygons, written out independently of omniseg.data.synth.shapes
REF_POLYGONS: dict[str, np.ndarray] = {
    "pentagon": np.array(_regular(5, -90.0)),  # a vertex straight up
    "octagon": np.array(_regular(8, 22.5)),  # flat top and bottom
    "trapezoid": np.array([(-0.45, -0.4), (0.45, -0.4), (0.9, 0.4), (-0.9, 0.4)]),  # wide side down
    "arrow": np.array([(-0.95, -0.22), (0.2, -0.22), (0.2, -0.6), (0.95, 0.0), (0.2, 0.6), (0.2, 0.22),
                       (-0.95, 0.22)]),  # shaft from the left, head pointing right
}


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
            elif shape == "semicircle":  # the disk above a chord slightly below the centre
                ins = r <= 1 and v <= 0.15
            elif shape == "heart":  # (x^2 + y^2 - 1)^3 <= x^2 y^3, y up, scaled by 1.35, shifted 0.15 up
                x, y = 1.35 * u, 0.15 - 1.35 * v
                ins = (x * x + y * y - 1) ** 3 <= x * x * y**3
            elif shape in REF_POLYGONS:
                ins = ref_in_polygon(u, v, REF_POLYGONS[shape])
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


@pytest.mark.parametrize("shape", ALL_SHAPES)
def test_matches_reference(shape):
    rng = np.random.default_rng(ALL_SHAPES.index(shape))
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


def test_new_polygons_match_their_written_out_vertices():
    for name, poly in REF_POLYGONS.items():
        got = POLYGONS[name]
        # the same vertex set (the order may start elsewhere / run the other way)
        assert sorted(map(tuple, np.round(got, 9))) == sorted(map(tuple, np.round(poly, 9))), name


@pytest.mark.parametrize("shape", ALL_SHAPES)
def test_extent_stays_inside_the_frame(shape):
    """A shape never leaves its unit-disk frame (the rasterizer only looks at a window radius + 1
    around the centre, so a shape reaching past it would be silently clipped)."""
    g = np.linspace(-2.0, 2.0, 801)
    u, v = np.meshgrid(g, g)
    inside = unit_shape_test(shape, u, v)
    assert inside.mean() > 0.04  # a real shape (>= ~1/3 of the disk's share 0.196)
    assert np.hypot(u, v)[inside].max() <= 1.0 + 1e-9
    radius, c = 9.3, 12.2
    for angle in np.linspace(0.0, 2 * math.pi, 7, endpoint=False):
        m = rasterize_shape(shape, c, c, radius, float(angle), 1.0, 25, 25)
        ys, xs = np.nonzero(m)
        assert len(ys) > 0.3 * math.pi * radius**2 * inside.mean() / 0.196
        assert np.hypot(xs + 0.5 - c, ys + 0.5 - c).max() <= radius + 1, (shape, angle)


def test_new_shapes_hand_worked():
    def at(shape, u, v):
        return bool(unit_shape_test(shape, np.array([u]), np.array([v]))[0])

    # trapezoid: wide side at the bottom (v = 0.4, half-width 0.9), narrow on top (v = -0.4, 0.45)
    assert at("trapezoid", 0.8, 0.35) and not at("trapezoid", 0.8, -0.35) and at("trapezoid", 0.0, -0.35)
    # arrow pointing right: the shaft (half-height 0.22), the head (up to 0.6) and the tip
    assert at("arrow", -0.9, 0.0) and not at("arrow", -0.9, 0.4) and at("arrow", 0.3, 0.5)
    assert at("arrow", 0.9, 0.0) and not at("arrow", 0.96, 0.0)
    # heart: notch on top at u = 0 (y = 1 <=> v = -0.63), the lobes reach higher, the tip at v = 0.85
    assert at("heart", 0.0, 0.0) and at("heart", 0.0, 0.8) and not at("heart", 0.0, 0.9)
    assert not at("heart", 0.0, -0.7) and at("heart", 0.4, -0.7) and at("heart", -0.4, -0.7)
    # semicircle: the upper part of the disk down to v = 0.15
    assert at("semicircle", 0.0, -0.95) and at("semicircle", 0.0, 0.1) and not at("semicircle", 0.0, 0.2)
    # pentagon: vertex straight up, flat edge at the bottom (v = cos 36 deg = 0.809); octagon: flat top
    assert at("pentagon", 0.0, -0.99) and not at("pentagon", 0.0, 0.82) and at("pentagon", 0.0, 0.8)
    assert at("octagon", 0.0, 0.92) and not at("octagon", 0.0, 0.93) and at("octagon", 0.9, 0.0)
