import math

import numpy as np
import pytest
import torch

from omniseg.data.records import Segment
from omniseg.evaluation.semantic import (
    ConfusionMatrix,
    grounding_argmax,
    grounding_miou,
    segments_to_label_map,
    semantic_miou,
)
from omniseg.ops.rle import rle_encode

IGN = 255


def ref_miou(gts, preds, num_classes, ignore=IGN):
    """Slow reference: count TP / FP / FN pixel by pixel over the whole dataset."""
    tp = [0] * num_classes
    fp = [0] * num_classes
    fn = [0] * num_classes
    for g, p in zip(gts, preds):
        for gv, pv in zip(np.asarray(g).ravel().tolist(), np.asarray(p).ravel().tolist()):
            if gv == ignore:
                continue
            if gv == pv:
                tp[gv] += 1
            else:
                fn[gv] += 1
                if pv != ignore:
                    fp[pv] += 1
    ious = [tp[c] / (tp[c] + fp[c] + fn[c]) if tp[c] + fp[c] + fn[c] else None for c in range(num_classes)]
    defined = [v for v in ious if v is not None]
    return (sum(defined) / len(defined) if defined else math.nan), ious


def ref_grounding_pred(scores, gt, ignore=IGN):
    """Slow reference: per pixel, best-scoring class among those present in gt."""
    present = sorted({int(v) for v in np.asarray(gt).ravel() if v != ignore})
    k, h, w = scores.shape
    out = np.zeros((h, w), dtype=np.int64)
    for y in range(h):
        for x in range(w):
            best = max(present, key=lambda c: (scores[c, y, x], -c))
            out[y, x] = best
    return out


