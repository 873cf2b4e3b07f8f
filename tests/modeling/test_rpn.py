import math

import pytest
import torch
import torch.nn.functional as F

from omniseg.modeling.anchors import AnchorConfig, AnchorGenerator
from omniseg.modeling.rpn import (
    RPN,
    Proposals,
    RPNConfig,
    RPNHead,
    append_gt_proposals,
    box_regression_loss,
    label_anchors,
    rpn_losses,
    sample_labels,
    select_proposals,
)


def _iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _reference_labels(anchors, gts, crowd, pos=0.7, neg=0.3, low=True, ioa_thr=0.7):
    """Slow, obvious anchor labelling with Python loops."""
    a, g, c = anchors.tolist(), gts.tolist(), crowd.tolist()
    labels = []
    for an in a:
        ious = [_iou(an, gt) for gt in g]
        best = max(ious) if ious else 0.0
        labels.append(1 if ious and best >= pos else (0 if best < neg else -1))
    if low:
        for gt in g:
            ious = [_iou(an, gt) for an in a]
            m = max(ious)
            for i, v in enumerate(ious):
                if m > 0 and v == m:
                    labels[i] = 1
    for i, an in enumerate(a):
        area = (an[2] - an[0]) * (an[3] - an[1])
        for cb in c:
            ix = max(0.0, min(an[2], cb[2]) - max(an[0], cb[0]))
            iy = max(0.0, min(an[3], cb[3]) - max(an[1], cb[1]))
            if labels[i] != 1 and ix * iy / area >= ioa_thr:
                labels[i] = -1
    return labels


def test_label_anchors_hand_made():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [100.0, 100.0, 110.0, 110.0]])
    anchors = torch.tensor([
        [0.0, 0.0, 10.0, 10.0],  # IoU 1 with gt 0 -> positive
        [0.0, 0.0, 10.0, 8.0],  # IoU 0.8 -> positive
        [0.0, 0.0, 10.0, 5.0],  # IoU 0.5 -> ignored
        [0.0, 0.0, 10.0, 2.0],  # IoU 0.2 -> negative
        [100.0, 100.0, 110.0, 105.0],  # IoU 0.5 with gt 1, its best anchor -> positive (low quality)
        [50.0, 50.0, 60.0, 60.0],  # no overlap -> negative
    ])
    labels, matched = label_anchors(anchors, gt)
    assert labels.tolist() == [1, 1, -1, 0, 1, 0]
    assert matched[[0, 1, 4]].tolist() == [0, 0, 1]
    labels, _ = label_anchors(anchors, gt, allow_low_quality_matches=False)
    assert labels.tolist() == [1, 1, -1, 0, -1, 0]


def test_best_anchor_rule_keeps_ties_and_skips_zero_iou():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [500.0, 500.0, 510.0, 510.0]])
    anchors = torch.tensor([[0.0, 0.0, 10.0, 4.0], [0.0, 6.0, 10.0, 10.0], [0.0, 0.0, 10.0, 2.0]])
    labels, _ = label_anchors(anchors, gt)
    # both 0.4-IoU anchors tie for gt 0; gt 1 overlaps nothing and makes no positive
    assert labels.tolist() == [1, 1, 0]


def test_crowd_anchors_ignored_but_positives_kept():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    crowd = torch.tensor([[0.0, 0.0, 100.0, 100.0]])
    anchors = torch.tensor([
        [0.0, 0.0, 10.0, 10.0],  # positive, inside the crowd box: stays positive
        [40.0, 40.0, 60.0, 60.0],  # fully inside crowd: ignored instead of negative
        [90.0, 90.0, 110.0, 110.0],  # 25% inside (< 0.7): negative
        [200.0, 200.0, 210.0, 210.0],  # outside: negative
    ])
    labels, _ = label_anchors(anchors, gt, crowd)
    assert labels.tolist() == [1, -1, 0, 0]
    labels, _ = label_anchors(anchors, gt, crowd, ignore_ioa=0.2)
    assert labels.tolist() == [1, -1, -1, 0]
    # no GT at all: everything negative except the crowd region
    labels, matched = label_anchors(anchors, torch.zeros(0, 4), crowd)
    assert labels.tolist() == [-1, -1, 0, 0]
    assert matched.tolist() == [0, 0, 0, 0]
    labels, matched = label_anchors(torch.zeros(0, 4), gt, crowd)
    assert labels.shape == (0,) and matched.shape == (0,)


def test_label_anchors_against_reference():
    g = torch.Generator().manual_seed(3)

    def boxes(n, scale):
        xy = torch.rand(n, 2, generator=g) * 60
        wh = torch.rand(n, 2, generator=g) * scale + 2
        return torch.cat([xy, xy + wh], dim=1).round()

    for _ in range(5):
        anchors, gts, crowd = boxes(60, 30), boxes(4, 30), boxes(1, 50)
        labels, matched = label_anchors(anchors, gts, crowd)
        assert labels.tolist() == _reference_labels(anchors, gts, crowd)
        pos = labels == 1
        ious = torch.tensor([[_iou(a, b) for b in gts.tolist()] for a in anchors.tolist()])
        torch.testing.assert_close(ious[pos, matched[pos]], ious[pos].max(dim=1).values)


