import math

import pytest
import torch

from omniseg.ops.boxes import (
    DEFAULT_SCALE_CLAMP,
    box_area,
    box_cxcywh_to_xyxy,
    box_iou,
    box_xyxy_to_cxcywh,
    centerness,
    clip_boxes,
    decode_boxes,
    distances_to_boxes,
    encode_boxes,
    generalized_box_iou,
    generalized_box_iou_loss,
    paired_generalized_box_iou,
    points_to_box_distances,
)


def ref_iou_giou(a, b):
    ax1, ay1, ax2, ay2 = a
    bx1, by1, bx2, by2 = b
    iw = max(0.0, min(ax2, bx2) - max(ax1, bx1))
    ih = max(0.0, min(ay2, by2) - max(ay1, by1))
    inter = iw * ih
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    iou = inter / union if union > 0 else 0.0
    hull = (max(ax2, bx2) - min(ax1, bx1)) * (max(ay2, by2) - min(ay1, by1))
    giou = iou - (hull - union) / hull if hull > 0 else iou
    return iou, giou


def random_boxes(n, seed, size=50.0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * size
    wh = torch.rand(n, 2, generator=g, dtype=torch.float64) * size / 2 + 0.5
    return torch.cat([xy, xy + wh], dim=1)


def test_iou_giou_match_reference_loop():
    a = random_boxes(7, 0)
    b = torch.cat([random_boxes(5, 1), a[:2]])  # include identical boxes
    iou = box_iou(a, b)
    giou = generalized_box_iou(a, b)
    for i in range(len(a)):
        for j in range(len(b)):
            r_iou, r_giou = ref_iou_giou(a[i].tolist(), b[j].tolist())
            assert iou[i, j].item() == pytest.approx(r_iou, abs=1e-12)
            assert giou[i, j].item() == pytest.approx(r_giou, abs=1e-12)
    assert torch.allclose(iou[:2, 5:].diagonal(), torch.ones(2, dtype=torch.float64))
    assert torch.allclose(paired_generalized_box_iou(a[:5], b[:5]), giou[:5, :5].diagonal())


def test_iou_hand_values_and_edges():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [2.0, 0.0, 3.0, 1.0], [5.0, 5.0, 5.0, 5.0]])
    assert box_iou(a, b)[0, 0].item() == pytest.approx(1 / 7)
    # disjoint: hull 3 x 2 = 6, union 4 + 1 = 5 -> GIoU = 0 - 1/6
    assert generalized_box_iou(a, b)[0, 1].item() == pytest.approx(-1 / 6)
    # two zero-area boxes: 0, not NaN
    z = torch.tensor([[5.0, 5.0, 5.0, 5.0]])
    assert box_iou(z, z).item() == 0.0
    assert box_iou(torch.zeros(0, 4), b).shape == (0, 3)
    assert generalized_box_iou(a, torch.zeros(0, 4)).shape == (1, 0)
    nan_box = torch.tensor([[float("nan"), 0.0, 1.0, 1.0]])
    assert torch.isnan(box_iou(nan_box, a)).all()
    assert box_area(torch.tensor([[1.0, 2.0, 4.0, 7.0]])).item() == 15.0


def test_giou_loss_valid_mask_weights_and_grad():
    pred = random_boxes(4, 2).float().requires_grad_()
    tgt = random_boxes(4, 3).float()
    per = 1 - paired_generalized_box_iou(pred, tgt)
    valid = torch.tensor([True, False, True, False])
    loss = generalized_box_iou_loss(pred, tgt, valid)
    assert loss.item() == pytest.approx(((per[0] + per[2]) / 2).item(), rel=1e-6)
    bad = tgt.clone()
    bad[1] = float("nan")  # garbage target on an invalid row must not leak
    loss = generalized_box_iou_loss(pred, bad, valid)
    loss.backward()
    assert torch.isfinite(loss) and torch.all(pred.grad[1] == 0) and torch.all(pred.grad[3] == 0)
    assert pred.grad[0].abs().sum() > 0
    w = torch.tensor([1.0, 0.0, 3.0, 0.0])
    wl = generalized_box_iou_loss(pred, tgt, w)
    assert wl.item() == pytest.approx(((per[0] + 3 * per[2]) / 4).item(), rel=1e-6)
    none = generalized_box_iou_loss(pred, tgt, torch.zeros(4, dtype=torch.bool))
    assert none.item() == 0.0 and none.requires_grad
    empty = generalized_box_iou_loss(pred[:0], tgt[:0])
    assert empty.item() == 0.0
    empty.backward()
    assert generalized_box_iou_loss(tgt, tgt).item() == pytest.approx(0.0, abs=1e-6)