def test_hand_worked_two_by_two():
    gt = np.array([[0, 0], [1, 1]])
    pred = np.array([[0, 1], [1, 1]])
    # class 0: TP 1, FN 1 -> 1/2 ; class 1: TP 2, FP 1 -> 2/3
    res = semantic_miou([gt], [pred], num_classes=2)
    assert res["per_class_iou"] == pytest.approx([0.5, 2 / 3])
    assert res["mIoU"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert res["pAcc"] == pytest.approx(3 / 4)
    assert res["mAcc"] == pytest.approx((0.5 + 1.0) / 2)


def test_perfect_and_absent_classes():
    gt = np.array([[0, 2], [2, 0]])
    res = semantic_miou([gt], [gt.copy()], num_classes=4)
    assert res["mIoU"] == 1.0
    # classes 1 and 3 are neither in GT nor predicted: undefined, left out of the mean
    assert math.isnan(res["per_class_iou"][1]) and math.isnan(res["per_class_iou"][3])


def test_false_positive_class_counts_as_zero():
    gt = np.array([[0, 0], [0, 0]])
    pred = np.array([[0, 0], [0, 1]])  # class 1 predicted but absent: IoU 0, included
    res = semantic_miou([gt], [pred], num_classes=2)
    assert res["per_class_iou"] == pytest.approx([0.75, 0.0])
    assert res["mIoU"] == pytest.approx(0.375)


def test_ignore_index_in_gt_and_pred():
    gt = np.array([[0, IGN], [1, 1]])
    pred = np.array([[1, 1], [IGN, 1]])  # ignored gt pixel not counted; IGN prediction = miss
    # class 0: TP0 FN1 -> 0 ; class 1: TP1 FP1 (pixel (0,0)) FN1 (the IGN prediction) -> 1/3
    res = semantic_miou([gt], [pred], num_classes=2)
    assert res["per_class_iou"] == pytest.approx([0.0, 1 / 3])
    ref, _ = ref_miou([gt], [pred], 2)
    assert res["mIoU"] == pytest.approx(ref)


def test_random_against_reference():
    rng = np.random.default_rng(0)
    gts, preds = [], []
    for _ in range(4):
        g = rng.integers(0, 5, size=(7, 9))
        g[rng.random(g.shape) < 0.1] = IGN
        p = np.where(rng.random(g.shape) < 0.6, g, rng.integers(0, 5, size=g.shape))
        p[rng.random(g.shape) < 0.05] = IGN
        gts.append(g)
        preds.append(p)
    res = semantic_miou(gts, preds, num_classes=5)
    ref, ref_ious = ref_miou(gts, preds, 5)
    assert res["mIoU"] == pytest.approx(ref)
    for a, b in zip(res["per_class_iou"], ref_ious):
        assert (math.isnan(a) and b is None) or a == pytest.approx(b)


def test_accumulates_over_dataset_not_per_image():
    # image A: class 0 perfect on 1 pixel ; image B: class 0, 3 pixels, all predicted 1
    gts = [np.array([[0]]), np.array([[0, 0, 0]])]
    preds = [np.array([[0]]), np.array([[1, 1, 1]])]
    res = semantic_miou(gts, preds, num_classes=2)
    assert res["per_class_iou"][0] == pytest.approx(1 / 4)  # not mean(1, 0) = 0.5


def test_torch_inputs_and_empty():
    gt = torch.tensor([[0, 1]])
    assert semantic_miou([gt], [gt.clone()], num_classes=2)["mIoU"] == 1.0
    res = semantic_miou([], [], num_classes=3)
    assert math.isnan(res["mIoU"]) and math.isnan(res["pAcc"])


def test_errors():
    with pytest.raises(ValueError, match="shape"):
        semantic_miou([np.zeros((2, 2), int)], [np.zeros((2, 3), int)], 2)
    with pytest.raises(ValueError, match="ground-truth label outside"):
        semantic_miou([np.array([[5]])], [np.array([[0]])], 2)
    with pytest.raises(ValueError, match="image 0"):
        semantic_miou([np.array([[0]])], [np.array([[7]])], 2)
    with pytest.raises(ValueError, match="collides"):
        ConfusionMatrix(3, ignore_index=1)
    with pytest.raises(ValueError, match="2 ground-truth maps"):
        semantic_miou([np.zeros((1, 1), int)] * 2, [np.zeros((1, 1), int)], 2)


def test_grounding_restricts_queries_hand_worked():
    gt = np.array([[0, 0], [1, 1]])
    scores = np.zeros((3, 2, 2))
    scores[2] = 10.0  # an absent class wins everywhere in the fixed vocabulary
    scores[0] = [[2, 1], [1, 0]]
    scores[1] = [[1, 2], [0, 1]]
    # restricted argmax over {0, 1}: [[0, 1], [0, 1]]
    assert grounding_argmax(scores, [0, 1]).tolist() == [[0, 1], [0, 1]]
    g = grounding_miou([gt], [scores], num_classes=3)
    # class 0: TP1 FP1 FN1 -> 1/3 ; class 1: same -> 1/3 ; class 2: undefined
    assert g["per_class_iou"][:2] == pytest.approx([1 / 3, 1 / 3])
    assert math.isnan(g["per_class_iou"][2])
    assert g["mIoU"] == pytest.approx(1 / 3)
    # the fixed-vocabulary mIoU of the same scores is 0 (class 2 everywhere)
    fixed = semantic_miou([gt], [scores.argmax(0)], num_classes=3)
    assert fixed["mIoU"] == 0.0


def test_grounding_random_against_reference_and_skips():
    rng = np.random.default_rng(1)
    gts = [rng.integers(0, 3, size=(4, 5)) for _ in range(3)] + [np.full((2, 2), IGN)]
    gts[1][0, :] = IGN
    scores = [rng.normal(size=(6, *g.shape)) for g in gts]
    res = grounding_miou(gts, [torch.from_numpy(s) for s in scores], num_classes=6)
    ref, _ = ref_miou(gts[:3], [ref_grounding_pred(s, g) for s, g in zip(scores[:3], gts[:3])], 6)
    assert res["mIoU"] == pytest.approx(ref)
    assert res["num_images_skipped"] == 1
    with pytest.raises(ValueError, match="scores must be"):
        grounding_miou([gts[0]], [scores[0][:2]], num_classes=6)


def test_segments_to_label_map():
    a = np.zeros((3, 3), np.uint8)
    a[0] = 1
    b = np.zeros((3, 3), np.uint8)
    b[:, 2] = 1
    segs = [
        Segment("sky", 10, rle_encode(a)),
        Segment("tree", 20, rle_encode(b), is_crowd=True),
        Segment("unknown", 99, rle_encode(np.eye(3, dtype=np.uint8))),
    ]
    out = segments_to_label_map(segs, 3, 3, {10: 0, 20: 1})
    assert out.tolist() == [[IGN, 0, 1], [IGN, IGN, 1], [IGN, IGN, IGN]]
    with pytest.raises(ValueError, match="mask is"):
        segments_to_label_map(segs, 4, 3, {10: 0})
