import math

import pytest
import torch
import torch.nn.functional as F

from omniseg.modeling.roi_box_head import (
    BoxHeadConfig,
    BoxPredictor,
    BoxTargets,
    FCBoxHead,
    RoIBoxHead,
    box_head_losses,
    detections_from_outputs,
    match_proposals,
    sample_rois,
)
from omniseg.modeling.rpn import Proposals
from omniseg.ops.boxes import decode_boxes


def _iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def test_match_proposals_hand_made():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 0.0, 30.0, 10.0], [40.0, 0.0, 50.0, 10.0]])
    gt_labels = torch.tensor([2, 0, -1])
    crowd = torch.tensor([[100.0, 100.0, 200.0, 200.0]])
    props = torch.tensor([
        [0.0, 0.0, 10.0, 5.0],  # IoU 0.5 with gt 0 -> class 2
        [0.0, 0.0, 10.0, 4.0],  # IoU 0.4 -> background (3)
        [20.0, 0.0, 30.0, 9.0],  # IoU 0.9 with gt 1 -> class 0
        [40.0, 0.0, 50.0, 10.0],  # on the unknown-class gt -> ignored
        [120.0, 120.0, 140.0, 140.0],  # inside the crowd box -> ignored
        [190.0, 190.0, 230.0, 230.0],  # 1/16 inside the crowd box -> background
    ])
    labels, matched = match_proposals(props, gt, gt_labels, 3, 0.5, crowd)
    assert labels.tolist() == [2, 3, 0, -1, -1, 3]
    assert matched[[0, 2, 3]].tolist() == [0, 1, 2]
    labels, _ = match_proposals(props, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), 3)
    assert labels.tolist() == [3] * 6
    labels, _ = match_proposals(torch.zeros(0, 4), gt, gt_labels, 3, 0.5, crowd)
    assert labels.shape == (0,)


def test_match_proposals_against_reference():
    g = torch.Generator().manual_seed(5)
    xy = torch.rand(80, 2, generator=g) * 40
    props = torch.cat([xy, xy + torch.rand(80, 2, generator=g) * 20 + 1], 1).round()
    gxy = torch.rand(5, 2, generator=g) * 40
    gt = torch.cat([gxy, gxy + torch.rand(5, 2, generator=g) * 20 + 1], 1).round()
    gl = torch.tensor([0, 1, 2, 3, 1])
    labels, _ = match_proposals(props, gt, gl, 4, 0.5)
    for p, lab in zip(props.tolist(), labels.tolist()):
        ious = [_iou(p, b) for b in gt.tolist()]
        best = max(ious)
        assert lab == (int(gl[ious.index(best)]) if best >= 0.5 else 4)


def test_sample_rois_counts():
    gen = torch.Generator().manual_seed(0)
    labels = torch.cat([torch.full((10,), 1), torch.full((1000,), 5), torch.full((7,), -1)])
    keep = sample_rois(labels, 5, 512, 0.25, gen)
    assert keep.numel() == 512 and (labels[keep] < 5).sum() == 10
    assert bool((labels[keep[:10]] == 1).all()) and bool((labels[keep] >= 0).all())
    assert keep.unique().numel() == 512
    labels = torch.cat([torch.full((500,), 0), torch.full((1000,), 5)])
    keep = sample_rois(labels, 5, 512, 0.25, gen)
    assert (labels[keep] < 5).sum() == 128 and (labels[keep] == 5).sum() == 384
    assert sample_rois(torch.full((4,), -1), 5, 512, 0.25).numel() == 0