def test_sample_labels_counts_seeded():
    labels = torch.cat([torch.ones(10, dtype=torch.long), torch.zeros(1000, dtype=torch.long),
                        torch.full((5,), -1, dtype=torch.long)])
    out = sample_labels(labels, 256, 0.5, torch.Generator().manual_seed(0))
    assert (out == 1).sum() == 10 and (out == 0).sum() == 246 and (out == -1).sum() == 1015 - 256
    assert bool((out[out >= 0] == labels[out >= 0]).all())  # sampled items keep their label
    assert bool((out[-5:] == -1).all())
    many = torch.cat([torch.ones(300, dtype=torch.long), torch.zeros(300, dtype=torch.long)])
    a = sample_labels(many, 256, 0.5, torch.Generator().manual_seed(1))
    b = sample_labels(many, 256, 0.5, torch.Generator().manual_seed(1))
    assert (a == 1).sum() == 128 and (a == 0).sum() == 128
    assert torch.equal(a, b)
    c = sample_labels(many, 256, 0.5, torch.Generator().manual_seed(2))
    assert not torch.equal(a, c)
    few_neg = torch.cat([torch.ones(300, dtype=torch.long), torch.zeros(20, dtype=torch.long)])
    d = sample_labels(few_neg, 256, 0.5)
    assert (d == 1).sum() == 128 and (d == 0).sum() == 20
    assert sample_labels(torch.zeros(0, dtype=torch.long), 256, 0.5).shape == (0,)


def test_box_regression_loss_hand_worked():
    pred = torch.tensor([[0.05, 1.0, 0.0, -2.0]])
    target = torch.zeros(1, 4)
    beta = 1.0 / 9.0
    expected = 0.5 * 0.05**2 / beta + (1.0 - 0.5 * beta) + 0.0 + (2.0 - 0.5 * beta)
    assert box_regression_loss(pred, target, "smooth_l1", beta).item() == pytest.approx(expected, rel=1e-5)
    assert box_regression_loss(pred, target, "l1").item() == pytest.approx(3.05, rel=1e-6)
    assert box_regression_loss(pred, target, "smooth_l1", 0.0).item() == pytest.approx(3.05, rel=1e-6)
    with pytest.raises(ValueError):
        box_regression_loss(pred, target, "giou")


def test_rpn_losses_hand_worked_and_empty():
    logits = torch.tensor([[0.0, 0.0, 2.0, 5.0]], requires_grad=True)
    deltas = torch.zeros(1, 4, 4, requires_grad=True)
    labels = torch.tensor([[1, 0, -1, 0]])
    targets = torch.zeros(1, 4, 4)
    targets[0, 0] = torch.tensor([0.05, 0.0, 0.0, 1.0])
    targets[0, 1] = 100.0  # a negative's target must not count
    out = rpn_losses(logits, deltas, labels, targets, normalizer=4.0)
    cls = (math.log(2) + math.log(2) + F.softplus(torch.tensor(5.0)).item()) / 4
    loc = (0.5 * 0.05**2 * 9 + (1 - 0.5 / 9)) / 4
    assert out["loss_rpn_cls"].item() == pytest.approx(cls, rel=1e-5)
    assert out["loss_rpn_loc"].item() == pytest.approx(loc, rel=1e-5)
    none = rpn_losses(logits, deltas, torch.full((1, 4), -1), targets, normalizer=256.0)
    assert none["loss_rpn_cls"].item() == 0.0 and none["loss_rpn_loc"].item() == 0.0
    (none["loss_rpn_cls"] + none["loss_rpn_loc"]).backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_select_proposals_nms_per_level_topk_and_clip():
    anchors = [
        torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 0.0, 11.0, 10.0], [50.0, 50.0, 60.0, 60.0]]),
        torch.tensor([[0.0, 0.0, 10.0, 10.0], [-20.0, -20.0, 30.0, 30.0]]),
    ]
    logits = [torch.tensor([[3.0, 2.0, 1.0]]), torch.tensor([[0.5, -1.0]])]
    deltas = [torch.zeros(1, 3, 4), torch.zeros(1, 2, 4)]
    (p,) = select_proposals(anchors, logits, deltas, [(40, 40)], pre_nms_topk=10, post_nms_topk=10)
    # level 0: anchor 1 overlaps anchor 0 (IoU 9/11 > 0.7) -> suppressed; level 1 box equal to
    # level-0 anchor 0 survives (NMS is per level); the big anchor is clipped to the image.
    expected = torch.tensor([[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0], [0.0, 0.0, 10.0, 10.0],
                             [0.0, 0.0, 30.0, 30.0]])
    torch.testing.assert_close(p.boxes, torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0],
                                                      [0.0, 0.0, 30.0, 30.0]]))
    assert p.objectness_logits.tolist() == [3.0, 0.5, -1.0]  # 50..60 box clipped to zero size at 40 x 40
    (p2,) = select_proposals(anchors, logits, deltas, [(100, 100)], pre_nms_topk=10, post_nms_topk=10)
    torch.testing.assert_close(p2.boxes, expected)
    (p3,) = select_proposals(anchors, logits, deltas, [(100, 100)], pre_nms_topk=1, post_nms_topk=10)
    assert p3.objectness_logits.tolist() == [3.0, 0.5]
    (p4,) = select_proposals(anchors, logits, deltas, [(100, 100)], pre_nms_topk=10, post_nms_topk=2)
    assert p4.objectness_logits.tolist() == [3.0, 1.0]
    (p5,) = select_proposals(anchors, logits, deltas, [(100, 100)], 10, 10, min_box_size=20.0)
    assert p5.objectness_logits.tolist() == [-1.0]
    # decoding: a delta (0.1, 0, log 2, 0) moves the 10 x 10 box by 1 px and doubles its width
    d = [torch.tensor([[[0.1, 0.0, math.log(2.0), 0.0], [0, 0, 0, 0], [0, 0, 0, 0]]]), deltas[1]]
    (p6,) = select_proposals(anchors, logits, d, [(100, 100)], 10, 10)
    torch.testing.assert_close(p6.boxes[0], torch.tensor([-4.0, 0.0, 16.0, 10.0]).clamp(min=0))


