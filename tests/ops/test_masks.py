import math

import numpy as np
import pytest
import torch

from omniseg.ops.masks import (
    bitmasks_to_rles,
    masks_to_boxes,
    paste_masks_in_image,
    point_sample,
    rles_to_bitmasks,
    roi_mask_targets,
)
from omniseg.ops.rle import rle_encode, rle_to_box


def ref_read(mask, u, v):
    """Bilinear read of an Mh x Mw list-of-lists at continuous (u = col, v = row), zero outside."""
    mh, mw = len(mask), len(mask[0])
    u0, v0 = math.floor(u), math.floor(v)
    total = 0.0
    for dv, wv in ((0, 1 - (v - v0)), (1, v - v0)):
        for du, wu in ((0, 1 - (u - u0)), (1, u - u0)):
            r, c = v0 + dv, u0 + du
            if 0 <= r < mh and 0 <= c < mw:
                total += wv * wu * mask[r][c]
    return total


def ref_paste(mask, box, h, w):
    x1, y1, x2, y2 = box
    mh, mw = len(mask), len(mask[0])
    out = np.zeros((h, w))
    for y in range(h):
        for x in range(w):
            u = (x + 0.5 - x1) / (x2 - x1) * mw - 0.5
            v = (y + 0.5 - y1) / (y2 - y1) * mh - 0.5
            out[y, x] = ref_read(mask, u, v)
    return out


def test_paste_matches_per_pixel_reference():
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(3, 5, 5, generator=g)
    boxes = torch.tensor([[2.3, 1.7, 9.6, 8.2], [-3.0, 4.0, 6.5, 14.9], [10.0, 10.0, 13.0, 11.5]])
    soft = paste_masks_in_image(masks, boxes, (12, 14), threshold=None)
    for i in range(3):
        ref = ref_paste(masks[i].tolist(), boxes[i].tolist(), 12, 14)
        assert np.allclose(soft[i].numpy(), ref, atol=1e-5)
    hard = paste_masks_in_image(masks, boxes, (12, 14))
    assert hard.dtype == torch.bool and torch.equal(hard, soft >= 0.5)


def test_paste_hand_case_and_edges():
    out = paste_masks_in_image(torch.ones(1, 4, 4), torch.tensor([[2.0, 2.0, 5.0, 6.0]]), (8, 8))
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[2:6, 2:5] = True  # pixel centers 2.5..4.5 / 2.5..5.5 are inside the box
    assert torch.equal(out[0], expected)
    assert paste_masks_in_image(torch.zeros(0, 4, 4), torch.zeros(0, 4), (5, 6)).shape == (0, 5, 6)
    degenerate = paste_masks_in_image(torch.ones(2, 4, 4), torch.tensor([[3.0, 3, 3, 7], [float("nan"), 0, 4, 4]]), (8, 8))
    assert not degenerate.any()
    with pytest.raises(ValueError, match="boxes"):
        paste_masks_in_image(torch.ones(2, 4, 4), torch.zeros(1, 4), (8, 8))


def test_masks_to_boxes_matches_rle_to_box():
    g = torch.Generator().manual_seed(1)
    masks = torch.zeros(5, 9, 11, dtype=torch.bool)
    for i in range(4):
        y0, x0 = torch.randint(0, 8, (2,), generator=g).tolist()
        masks[i, y0 : y0 + 3, x0 : x0 + 4] = True
        masks[i] &= torch.rand(9, 11, generator=g) > 0.3
    boxes = masks_to_boxes(masks)
    for i in range(5):
        if masks[i].any():
            assert boxes[i].tolist() == list(rle_to_box(rle_encode(masks[i].numpy())))
        else:
            assert boxes[i].tolist() == [0.0, 0.0, 0.0, 0.0]
    one = torch.zeros(1, 4, 5)
    one[0, 1, 2] = 1
    assert masks_to_boxes(one)[0].tolist() == [2.0, 1.0, 3.0, 2.0]
    assert masks_to_boxes(torch.zeros(0, 4, 5)).shape == (0, 4)


def test_rle_batch_roundtrip_and_errors():
    g = torch.Generator().manual_seed(2)
    masks = torch.rand(4, 7, 6, generator=g) > 0.5
    rles = bitmasks_to_rles(masks)
    assert all(isinstance(r["counts"], str) and r["size"] == [7, 6] for r in rles)
    assert torch.equal(rles_to_bitmasks(rles), masks)
    assert torch.equal(rles_to_bitmasks(bitmasks_to_rles(masks.numpy())), masks)
    assert rles_to_bitmasks([], (3, 4)).shape == (0, 3, 4)
    with pytest.raises(ValueError, match="image_size"):
        rles_to_bitmasks([])
    with pytest.raises(ValueError, match="RLE 1"):
        rles_to_bitmasks([rles[0], rle_encode(np.ones((3, 3)))])
    with pytest.raises(ValueError, match="RLE 0"):
        rles_to_bitmasks(rles[:1], (6, 7))
    uncompressed = {"size": [2, 3], "counts": [1, 4, 1]}  # column-major: 0 1 1 1 1 0
    assert rles_to_bitmasks([uncompressed])[0].int().tolist() == [[0, 1, 1], [1, 1, 0]]


def test_roi_mask_targets_hand_case():
    mask = torch.zeros(1, 4, 4)
    mask[0, :, :2] = 1
    t = roi_mask_targets(mask, torch.tensor([[0.0, 0.0, 4.0, 4.0]]), 2)
    assert t[0].tolist() == [[1.0, 0.0], [1.0, 0.0]]
    # aligned sample columns at -1/6 (clamped to 0), 1/2 and 7/6 (5/6 of column 1 + 1/6 of column 2)
    t = roi_mask_targets(mask, torch.tensor([[0.0, 0.0, 2.0, 4.0]]), 3)
    assert torch.allclose(t[0], torch.tensor([[1.0, 1.0, 5 / 6]] * 3))
    assert roi_mask_targets(torch.zeros(0, 4, 4), torch.zeros(0, 4), 3).shape == (0, 3, 3)


def test_point_sample_reference():
    g = torch.Generator().manual_seed(3)
    feat = torch.randn(2, 3, 5, 6, generator=g, dtype=torch.float64)
    coords = torch.rand(2, 7, 2, generator=g, dtype=torch.float64) * 1.2 - 0.1
    out = point_sample(feat, coords)
    assert out.shape == (2, 3, 7)
    for n in range(2):
        for p in range(7):
            u = coords[n, p, 0].item() * 6 - 0.5
            v = coords[n, p, 1].item() * 5 - 0.5
            for c in range(3):
                assert out[n, c, p].item() == pytest.approx(ref_read(feat[n, c].tolist(), u, v), abs=1e-12)