def ref_encode(r, t, w):
    rw, rh = r[2] - r[0], r[3] - r[1]
    tw, th = t[2] - t[0], t[3] - t[1]
    rx, ry = r[0] + rw / 2, r[1] + rh / 2
    tx, ty = t[0] + tw / 2, t[1] + th / 2
    return [w[0] * (tx - rx) / rw, w[1] * (ty - ry) / rh, w[2] * math.log(tw / rw), w[3] * math.log(th / rh)]


def test_encode_decode_reference_and_roundtrip():
    ref = random_boxes(6, 4)
    tgt = random_boxes(6, 5)
    for w in [(10.0, 10.0, 5.0, 5.0), (1.0, 1.0, 1.0, 1.0)]:
        d = encode_boxes(ref, tgt, w)
        for i in range(6):
            assert d[i].tolist() == pytest.approx(ref_encode(ref[i].tolist(), tgt[i].tolist(), w), abs=1e-9)
        assert torch.allclose(decode_boxes(d, ref, w), tgt, atol=1e-9)
    hand = encode_boxes(torch.tensor([[0.0, 0.0, 10.0, 10.0]]), torch.tensor([[5.0, 5.0, 15.0, 25.0]]))
    # centers (5,5)->(10,15); sizes 10->10, 10->20
    assert hand[0].tolist() == pytest.approx([5.0, 10.0, 0.0, 5 * math.log(2)])
    # class-specific deltas (N x 4k) decode per group
    d2 = torch.cat([encode_boxes(ref, tgt), encode_boxes(ref, ref)], dim=1)
    out = decode_boxes(d2, ref)
    assert out.shape == (6, 8)
    assert torch.allclose(out[:, :4], tgt, atol=1e-9) and torch.allclose(out[:, 4:], ref, atol=1e-9)
    assert decode_boxes(torch.zeros(0, 4), torch.zeros(0, 4)).shape == (0, 4)


def test_decode_clamps_log_scale():
    ref = torch.tensor([[0.0, 0.0, 4.0, 4.0]])
    out = decode_boxes(torch.tensor([[0.0, 0.0, 100.0, 100.0]]), ref, (1.0, 1.0, 1.0, 1.0))
    w = 4 * math.exp(DEFAULT_SCALE_CLAMP)  # = 4 * 1000 / 16
    assert out[0].tolist() == pytest.approx([2 - w / 2, 2 - w / 2, 2 + w / 2, 2 + w / 2])
    assert w == pytest.approx(250.0)


def test_clip_and_center_format():
    b = torch.tensor([[-5.0, 3.0, 120.0, 90.0], [float("nan"), 1.0, 2.0, 3.0]])
    c = clip_boxes(b, (80, 100))
    assert c[0].tolist() == [0.0, 3.0, 100.0, 80.0]
    assert torch.isnan(c[1, 0]) and c[1, 1:].tolist() == [1.0, 2.0, 3.0]
    x = random_boxes(5, 6)
    assert torch.allclose(box_cxcywh_to_xyxy(box_xyxy_to_cxcywh(x)), x)
    assert box_xyxy_to_cxcywh(torch.tensor([[0.0, 2.0, 4.0, 10.0]]))[0].tolist() == [2.0, 6.0, 4.0, 8.0]


def test_point_distances_and_centerness():
    pts = torch.tensor([[2.0, 5.0], [5.0, 5.0], [11.0, 5.0], [0.0, 5.0]])
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [4.0, 4.0, 6.0, 8.0]])
    d = points_to_box_distances(pts, boxes)
    assert d.shape == (4, 2, 4)
    for p in range(4):
        for m in range(2):
            x, y = pts[p].tolist()
            x1, y1, x2, y2 = boxes[m].tolist()
            assert d[p, m].tolist() == [x - x1, y - y1, x2 - x, y2 - y]
    c = centerness(d)
    assert c[0, 0].item() == pytest.approx(math.sqrt(2 / 8 * 5 / 5))
    assert c[1, 0].item() == pytest.approx(1.0)
    assert c[2, 0].item() == 0.0  # outside
    assert c[3, 0].item() == 0.0  # on the edge
    # paired inverse
    assert torch.allclose(distances_to_boxes(pts, d[:, 0]), boxes[0].expand(4, 4))
    assert points_to_box_distances(torch.zeros(0, 2), boxes).shape == (0, 2, 4)
