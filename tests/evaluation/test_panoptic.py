import math

import numpy as np
import pytest

from omniseg.data.records import Category, ImageRecord, RecordSet, Segment
from omniseg.evaluation.panoptic import panoptic_quality
from omniseg.ops.rle import rle_encode

CATS = [Category(1, "person"), Category(2, "grass", isthing=False), Category(3, "dog")]
ISTHING = {1: True, 2: False, 3: True}


def seg(cat, mask, crowd=False):
    return Segment(
        str(cat), cat, rle_encode(np.asarray(mask, np.uint8)), is_thing=ISTHING.get(cat, True), is_crowd=crowd
    )


def box(r0, r1, c0, c1, h=4, w=4):
    m = np.zeros((h, w), np.uint8)
    m[r0:r1, c0:c1] = 1
    return m


def rec(image_id, segments, h=4, w=4):
    return ImageRecord(image_id, f"{image_id}.png", w, h, segments=segments)


def ref_pq(gts, preds, isthing):
    """Slow reference with boolean masks, straight from the COCO panoptic definition."""
    stats = {c: [0.0, 0, 0, 0] for c in isthing}  # iou_sum, tp, fp, fn
    for g_rec, p_rec in zip(gts, preds):
        from omniseg.ops.rle import rle_decode

        g = [(s.category_id, s.is_crowd, rle_decode(s.mask).astype(bool)) for s in g_rec.segments]
        p = [(s.category_id, rle_decode(s.mask).astype(bool)) for s in p_rec.segments]
        void = np.ones((g_rec.height, g_rec.width), bool)
        for _, _, m in g:
            void &= ~m
        g_hit, p_hit = set(), set()
        for i, (gc, crowd, gm) in enumerate(g):
            for j, (pc, pm) in enumerate(p):
                if crowd or gc != pc:
                    continue
                iou = (gm & pm).sum() / ((gm | pm).sum() - (pm & void).sum())
                if iou > 0.5:
                    stats[gc][0] += iou
                    stats[gc][1] += 1
                    g_hit.add(i)
                    p_hit.add(j)
        for i, (gc, crowd, _) in enumerate(g):
            if not crowd and i not in g_hit:
                stats[gc][3] += 1
        for j, (pc, pm) in enumerate(p):
            if j in p_hit:
                continue
            crowd = np.zeros_like(pm)
            for gc, c, gm in g:
                if c and gc == pc:
                    crowd |= gm
            if ((pm & void).sum() + (pm & crowd).sum()) / pm.sum() > 0.5:
                continue
            stats[pc][2] += 1
    pqs = {}
    for c, (s, tp, fp, fn) in stats.items():
        if tp + fp + fn:
            pqs[c] = s / (tp + 0.5 * fp + 0.5 * fn)
    return float(np.mean(list(pqs.values()))) if pqs else math.nan, pqs


GT = rec(1, [seg(1, box(0, 2, 0, 2)), seg(2, box(2, 4, 0, 4))])  # top-right 2x2 is VOID


def test_perfect():
    res = panoptic_quality([GT], [rec(1, list(GT.segments))], CATS)
    assert (res["PQ"], res["SQ"], res["RQ"]) == (1.0, 1.0, 1.0)
    assert (res["PQ_th"], res["PQ_st"], res["n_th"], res["n_st"]) == (1.0, 1.0, 1, 1)


def test_empty_prediction_is_all_false_negatives():
    res = panoptic_quality(RecordSet([GT], CATS), RecordSet([rec(1, [])], CATS), CATS)
    assert res["PQ"] == 0.0 and res["SQ"] == 0.0 and res["RQ"] == 0.0
    assert res["per_class"][1]["FN"] == 1 and res["per_class"][2]["FN"] == 1
    # a missing prediction record is the same as an empty one
    assert panoptic_quality([GT], [], CATS)["PQ"] == 0.0
    nothing = panoptic_quality([], [], CATS)
    assert math.isnan(nothing["PQ"]) and nothing["n"] == 0


def test_one_false_positive_and_partial_stuff():
    pred = rec(1, [seg(1, box(0, 2, 0, 2)), seg(2, box(2, 4, 0, 3)), seg(3, box(2, 4, 3, 4))])
    res = panoptic_quality([GT], [pred], CATS)
    # person 1.0 ; grass IoU 6/8 -> SQ .75 RQ 1 ; dog: one FP -> 0
    assert res["per_class"][2]["SQ"] == pytest.approx(0.75)
    assert res["per_class"][3] == {"PQ": 0.0, "SQ": 0.0, "RQ": 0.0, "TP": 0, "FP": 1, "FN": 0}
    assert res["PQ"] == pytest.approx((1 + 0.75 + 0) / 3)
    assert res["PQ_th"] == pytest.approx(0.5) and res["PQ_st"] == pytest.approx(0.75)
    assert res["RQ"] == pytest.approx(2 / 3) and res["SQ"] == pytest.approx(1.75 / 3)