def test_box_head_losses_hand_worked():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 3.0]], requires_grad=True)
    labels = torch.tensor([0, 1, 2])  # 2 = background
    deltas = torch.zeros(3, 8)
    deltas[0, 0:4] = torch.tensor([0.5, 0.0, 0.0, 0.0])  # class 0 deltas of RoI 0
    deltas[0, 4:8] = 100.0  # class 1 deltas of RoI 0: must not be used
    deltas[1, 4:8] = torch.tensor([0.0, 2.0, 0.0, 0.0])
    target = torch.zeros(3, 4)
    target[2] = 9.0  # background: never regressed
    regress = torch.tensor([True, False, True])  # RoI 1 matched to an approximate box
    out = box_head_losses(logits, deltas, labels, target, regress, smooth_l1_beta=1.0)
    ce = sum(-F.log_softmax(logits[i], 0)[labels[i]].item() for i in range(3)) / 3
    assert out["loss_cls"].item() == pytest.approx(ce, rel=1e-6)
    assert out["loss_box_reg"].item() == pytest.approx(0.5 * 0.5**2 / 3, rel=1e-6)
    regress_all = torch.tensor([True, True, True])
    out = box_head_losses(logits, deltas, labels, target, regress_all, "l1")
    assert out["loss_box_reg"].item() == pytest.approx((0.5 + 2.0) / 3, rel=1e-6)
    # class-agnostic deltas: one box per RoI
    out = box_head_losses(logits, deltas[:, :4], labels, target, regress_all, "l1")
    assert out["loss_box_reg"].item() == pytest.approx(0.5 / 3, rel=1e-6)
    # background weighting: weighted mean of per-RoI CE
    out = box_head_losses(logits, deltas, labels, target, regress, background_weight=0.1)
    per = [-F.log_softmax(logits[i], 0)[labels[i]].item() for i in range(3)]
    assert out["loss_cls"].item() == pytest.approx((per[0] + per[1] + 0.1 * per[2]) / 2.1, rel=1e-6)
    empty = box_head_losses(logits[:0], deltas[:0], labels[:0], target[:0], regress[:0])
    assert empty["loss_cls"].item() == 0.0 and empty["loss_box_reg"].item() == 0.0
    (empty["loss_cls"] + empty["loss_box_reg"]).backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_detections_hand_made_calibration_nms_topk():
    props = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 0.0, 11.0, 10.0], [50.0, 50.0, 70.0, 70.0]])
    # probabilities: log-probs as logits -> softmax returns them exactly
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.02, 0.9, 0.08]])
    logits = probs.log()
    deltas = torch.zeros(3, 4)
    det = detections_from_outputs(logits, deltas, props, (60, 60), score_threshold=0.05, nms_threshold=0.5)
    # class 0: RoI 1 suppressed by RoI 0 (IoU 9/11 > 0.5); class 1: RoI 0 (0.2) suppressed by RoI 1
    # (0.3); RoI 2 is clipped to the 60 x 60 image.
    assert det.labels.tolist() == [1, 0, 1]
    torch.testing.assert_close(det.scores, torch.tensor([0.9, 0.7, 0.3]))
    torch.testing.assert_close(det.boxes, torch.tensor([[50.0, 50.0, 60.0, 60.0], [0.0, 0.0, 10.0, 10.0],
                                                        [1.0, 0.0, 11.0, 10.0]]))
    assert det.roi_index.tolist() == [2, 0, 1]
    obj = torch.tensor([0.5, 1.0, 0.1])
    cal = detections_from_outputs(logits, deltas, props, (60, 60), objectness=obj, nms_threshold=0.5, topk=2)
    # calibrated sqrt(p * objectness): class 0 keeps RoI 1 (sqrt 0.6 = 0.775) over RoI 0 (sqrt 0.35);
    # class 1 keeps RoI 1 (sqrt 0.3) over RoI 0 (sqrt 0.1), then RoI 2 (sqrt 0.09); top 2
    torch.testing.assert_close(cal.scores, torch.tensor([math.sqrt(0.6), math.sqrt(0.3)]))
    assert cal.roi_index.tolist() == [1, 1] and cal.labels.tolist() == [0, 1]
    cal3 = detections_from_outputs(logits, deltas, props, (60, 60), objectness=obj, nms_threshold=0.5)
    torch.testing.assert_close(cal3.scores, torch.tensor([math.sqrt(0.6), math.sqrt(0.3), math.sqrt(0.09)]))
    strict = detections_from_outputs(logits, deltas, props, (60, 60), score_threshold=0.8)
    assert strict.labels.tolist() == [1] and strict.roi_index.tolist() == [2]
    none = detections_from_outputs(logits[:0], deltas[:0], props[:0], (60, 60))
    assert none.boxes.shape == (0, 4) and none.scores.shape == (0,)


