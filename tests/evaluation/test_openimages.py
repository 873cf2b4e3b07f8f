import math

import numpy as np
import pytest

from omniseg.data.records import Category, ImageRecord, Instance, RecordSet
from omniseg.evaluation.openimages import box_ioa, openimages_ap50, voc_average_precision
from omniseg.ops.rle import rle_encode

CATS = [Category(1, "car"), Category(2, "tree")]


def g(box, cat=1, group=False, mask=None):
    return Instance("x", cat, box, mask=mask, is_crowd=group)


def d(box, score, cat=1, mask=None):
    return Instance("x", cat, box, mask=mask, score=score)


def rs(*lists):
    return RecordSet([ImageRecord(i, f"{i}.jpg", 100, 100, list(x)) for i, x in enumerate(lists)], CATS)


def ref_ap(scores, tps, num_gt):
    """Slow reference: AP = sum over recall steps of the best precision at recall >= r."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    points = []
    tp = fp = 0
    for i in order:
        tp += tps[i]
        fp += not tps[i]
        points.append((tp / num_gt, tp / (tp + fp)))
    ap, prev_r = 0.0, 0.0
    for r, _ in points:
        if r > prev_r:
            ap += (r - prev_r) * max(p for rr, p in points if rr >= r)
            prev_r = r
    return ap


def test_voc_ap_hand_and_reference():
    assert voc_average_precision(np.array([0.9, 0.8]), np.array([False, True]), 1) == pytest.approx(0.5)
    assert voc_average_precision(np.array([0.9, 0.8]), np.array([True, False]), 1) == 1.0
    # TP, FP, TP with 4 positives: 0.25 * 1 + 0.25 * 2/3
    assert voc_average_precision(np.array([3, 2, 1.0]), np.array([True, False, True]), 4) == pytest.approx(
        0.25 + 0.25 * 2 / 3
    )
    assert math.isnan(voc_average_precision(np.array([]), np.array([], bool), 0))
    assert voc_average_precision(np.array([]), np.array([], bool), 3) == 0.0
    rng = np.random.default_rng(0)
    for _ in range(5):
        s = rng.random(15)
        t = rng.random(15) < 0.5
        n = int(t.sum()) + 2
        assert voc_average_precision(s, t, n) == pytest.approx(ref_ap(s.tolist(), t.tolist(), n))


def test_box_ioa():
    out = box_ioa(np.array([[0, 0, 10, 10], [5, 5, 15, 15], [1, 1, 1, 5]]), np.array([[0, 0, 10, 10]]))
    assert out[:, 0].tolist() == pytest.approx([1.0, 0.25, 0.0])


def test_perfect_empty_and_one_false_positive():
    gt = rs([g((0, 0, 10, 10)), g((50, 50, 80, 80), cat=2)])
    perfect = rs([d((0, 0, 10, 10), 0.9), d((50, 50, 80, 80), 0.8, cat=2)])
    res = openimages_ap50(gt, perfect)
    assert res["AP50"] == 1.0 and res["per_class"] == {1: 1.0, 2: 1.0} and res["num_classes"] == 2
    assert openimages_ap50(gt, rs([]))["AP50"] == 0.0
    fp_first = rs([d((0, 0, 10, 10), 0.5), d((30, 30, 40, 40), 0.9), d((50, 50, 80, 80), 0.8, cat=2)])
    res = openimages_ap50(gt, fp_first)
    assert res["per_class"][1] == pytest.approx(0.5) and res["AP50"] == pytest.approx(0.75)


def test_duplicates_are_false_positives_and_iou_threshold():
    gt = rs([g((0, 0, 10, 10))])
    res = openimages_ap50(gt, rs([d((0, 0, 10, 10), 0.5), d((0, 0, 10, 9), 0.9)]))
    assert res["AP50"] == 1.0  # the higher-scored one takes the box, the duplicate comes after
    res = openimages_ap50(gt, rs([d((0, 0, 10, 10), 0.9), d((0, 0, 10, 9), 0.95), d((0, 0, 10, 10), 0.99)]))
    assert res["AP50"] == 1.0
    # order TP(0.99) DUP(0.95) ... precision stays 1 at the only recall step
    assert openimages_ap50(gt, rs([d((0, 0, 10, 4.9), 0.9)]))["AP50"] == 0.0  # IoU 0.49
    assert openimages_ap50(gt, rs([d((0, 0, 10, 5), 0.9)]))["AP50"] == 1.0  # IoU 0.5 counts


def test_group_of_boxes():
    gt = rs([g((0, 0, 50, 50), group=True)])
    inside = rs([d((0, 0, 10, 10), 0.3), d((20, 20, 30, 30), 0.6), d((40, 40, 50, 50), 0.2)])
    res = openimages_ap50(gt, inside)
    assert res["AP50"] == 1.0  # three detections in the group: one TP, no FP
    # a normal box detected + a group-of box nobody detected: recall tops at 1/2
    gt2 = rs([g((0, 0, 50, 50), group=True), g((60, 60, 90, 90))])
    assert openimages_ap50(gt2, rs([d((60, 60, 90, 90), 0.9)]))["AP50"] == pytest.approx(0.5)
    # a detection mostly outside the group (IoA 0.25) is a false positive, scored above the TP
    outside = rs([d((40, 40, 60, 60), 0.9), d((10, 10, 20, 20), 0.5)])
    assert openimages_ap50(gt, outside)["AP50"] == pytest.approx(0.5)
    # group-of box of another class does not absorb detections
    gt3 = rs([g((0, 0, 50, 50), cat=2, group=True), g((60, 60, 90, 90))])
    res = openimages_ap50(gt3, rs([d((60, 60, 90, 90), 0.5), d((0, 0, 10, 10), 0.9)]))
    assert res["per_class"][1] == pytest.approx(0.5) and res["per_class"][2] == 0.0


def test_max_dets_per_image():
    gt = rs([g((0, 0, 10, 10)), g((50, 50, 60, 60), cat=2)])
    preds = rs([d((0, 0, 10, 10), 0.9), d((50, 50, 60, 60), 0.1, cat=2)])
    assert openimages_ap50(gt, preds, max_dets=1)["per_class"] == {1: 1.0, 2: 0.0}
    assert openimages_ap50(gt, preds, max_dets=2)["AP50"] == 1.0


def test_class_without_gt_is_left_out_and_errors():
    gt = rs([g((0, 0, 10, 10))])
    res = openimages_ap50(gt, rs([d((0, 0, 10, 10), 0.9), d((0, 0, 10, 10), 0.8, cat=2)]))
    assert math.isnan(res["per_class"][2]) and res["AP50"] == 1.0 and res["num_classes"] == 1
    with pytest.raises(ValueError, match="image 0: prediction 0 needs score"):
        openimages_ap50(gt, rs([Instance("x", 1, (0, 0, 1, 1))]))
    with pytest.raises(ValueError, match="not in the ground truth"):
        openimages_ap50(gt, rs([], []))


def test_segm_with_group_of_mask():
    big = np.zeros((100, 100), np.uint8)
    big[0:50, 0:50] = 1
    small = np.zeros((100, 100), np.uint8)
    small[10:20, 10:20] = 1
    gt = rs([g((0, 0, 50, 50), group=True, mask=rle_encode(big))])
    res = openimages_ap50(gt, rs([d(None, 0.7, mask=rle_encode(small))]), iou_type="segm")
    assert res["AP50"] == 1.0
    res = openimages_ap50(gt, rs([d(None, 0.7, mask=rle_encode(1 - big))]), iou_type="segm")
    assert res["AP50"] == 0.0
