import math

import numpy as np
import pytest

from omniseg.data.records import ImageRecord, Instance, RecordSet
from omniseg.evaluation.proposals import box_iou, proposal_recall
from omniseg.ops.rle import rle_encode


def ref_box_iou(a, b):
    ax0, ay0, ax1, ay1 = a
    bx0, by0, bx1, by1 = b
    iw = max(0.0, min(ax1, bx1) - max(ax0, bx0))
    ih = max(0.0, min(ay1, by1) - max(ay0, by0))
    inter = iw * ih
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    return inter / union if union > 0 else 0.0


def ref_recall(gt_boxes, prop_boxes_scores, n, t):
    """Best-overlap recall, pure Python."""
    hit = total = 0
    for gts, props in zip(gt_boxes, prop_boxes_scores):
        top = [b for b, _ in sorted(props, key=lambda p: -p[1])[:n]]
        for g in gts:
            total += 1
            if any(ref_box_iou(g, p) >= t for p in top):
                hit += 1
    return hit / total


def gt_inst(box, crowd=False, mask=None):
    return Instance("obj", 1, box, mask=mask, is_crowd=crowd)


def prop(box, score, mask=None):
    return Instance("object", None, box, mask=mask, score=score)


def rs(*instance_lists):
    return RecordSet(
        [ImageRecord(i, f"{i}.jpg", 100, 100, list(insts)) for i, insts in enumerate(instance_lists)]
    )


def test_box_iou_hand_and_reference():
    a = np.array([[0, 0, 10, 10], [5, 5, 15, 15]], float)
    b = np.array([[0, 0, 10, 10], [0, 0, 10, 5], [20, 20, 30, 30], [3, 3, 3, 8]], float)
    out = box_iou(a, b)
    assert out[0].tolist() == pytest.approx([1.0, 0.5, 0.0, 0.0])
    assert out[1, 0] == pytest.approx(25 / 175)
    for i in range(2):
        for j in range(4):
            assert out[i, j] == pytest.approx(ref_box_iou(a[i], b[j]))
    assert box_iou(np.zeros((0, 4)), b).shape == (0, 4)


def test_hand_worked_recall_and_ordering():
    gt = rs([gt_inst((0, 0, 10, 10)), gt_inst((50, 50, 60, 60)), gt_inst((0, 0, 99, 99), crowd=True)])
    # IoU 0.8 with gt 0 at low score; exact hit on gt 1 at high score; junk in between
    props = rs([prop((0, 0, 10, 8), 0.1), prop((50, 50, 60, 60), 0.9), prop((80, 80, 90, 90), 0.5)])
    res = proposal_recall(gt, props, num_proposals=(1, 2, 3), ious=(0.5, 0.7, 0.9))
    assert res["num_gt"] == 2  # crowd left out
    assert (res["R50@1"], res["R70@1"], res["R90@1"]) == (0.5, 0.5, 0.5)
    assert (res["R50@2"], res["R90@2"]) == (0.5, 0.5)  # 2nd proposal is the junk box
    assert (res["R50@3"], res["R70@3"], res["R90@3"]) == (1.0, 1.0, 0.5)
    assert res["AR@3"] == pytest.approx(2.5 / 3)


def test_one_to_one_vs_best_overlap():
    gt = rs([gt_inst((0, 0, 10, 10)), gt_inst((0, 0, 10, 10))])
    props = rs([prop((0, 0, 10, 10), 0.9)])
    assert proposal_recall(gt, props, (10,), (0.5,))["R50@10"] == 1.0
    assert proposal_recall(gt, props, (10,), (0.5,), one_to_one=True)["R50@10"] == 0.5


def test_empty_cases():
    gt = rs([gt_inst((0, 0, 10, 10))], [])
    res = proposal_recall(gt, rs([], []), (5,), (0.5,))
    assert res["R50@5"] == 0.0 and res["AR@5"] == 0.0
    res = proposal_recall(rs([]), rs([prop((0, 0, 1, 1), 1.0)]), (5,), (0.5,))
    assert math.isnan(res["R50@5"]) and res["num_gt"] == 0
    with pytest.raises(ValueError, match="not in the ground truth"):
        proposal_recall(rs([]), rs([], []), (5,), (0.5,))
    with pytest.raises(ValueError, match="iou_type"):
        proposal_recall(gt, gt, iou_type="poly")


def test_random_against_reference():
    rng = np.random.default_rng(0)
    gts, props, gt_boxes, prop_lists = [], [], [], []
    for _ in range(5):
        g = [
            tuple(float(v) for v in (x, y, x + w, y + h))
            for x, y, w, h in rng.uniform(0, 40, (4, 4)) + [0, 0, 5, 5]
        ]
        p = [
            (
                tuple(float(v) for v in np.array(g[rng.integers(0, 4)]) + rng.normal(0, 3, 4)),
                float(rng.random()),
            )
            for _ in range(12)
        ]
        gts.append([gt_inst(b) for b in g])
        props.append([prop(b, s) for b, s in p])
        gt_boxes.append(g)
        prop_lists.append(p)
    res = proposal_recall(rs(*gts), rs(*props), (1, 5, 12), (0.5, 0.7, 0.9))
    for n in (1, 5, 12):
        for t in (0.5, 0.7, 0.9):
            assert res[f"R{round(t * 100)}@{n}"] == pytest.approx(ref_recall(gt_boxes, prop_lists, n, t))
    assert 0 < res["R70@5"] < 1


def test_segm_recall_and_skips():
    m = np.zeros((100, 100), np.uint8)
    m[0:10, 0:10] = 1
    half = np.zeros((100, 100), np.uint8)
    half[0:10, 0:6] = 1  # mask IoU 0.6
    gt = rs([gt_inst((0, 0, 10, 10), mask=rle_encode(m)), gt_inst((20, 20, 30, 30))])  # 2nd has no mask
    props = rs([prop((0, 0, 10, 10), 0.3, mask=rle_encode(half)), prop((20, 20, 30, 30), 0.9)])
    res = proposal_recall(gt, props, (10,), (0.5, 0.7), iou_type="segm")
    assert res["num_gt"] == 1 and res["num_gt_skipped"] == 1 and res["num_proposals_skipped"] == 1
    assert (res["R50@10"], res["R70@10"]) == (1.0, 0.0)
    # the same pair as boxes: exact match
    assert proposal_recall(gt, props, (10,), (0.7,))["R70@10"] == 1.0