def test_detections_decode_class_specific():
    props = torch.tensor([[10.0, 10.0, 20.0, 20.0]])
    logits = torch.tensor([[0.0, 5.0, 0.0]])
    deltas = torch.tensor([[0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 5 * math.log(2.0), 0.0]])  # class 1: dx 0.1, w x2
    det = detections_from_outputs(logits, deltas, props, (100, 100), score_threshold=0.2)
    assert det.labels.tolist() == [1]
    torch.testing.assert_close(det.boxes, torch.tensor([[6.0, 10.0, 26.0, 20.0]]))


def _cfg(**kw):
    base = dict(in_channels=4, fc_dim=16, num_classes=3, pooler_strides=(4, 8), batch_size_per_image=32)
    base.update(kw)
    return BoxHeadConfig(**base)


def test_predictor_variants_and_per_class_weights():
    x = torch.randn(5, 16)
    p = BoxPredictor(_cfg())
    logits, deltas = p(x)
    assert logits.shape == (5, 4) and deltas.shape == (5, 12)
    cls_w, box_w = p.per_class_weights()
    assert cls_w.shape == (3, 16) and box_w.shape == (3, 4, 16)
    torch.testing.assert_close(cls_w[1], p.cls_score.weight[1])
    torch.testing.assert_close(box_w[2, 1], p.bbox_pred.weight[9])  # class 2, dy
    torch.testing.assert_close(deltas[:, 8:12], x @ box_w[2].t() + p.bbox_pred.bias[8:12])
    agn = BoxPredictor(_cfg(predictor="class-agnostic"))
    assert agn(x)[1].shape == (5, 4) and agn.per_class_weights()[1] is None
    ov = BoxPredictor(_cfg(predictor="open-vocab", embed_dim=6))
    emb = torch.randn(7, 6)
    logits, deltas = ov(x, emb)
    assert logits.shape == (5, 8) and deltas.shape == (5, 4)
    assert torch.equal(logits[:, -1], torch.zeros(5))  # zero background embedding -> logit 0
    # swapping the vocabulary permutes the class columns, background stays last
    perm = torch.tensor([3, 0, 6, 1, 5, 2, 4])
    logits2, _ = ov(x, emb[perm])
    torch.testing.assert_close(logits2[:, :7], logits[:, perm])
    with pytest.raises(ValueError):
        ov(x)
    with pytest.raises(ValueError):
        p(x, emb)
    with pytest.raises(ValueError):
        ov.per_class_weights()
    with pytest.raises(ValueError):
        BoxPredictor(_cfg(predictor="mystery"))
    with pytest.raises(ValueError):
        BoxPredictor(_cfg(predictor="open-vocab", background="none"))


def _head(**kw):
    torch.manual_seed(0)
    cfg = _cfg(**kw)
    return RoIBoxHead(box_head=FCBoxHead(4, 7, 16), predictor=BoxPredictor(cfg), cfg=cfg)