def test_void_pixels_leave_the_union_and_void_predictions_are_not_fp():
    pred = rec(1, [seg(1, box(0, 2, 0, 3)), seg(3, box(0, 2, 3, 4)), seg(2, box(2, 4, 0, 4))])
    res = panoptic_quality([GT], [pred], CATS)
    # person covers its 4 px + 2 VOID px: IoU 4 / (6 + 4 - 4 - 2) = 1 ; dog lies on VOID only
    assert res["per_class"][1]["SQ"] == 1.0
    assert 3 not in res["per_class"]
    assert res["PQ"] == 1.0


def test_crowd_regions():
    gt = rec(1, [seg(1, box(0, 2, 0, 2)), seg(2, box(2, 4, 0, 4)), seg(1, box(0, 2, 2, 4), crowd=True)])
    pred_same = rec(1, [seg(1, box(0, 2, 0, 2)), seg(1, box(0, 2, 2, 4)), seg(2, box(2, 4, 0, 4))])
    res = panoptic_quality([gt], [pred_same], CATS)
    assert res["per_class"][1] == {"PQ": 1.0, "SQ": 1.0, "RQ": 1.0, "TP": 1, "FP": 0, "FN": 0}
    pred_other = rec(1, [seg(1, box(0, 2, 0, 2)), seg(3, box(0, 2, 2, 4)), seg(2, box(2, 4, 0, 4))])
    res = panoptic_quality([gt], [pred_other], CATS)
    assert res["per_class"][3]["FP"] == 1  # crowd of another class does not excuse it
    assert res["per_class"][1]["FN"] == 0  # the crowd segment itself is never a false negative


def test_iou_exactly_half_does_not_match():
    pred = rec(1, [seg(1, box(0, 4, 0, 2)), seg(2, box(2, 4, 2, 4))])
    res = panoptic_quality([GT], [pred], CATS)
    for c in (1, 2):
        assert res["per_class"][c]["TP"] == 0 and res["per_class"][c]["FP"] == 1
        assert res["per_class"][c]["FN"] == 1
    assert res["PQ"] == 0.0


def label_map_records(rng, image_id, h, w):
    coarse = rng.integers(0, 6, size=(h // 2, w // 2))
    gt_map = np.kron(coarse, np.ones((2, 2), int))
    cat_of = {i: int(rng.integers(1, 4)) for i in range(1, 6)}
    crowd = {i: bool(rng.random() < 0.2) for i in range(1, 6)}
    g = [
        seg(cat_of[i], gt_map == i, crowd[i] and ISTHING[cat_of[i]])
        for i in range(1, 6)
        if (gt_map == i).any()
    ]
    noisy = np.where(rng.random((h, w)) < 0.25, rng.integers(0, 6, size=(h, w)), gt_map)
    pcat = {i: cat_of[i] if rng.random() < 0.8 else int(rng.integers(1, 4)) for i in range(1, 6)}
    p = [seg(pcat[i], noisy == i) for i in range(1, 6) if (noisy == i).any()]
    return rec(image_id, g, h, w), rec(image_id, p, h, w)


def test_random_against_reference():
    rng = np.random.default_rng(0)
    pairs = [label_map_records(rng, i, 8, 10) for i in range(6)]
    gts, preds = [a for a, _ in pairs], [b for _, b in pairs]
    res = panoptic_quality(gts, preds, ISTHING)
    ref, ref_per = ref_pq(gts, preds, ISTHING)
    assert res["PQ"] == pytest.approx(ref)
    assert {c: v["PQ"] for c, v in res["per_class"].items()} == pytest.approx(ref_per)


def test_errors():
    overlapping = rec(1, [seg(1, box(0, 2, 0, 2)), seg(3, box(1, 3, 1, 3))])
    with pytest.raises(ValueError, match="image 1: predicted segments 1 overlaps"):
        panoptic_quality([GT], [overlapping], CATS)
    with pytest.raises(ValueError, match="unknown category 7"):
        panoptic_quality([GT], [rec(1, [seg(7, box(0, 1, 0, 1))])], CATS)
    with pytest.raises(ValueError, match="not in the ground truth"):
        panoptic_quality([GT], [rec(2, [])], CATS)
    with pytest.raises(ValueError, match="mask is"):
        panoptic_quality([GT], [rec(1, [seg(1, box(0, 1, 0, 1, h=5))])], CATS)
