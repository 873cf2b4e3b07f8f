import math

import pytest
import torch

from omniseg.modeling.anchors import AnchorConfig, AnchorGenerator, cell_anchors, grid_anchors


def _reference_grid(sizes, ratios, stride, h, w, offset):
    """Slow, obvious anchors: loop over y, x, size, ratio."""
    out = []
    for y in range(h):
        for x in range(w):
            cx, cy = (x + offset) * stride, (y + offset) * stride
            for s in sizes:
                for r in ratios:
                    aw = math.sqrt(s * s / r)
                    ah = r * aw
                    out.append([cx - aw / 2, cy - ah / 2, cx + aw / 2, cy + ah / 2])
    return torch.tensor(out, dtype=torch.float32).reshape(-1, 4)


def test_cell_anchors_hand_worked():
    a = cell_anchors([32], [0.5, 1.0, 2.0])
    # ratio 1: a 32 x 32 square; ratio 0.5 (h / w): w = sqrt(1024 / 0.5) = 32 sqrt(2), h = 16 sqrt(2)
    r2 = math.sqrt(2)
    expected = torch.tensor([
        [-16 * r2, -8 * r2, 16 * r2, 8 * r2],
        [-16.0, -16.0, 16.0, 16.0],
        [-8 * r2, -16 * r2, 8 * r2, 16 * r2],
    ])
    torch.testing.assert_close(a, expected)
    areas = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    torch.testing.assert_close(areas, torch.full((3,), 1024.0))


def test_cell_anchors_rejects_bad_values():
    with pytest.raises(ValueError):
        cell_anchors([0], [1.0])
    with pytest.raises(ValueError):
        cell_anchors([32], [-1.0])


def test_grid_anchors_hand_worked_and_order():
    cell = cell_anchors([8], [1.0])  # (-4, -4, 4, 4)
    a = grid_anchors(cell, stride=4, height=2, width=3)
    # (y, x) order: row 0 has x = 0, 4, 8; row 1 the same at y = 4
    centers = [(0, 0), (4, 0), (8, 0), (0, 4), (4, 4), (8, 4)]
    expected = torch.tensor([[x - 4, y - 4, x + 4, y + 4] for x, y in centers], dtype=torch.float32)
    torch.testing.assert_close(a, expected)
    shifted = grid_anchors(cell, stride=4, height=1, width=1, offset=0.5)
    torch.testing.assert_close(shifted, torch.tensor([[-2.0, -2.0, 6.0, 6.0]]))


@pytest.mark.parametrize("offset", [0.0, 0.5])
def test_grid_anchors_against_reference(offset):
    sizes, ratios = [16, 24], [0.5, 1.0, 2.0]
    a = grid_anchors(cell_anchors(sizes, ratios), 8, 3, 5, offset)
    torch.testing.assert_close(a, _reference_grid(sizes, ratios, 8, 3, 5, offset))
    assert grid_anchors(cell_anchors(sizes, ratios), 8, 0, 5).shape == (0, 4)


def test_generator_default_fpn_levels():
    gen = AnchorGenerator()
    assert gen.num_anchors_per_location == 3
    assert gen.strides == (4, 8, 16, 32, 64)
    sizes = [(32, 32), (16, 16), (8, 8), (4, 4), (2, 2)]
    levels = gen(sizes)
    assert [lv.shape for lv in levels] == [(h * w * 3, 4) for h, w in sizes]
    for lv, size, stride, (h, w) in zip(levels, (32, 64, 128, 256, 512), gen.strides, sizes):
        torch.testing.assert_close(lv, _reference_grid([size], [0.5, 1.0, 2.0], stride, h, w, 0.0))
    # square anchor of P6 at location (0, 0) is 512 x 512 centred at the origin
    torch.testing.assert_close(levels[4][1], torch.tensor([-256.0, -256.0, 256.0, 256.0]))
    assert gen(sizes)[0] is levels[0]  # cached


def test_generator_validates():
    with pytest.raises(ValueError):
        AnchorGenerator(AnchorConfig(sizes=((32.0,),), strides=(4, 8)))
    with pytest.raises(ValueError):
        AnchorGenerator(AnchorConfig(sizes=((32.0,), (64.0, 80.0)), strides=(4, 8)))
    with pytest.raises(ValueError):
        AnchorGenerator()([(4, 4)])
