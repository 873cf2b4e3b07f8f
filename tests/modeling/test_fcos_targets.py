"""FCOS target assignment vs a slow per-point reference and hand-worked cases."""

from __future__ import annotations

import math

import pytest
import torch

from omniseg.modeling.fcos_targets import (
    DEFAULT_SCALE_RANGES,
    all_level_locations,
    assign_fcos_targets,
    level_locations,
)


def reference_assign(points, strides, ranges, boxes, radius):
    """Point by point, box by box, in plain Python."""
    matched, ltrb = [], []
    for (x, y), s, (lo, hi) in zip(points.tolist(), strides.tolist(), ranges.tolist()):
        best, best_area, best_d = -1, math.inf, [0.0] * 4
        for m, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
            d = [x - x1, y - y1, x2 - x, y2 - y]
            if radius > 0:
                cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
                rx1, ry1 = max(cx - radius * s, x1), max(cy - radius * s, y1)
                rx2, ry2 = min(cx + radius * s, x2), min(cy + radius * s, y2)
                ok = x > rx1 and y > ry1 and x < rx2 and y < ry2
            else:
                ok = min(d) > 0
            ok = ok and lo <= max(d) <= hi
            area = (x2 - x1) * (y2 - y1)
            if ok and area < best_area:
                best, best_area, best_d = m, area, d
        matched.append(best)
        ltrb.append(best_d)
    return torch.tensor(matched), torch.tensor(ltrb)


def test_level_locations_hand_worked():
    pts = level_locations(2, 3, 8)
    assert pts.tolist() == [[4, 4], [12, 4], [20, 4], [4, 12], [12, 12], [20, 12]]
    assert level_locations(0, 3, 8).shape == (0, 2)


def test_all_levels_concatenate_fine_to_coarse():
    pts, st, rg, counts = all_level_locations([(4, 4), (2, 2), (1, 1)], [8, 16, 32], DEFAULT_SCALE_RANGES[:3])
    assert counts == [16, 4, 1] and pts.shape == (21, 2)
    assert st.tolist() == [8.0] * 16 + [16.0] * 4 + [32.0]
    assert rg[16].tolist() == [64.0, 128.0] and rg[-1].tolist() == [128.0, 256.0]
    assert pts[-1].tolist() == [16.0, 16.0]
    with pytest.raises(ValueError):
        all_level_locations([(4, 4)], [8, 16], DEFAULT_SCALE_RANGES[:2])


def test_center_sampling_hand_worked():
    # one 8-stride level, 8 x 8 cells (image 64 x 64); box center (32, 32) 40 px wide:
    # center square half-side 1.5 * 8 = 12 -> x in (20, 44): cell centers 28, 36 only
    pts, st, rg, _ = all_level_locations([(8, 8)], [8], [(0.0, math.inf)])
    box = torch.tensor([[12.0, 12.0, 52.0, 52.0]])
    matched, ltrb = assign_fcos_targets(pts, st, rg, box, 1.5)
    pos = pts[matched == 0].tolist()
    assert sorted(pos) == [[28, 28], [28, 36], [36, 28], [36, 36]]
    i = pts.tolist().index([28.0, 36.0])
    assert ltrb[i].tolist() == [16.0, 24.0, 24.0, 16.0]
    assert (ltrb[matched < 0] == 0).all()
    # without center sampling: every cell center strictly inside the box (x in 20..44: 4 per axis)
    matched, _ = assign_fcos_targets(pts, st, rg, box, 0.0)
    assert int((matched == 0).sum()) == 16


def test_center_region_is_clipped_to_the_box():
    # a thin box: the 1.5-stride square is wider than the box, so the box edges bound it
    pts, st, rg, _ = all_level_locations([(8, 8)], [8], [(0.0, math.inf)])
    box = torch.tensor([[30.0, 0.0, 34.0, 64.0]])  # no cell center (x = 28 or 36) inside in x
    matched, _ = assign_fcos_targets(pts, st, rg, box, 1.5)
    assert (matched < 0).all()