def test_append_gt_proposals():
    p = [Proposals(torch.tensor([[0.0, 0.0, 5.0, 5.0]]), torch.tensor([0.3])), Proposals(torch.zeros(0, 4), torch.zeros(0))]
    out = append_gt_proposals(p, [torch.tensor([[1.0, 1.0, 4.0, 4.0]]), torch.zeros(0, 4)])
    torch.testing.assert_close(out[0].boxes, torch.tensor([[0.0, 0.0, 5.0, 5.0], [1.0, 1.0, 4.0, 4.0]]))
    assert out[0].objectness_logits[1] > 5 and len(out[1]) == 0


def _tiny_rpn(**cfg):
    torch.manual_seed(0)
    gen = AnchorGenerator(AnchorConfig(sizes=((16.0,), (32.0,)), strides=(4, 8)))
    return RPN(head=RPNHead(8, gen.num_anchors_per_location), anchor_generator=gen, cfg=RPNConfig(**cfg))


def test_rpn_module_train_and_eval():
    rpn = _tiny_rpn(pre_nms_topk_train=50, post_nms_topk_train=20, pre_nms_topk_test=30, post_nms_topk_test=7)
    feats = [torch.randn(2, 8, 16, 16), torch.randn(2, 8, 8, 8)]
    gt = [torch.tensor([[8.0, 8.0, 30.0, 40.0]]), torch.zeros(0, 4)]  # second image: no exact boxes
    props, losses = rpn(feats, [(64, 64), (64, 48)], gt, None, torch.Generator().manual_seed(0))
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_loc"}
    assert all(torch.isfinite(v) for v in losses.values())
    assert all(0 < len(p) <= 20 for p in props)
    assert float(props[1].boxes[:, 2].max()) <= 48
    sum(losses.values()).backward()
    assert rpn.head.anchor_deltas.weight.grad.abs().sum() > 0
    # only images without exact boxes: regression loss is exactly 0, classification finite
    _, l2 = rpn(feats, [(64, 64)] * 2, [torch.zeros(0, 4)] * 2)
    assert l2["loss_rpn_loc"].item() == 0.0 and torch.isfinite(l2["loss_rpn_cls"])
    rpn.eval()
    props, losses = rpn(feats, [(64, 64)] * 2)
    assert losses == {} and all(len(p) <= 7 for p in props)
    with pytest.raises(ValueError):
        _tiny_rpn(box_loss="giou")


def test_rpn_head_equals_out_of_place_reference():
    """The in-place ReLU after the shared conv gives the same outputs and gradients as the obvious form."""
    torch.manual_seed(3)
    head = RPNHead(6, 3)
    for layer in (head.conv, head.objectness_logits, head.anchor_deltas):
        torch.nn.init.normal_(layer.weight, std=0.3)
        torch.nn.init.normal_(layer.bias, std=0.3)
    feats = [torch.randn(2, 6, s, s + 1, requires_grad=True) for s in (8, 4, 1)]
    logits, deltas = head(feats)
    want_l, want_d = [], []
    for x in feats:
        t = F.relu(head.conv(x))
        want_l.append(head.objectness_logits(t).permute(0, 2, 3, 1).reshape(2, -1))
        want_d.append(head.anchor_deltas(t).view(2, 3, 4, *x.shape[-2:]).permute(0, 3, 4, 1, 2).reshape(2, -1, 4))
    assert all(torch.equal(a, b) for a, b in zip(logits + deltas, want_l + want_d))
    params = [*feats, *head.parameters()]
    got = torch.autograd.grad(sum((o * o).sum() for o in logits + deltas), params, allow_unused=True)
    want = torch.autograd.grad(sum((o * o).sum() for o in want_l + want_d), params, allow_unused=True)
    assert all(torch.equal(a, b) for a, b in zip(got, want))
