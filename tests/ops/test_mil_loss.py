import pytest
import torch

from omniseg.ops.mil_loss import mil_loss


def ref_mil(p, box, valid, smooth=1.0):
    """Slow MIL loss: one Python loop per bag (MAL Eq. 2 with g * s in the numerator)."""
    n, h, w = p.shape
    losses = []
    for i in range(n):
        bags = [[(y, x) for x in range(w)] for y in range(h)] + [[(y, x) for y in range(h)] for x in range(w)]
        scores, labels = [], []
        for bag in bags:
            cells = [(y, x) for y, x in bag if valid[i, y, x]]
            if cells:
                scores.append(max(float(p[i, y, x]) for y, x in cells))
                labels.append(1.0 if any(bool(box[i, y, x]) for y, x in cells) else 0.0)
        if scores:
            inter = sum(s * g for s, g in zip(scores, labels))
            denom = sum(s * s for s in scores) + sum(g * g for g in labels)
            losses.append(1 - (2 * inter + smooth) / (denom + smooth))
    return sum(losses) / max(len(losses), 1)


def box_mask(h, w, y0, x0, y1, x1):
    m = torch.zeros(h, w)
    m[y0:y1, x0:x1] = 1
    return m


def test_matches_slow_reference_with_padding():
    g = torch.Generator().manual_seed(0)
    n, h, w = 4, 7, 9
    p = torch.rand(n, h, w, generator=g, dtype=torch.float64)
    boxes = torch.stack(
        [
            box_mask(h, w, 1, 2, 5, 7),
            box_mask(h, w, 0, 0, 7, 9),
            box_mask(h, w, 3, 3, 4, 4),
            box_mask(h, w, 2, 1, 6, 8),
        ]
    )
    valid = torch.ones(n, h, w, dtype=torch.bool)
    valid[0, 5:] = False  # padding at the bottom
    valid[1, :, 6:] = False  # at the right
    valid[2] = torch.rand(h, w, generator=g) > 0.3  # arbitrary
    for v in (None, valid):
        got = mil_loss(p, boxes, v)
        want = ref_mil(p, boxes, torch.ones(n, h, w, dtype=torch.bool) if v is None else v)
        assert got.item() == pytest.approx(want, abs=1e-6)
    assert mil_loss(p, boxes, valid).item() != pytest.approx(mil_loss(p, boxes).item(), abs=1e-3)


def test_hand_worked_cases():
    box = box_mask(12, 12, 3, 3, 9, 9)[None]  # 6 x 6 box in a 12 x 12 crop: 12 positive, 12 negative bags
    assert mil_loss(box.clone(), box).item() == pytest.approx(0.0, abs=1e-7)  # mask == box: every bag matches
    inner = box_mask(12, 12, 4, 3, 8, 9)[None]  # thinner than the box: rows 3 and 8 are still crossed...
    inner[0, 3, 5] = inner[0, 8, 5] = 1  # ...by one pixel each: still a perfect bag match
    assert mil_loss(inner, box).item() == pytest.approx(0.0, abs=1e-7)
    spill = box.clone()
    spill[0, 5, 9] = 1  # one pixel in the margin: column 9 becomes a false positive bag
    assert mil_loss(spill, box).item() == pytest.approx(1 - 25 / 26)  # 1 - (2*12 + 1) / (13 + 12 + 1)
    full = torch.ones_like(box)  # the trivial solution, filling the crop: 24 positive scores for 12 labels
    assert mil_loss(full, box).item() == pytest.approx(1 - 25 / 37)
    empty = torch.zeros_like(box)
    assert mil_loss(empty, box).item() == pytest.approx(1 - 1 / 13)
    assert mil_loss(empty, box).item() > 0.9


def test_gradient_reaches_bag_maxima_only_and_padding_is_ignored():
    g = torch.Generator().manual_seed(1)
    h, w = 8, 10
    box = box_mask(h, w, 2, 3, 6, 8)[None]
    valid = torch.zeros(1, h, w, dtype=torch.bool)
    valid[0, :6, :8] = True
    p = torch.rand(1, h, w, generator=g)
    p_pad = p.clone()
    p_pad[~valid] = float("nan")  # garbage in padding must not leak
    p_pad.requires_grad_(True)
    loss = mil_loss(p_pad, box, valid)
    loss.backward()
    assert loss.item() == pytest.approx(mil_loss(p[:, :6, :8], box[:, :6, :8]).item(), abs=1e-6)
    grad = p_pad.grad[0]
    assert torch.isfinite(grad).all() and (grad[~valid[0]] == 0).all()
    crop = p[0, :6, :8]
    is_max = (crop == crop.amax(1, keepdim=True)) | (crop == crop.amax(0, keepdim=True))
    assert (grad[:6, :8][~is_max] == 0).all() and (grad[:6, :8][is_max] != 0).any()


def test_empty_batch_and_bad_shapes():
    p = torch.zeros(0, 5, 5, requires_grad=True)
    loss = mil_loss(p, torch.zeros(0, 5, 5))
    loss.backward()
    assert loss.item() == 0.0
    with pytest.raises(ValueError):
        mil_loss(torch.zeros(2, 5, 5), torch.zeros(2, 5, 4))