def test_scale_ranges_pick_the_level():
    # two levels: stride 8 for reach <= 64, stride 16 for reach in [64, 128]
    sizes, strides, ranges = [(16, 16), (8, 8)], [8, 16], [(0.0, 64.0), (64.0, 128.0)]
    pts, st, rg, counts = all_level_locations(sizes, strides, ranges)
    small = torch.tensor([[40.0, 40.0, 80.0, 80.0]])  # reach <= 40 -> level 0 only
    big = torch.tensor([[0.0, 0.0, 128.0, 128.0]])  # reach ~64..76 at center -> level 1
    m_small, _ = assign_fcos_targets(pts, st, rg, small, 1.5)
    m_big, ltrb = assign_fcos_targets(pts, st, rg, big, 1.5)
    assert (m_small[: counts[0]] == 0).any() and (m_small[counts[0]:] < 0).all()
    assert (m_big[: counts[0]] < 0).all() and (m_big[counts[0]:] == 0).any()
    assert (ltrb[m_big == 0].max(dim=1).values >= 64).all()


def test_ambiguous_points_take_the_smallest_box():
    pts, st, rg, _ = all_level_locations([(8, 8)], [8], [(0.0, math.inf)])
    big = [0.0, 0.0, 64.0, 64.0]
    small = [20.0, 20.0, 44.0, 44.0]
    boxes = torch.tensor([big, small])
    matched, ltrb = assign_fcos_targets(pts, st, rg, boxes, 0.0)
    i = pts.tolist().index([28.0, 28.0])
    assert matched[i] == 1 and ltrb[i].tolist() == [8.0, 8.0, 16.0, 16.0]
    j = pts.tolist().index([4.0, 4.0])
    assert matched[j] == 0
    # equal areas: the lower index wins
    same = torch.tensor([small, small])
    matched, _ = assign_fcos_targets(pts, st, rg, same, 0.0)
    assert set(matched[matched >= 0].tolist()) == {0}


@pytest.mark.parametrize("radius", [1.5, 0.0, 0.7])
def test_matches_reference_on_random_boxes(radius):
    g = torch.Generator().manual_seed(int(radius * 10))
    sizes = [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]
    strides = [8, 16, 32, 64, 128]
    ranges = [(0.0, 32.0), (32.0, 48.0), (48.0, 64.0), (64.0, 96.0), (96.0, math.inf)]
    pts, st, rg, _ = all_level_locations(sizes, strides, ranges)
    xy = torch.rand(12, 2, generator=g) * 120
    wh = torch.rand(12, 2, generator=g) * 100 + 2
    boxes = torch.cat([xy, xy + wh], dim=1).round()  # integers: ties in area and on edges happen
    boxes[5] = boxes[3]  # an exact duplicate
    matched, ltrb = assign_fcos_targets(pts, st, rg, boxes, radius)
    ref_m, ref_d = reference_assign(pts, st, rg, boxes, radius)
    assert torch.equal(matched, ref_m)
    assert torch.allclose(ltrb, ref_d)
    assert (matched >= 0).sum() > 10  # the case is not trivially all-background


def test_empty_inputs():
    pts, st, rg, _ = all_level_locations([(4, 4)], [8], [(0.0, 64.0)])
    matched, ltrb = assign_fcos_targets(pts, st, rg, torch.zeros(0, 4))
    assert matched.shape == (16,) and (matched == -1).all() and ltrb.shape == (16, 4)
    matched, ltrb = assign_fcos_targets(pts[:0], st[:0], rg[:0], torch.tensor([[0.0, 0, 10, 10]]))
    assert matched.shape == (0,) and ltrb.shape == (0, 4)
    # a zero-area box never receives a location
    matched, _ = assign_fcos_targets(pts, st, rg, torch.tensor([[4.0, 4.0, 4.0, 20.0]]), 0.0)
    assert (matched < 0).all()