def test_roi_box_head_train_and_predict():
    head = _head()
    feats = [torch.randn(2, 4, 16, 16), torch.randn(2, 4, 8, 8)]
    gt = torch.tensor([[4.0, 4.0, 30.0, 30.0], [32.0, 8.0, 60.0, 40.0]])
    targets = [
        BoxTargets(gt, torch.tensor([0, 2]), torch.tensor([True, False]), torch.zeros(0, 4)),
        BoxTargets(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.bool),
                   torch.zeros(0, 4)),
    ]
    props = [Proposals(torch.cat([gt, gt + 1, torch.tensor([[0.0, 40.0, 20.0, 60.0]])]), torch.zeros(5)),
             Proposals(torch.tensor([[0.0, 0.0, 20.0, 20.0]]), torch.zeros(1))]
    losses = head(feats, props, targets, generator=torch.Generator().manual_seed(0))
    assert set(losses) == {"loss_cls", "loss_box_reg"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert head.predictor.cls_score.weight.grad.abs().sum() > 0
    # no exact boxes anywhere -> regression exactly 0, classification still trains
    only_bg = head(feats, [props[1], props[1]], [targets[1], targets[1]])
    assert only_bg["loss_box_reg"].item() == 0.0 and only_bg["loss_cls"].item() > 0
    dets = head.predict(feats, props, [(64, 64), (64, 64)], return_features=True)
    assert len(dets) == 2
    for d in dets:
        n = len(d)
        assert d.boxes.shape == (n, 4) and d.scores.shape == (n,) and d.labels.shape == (n,)
        assert d.box_features.shape == (n, 16)
        assert bool(((d.scores > 0.05) & (d.scores <= 1)).all()) and bool((d.labels < 3).all())
        assert bool((d.boxes[:, 2:] <= 64).all())
    assert len(dets[0]) > 0


def test_roi_box_head_open_vocab_calibrated():
    head = _head(predictor="open-vocab", embed_dim=6, calibrate_with_objectness=True, score_threshold=0.0)
    feats = [torch.randn(1, 4, 16, 16), torch.randn(1, 4, 8, 8)]
    props = [Proposals(torch.tensor([[4.0, 4.0, 30.0, 30.0], [30.0, 30.0, 60.0, 60.0]]), torch.tensor([0.0, -50.0]))]
    emb = torch.randn(3, 6)
    (d,) = head.predict(feats, props, [(64, 64)], emb)
    assert len(d) > 0 and bool((d.scores <= math.sqrt(0.5) + 1e-6).all())
    low = d.scores[d.roi_index == 1]
    assert bool((low < 1e-10).all())  # objectness sigmoid(-50) ~ 0 pulls the geometric mean down
    targets = [BoxTargets(props[0].boxes[:1], torch.tensor([1]), torch.tensor([True]), torch.zeros(0, 4))]
    losses = head(feats, props, targets, emb)
    assert all(torch.isfinite(v) for v in losses.values())


def test_label_and_sample_targets_decode_to_gt():
    head = _head(batch_size_per_image=8, positive_fraction=0.5)
    gt = torch.tensor([[4.0, 4.0, 30.0, 30.0], [32.0, 8.0, 60.0, 40.0]])
    t = BoxTargets(gt, torch.tensor([1, 2]), torch.tensor([True, False]), torch.zeros(0, 4), torch.tensor([3, 0]))
    props = Proposals(torch.cat([gt + 1, gt, torch.tensor([[0.0, 40.0, 20.0, 60.0]] * 10)]), torch.zeros(14))
    (s,) = head.label_and_sample([props], [t], 3, torch.Generator().manual_seed(0))
    assert s.boxes.shape == (8, 4) and int(s.is_fg.sum()) == 4 and bool(s.is_fg[:4].all())
    assert bool((s.labels[4:] == 3).all())
    assert torch.equal(s.labels[:4], t.labels[s.matched[:4]])
    assert torch.equal(s.regress, s.is_fg & (s.matched == 0))  # only gt 0 is exact
    r = s.regress
    decoded = decode_boxes(s.target_deltas[r], s.boxes[r], head.cfg.box_weights)
    torch.testing.assert_close(decoded, gt[s.matched[r]])
    assert s.target_deltas[~r].abs().sum() == 0


def test_fc_box_head_equals_out_of_place_reference():
    """The in-place ReLUs give the same features and gradients as flatten -> (linear -> relu) x 2."""
    torch.manual_seed(4)
    head = FCBoxHead(3, 2, 5)
    x = torch.randn(7, 3, 2, 2, requires_grad=True)
    y = head(x)
    ref = x.flatten(1)
    for fc in head.fcs:
        ref = F.relu(fc(ref))
    assert torch.equal(y, ref) and (y == 0).any() and (y > 0).any()
    params = [x, *head.parameters()]
    g = torch.randn(y.shape)
    assert all(torch.equal(a, b) for a, b in zip(torch.autograd.grad((y * g).sum(), params),
                                                 torch.autograd.grad((ref * g).sum(), params)))
    assert head(torch.zeros(0, 3, 2, 2)).shape == (0, 5)
