import math

import numpy as np
import pytest

from omniseg.data.records import Category, ImageRecord, Instance, RecordSet
from omniseg.evaluation.instance import as_groups, build_coco_inputs, evaluate_instances
from omniseg.ops.rle import rle_encode

CATS = [Category(1, "cat"), Category(2, "dog"), Category(3, "bird")]
H = W = 128
ENGINES = ("faster", "pycocotools")
KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR")


def box_mask(b):
    m = np.zeros((H, W), np.uint8)
    m[int(b[1]) : int(b[3]), int(b[0]) : int(b[2])] = 1
    return rle_encode(m)


def inst(b, cat=1, score=None, crowd=False, mask=True):
    return Instance(
        str(cat), cat, tuple(map(float, b)), mask=box_mask(b) if mask else None, score=score, is_crowd=crowd
    )


def rs(*lists, ids=None):
    ids = ids or list(range(len(lists)))
    return RecordSet([ImageRecord(i, f"{i}.jpg", W, H, list(x)) for i, x in zip(ids, lists)], CATS)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("iou_type", ("bbox", "segm"))
def test_perfect_and_empty(engine, iou_type):
    gt = rs([inst((0, 0, 20, 20)), inst((30, 30, 60, 60), cat=2)])
    pred = rs([inst((0, 0, 20, 20), score=0.9), inst((30, 30, 60, 60), cat=2, score=0.8)])
    res = evaluate_instances(gt, pred, iou_type, engine=engine)
    for k in ("AP", "AP50", "AP75", "APs", "AR"):
        assert res[k] == pytest.approx(1.0)
    # 20x20 = 400 px is small, 30x30 = 900 px is small too: no medium / large ground truth
    assert math.isnan(res["APm"]) and math.isnan(res["APl"])
    empty = evaluate_instances(gt, rs([]), iou_type, engine=engine)
    assert empty["AP"] == 0.0 and empty["AR"] == 0.0
    # no ground truth at all: every number is undefined, not 0
    no_gt = evaluate_instances(rs([]), rs([inst((0, 0, 5, 5), score=0.5)]), iou_type, engine=engine)
    assert all(math.isnan(no_gt[k]) for k in KEYS)


@pytest.mark.parametrize("engine", ENGINES)
def test_one_false_positive(engine):
    gt = rs([inst((0, 0, 20, 20))])
    fp_above = rs([inst((0, 0, 20, 20), score=0.5), inst((40, 40, 60, 60), score=0.9)])
    # PR: (recall 0, precision 0) then (1, 1/2): interpolated precision 1/2 at every recall
    assert evaluate_instances(gt, fp_above, "bbox", engine=engine)["AP"] == pytest.approx(0.5)
    fp_below = rs([inst((0, 0, 20, 20), score=0.9), inst((40, 40, 60, 60), score=0.5)])
    assert evaluate_instances(gt, fp_below, "bbox", engine=engine)["AP"] == pytest.approx(1.0)


@pytest.mark.parametrize("engine", ENGINES)
def test_iou_thresholds(engine):
    gt = rs([inst((0, 0, 10, 10))])
    pred = rs([inst((0, 0, 10, 6.2), score=0.9, mask=False)])  # IoU 0.62: matched at .50 .55 .60
    res = evaluate_instances(gt, pred, "bbox", engine=engine)
    assert res["AP"] == pytest.approx(0.3) and res["AP50"] == pytest.approx(1.0) and res["AP75"] == 0.0


@pytest.mark.parametrize("engine", ENGINES)
def test_crowd_region_absorbs_detections(engine):
    gt = rs([inst((0, 0, 20, 20)), inst((30, 30, 64, 64), crowd=True)])
    pred = rs([inst((35, 35, 45, 45), score=0.95), inst((0, 0, 20, 20), score=0.9)])
    for t in ("bbox", "segm"):
        assert evaluate_instances(gt, pred, t, engine=engine)["AP"] == pytest.approx(1.0)


@pytest.mark.parametrize("engine", ENGINES)
def test_groups_and_per_class(engine):
    gt = rs([inst((0, 0, 20, 20)), inst((30, 30, 60, 60), cat=2)], [inst((5, 5, 25, 25), cat=2)])
    pred = rs([inst((0, 0, 20, 20), score=0.9)], [inst((5, 5, 25, 25), cat=2, score=0.7)])
    res = evaluate_instances(
        gt, pred, "segm", groups={"base": [1], "novel": [2], "absent": [3, 99]}, engine=engine, per_class=True
    )
    assert res["base/AP"] == pytest.approx(1.0)
    # dog: 1 of 2 found at precision 1 -> recall points 0.00 .. 0.50 of 101 have precision 1
    assert res["novel/AP"] == pytest.approx(51 / 101) and res["novel/AR"] == pytest.approx(0.5)
    assert res["AP"] == pytest.approx((1 + 51 / 101) / 2)
    assert math.isnan(res["absent/AP"])  # bird has no ground truth
    assert res["class/cat/AP"] == pytest.approx(1.0) and res["class/dog/AP50"] == pytest.approx(51 / 101)
    assert math.isnan(res["class/bird/AP"])


def random_sets(seed, n_images=6):
    rng = np.random.default_rng(seed)
    gts, preds = [], []
    for _ in range(n_images):
        g, p = [], []
        for _ in range(rng.integers(0, 5)):
            x, y = rng.integers(0, 60, 2)
            w, h = rng.integers(8, 70, 2)
            g.append(
                inst(
                    (x, y, min(x + w, W), min(y + h, H)),
                    cat=int(rng.integers(1, 4)),
                    crowd=rng.random() < 0.1,
                )
            )
        for _ in range(rng.integers(0, 8)):
            cat = int(rng.integers(1, 4))
            if g and rng.random() < 0.7:
                src = g[rng.integers(0, len(g))]
                b = np.array(src.box) + rng.integers(-3, 4, 4)
                cat = src.category_id if rng.random() < 0.8 else cat
            else:
                b = np.array([*rng.integers(0, 60, 2), 0, 0]) + [0, 0, *rng.integers(8, 70, 2)]
                b[2:] += b[:2]
            b = np.clip(b, 0, W)
            if b[2] <= b[0] + 1 or b[3] <= b[1] + 1:
                continue
            p.append(inst(tuple(b), cat=cat, score=float(rng.random())))
        gts.append(g)
        preds.append(p)
    return rs(*gts), rs(*preds)


@pytest.mark.parametrize("iou_type", ("bbox", "segm"))
def test_engines_agree_on_random_case(iou_type):
    gt, pred = random_sets(0, n_images=8)
    groups = {"base": [1, 2], "novel": [3]}
    a = evaluate_instances(gt, pred, iou_type, groups=groups, engine="faster", per_class=True)
    b = evaluate_instances(gt, pred, iou_type, groups=groups, engine="pycocotools", per_class=True)
    assert a.keys() == b.keys()
    for k in a:
        assert (math.isnan(a[k]) and math.isnan(b[k])) or a[k] == pytest.approx(b[k], abs=1e-9), k
    assert 0.05 < a["AP"] < 0.95  # a real mix of hits and misses


def subset(rset, cats):
    return RecordSet(
        [
            ImageRecord(
                r.image_id, r.file_name, r.width, r.height, [i for i in r.instances if i.category_id in cats]
            )
            for r in rset.records
        ],
        [c for c in rset.categories if c.id in cats],
    )


def test_group_breakdown_equals_evaluating_the_group_alone():
    gt, pred = random_sets(1, n_images=8)
    res = evaluate_instances(gt, pred, "bbox", groups={"novel": [2, 3]}, engine="pycocotools")
    alone = evaluate_instances(subset(gt, {2, 3}), subset(pred, {2, 3}), "bbox", engine="pycocotools")
    for k in KEYS:
        assert (math.isnan(res[f"novel/{k}"]) and math.isnan(alone[k])) or res[f"novel/{k}"] == pytest.approx(
            alone[k]
        )


def test_max_dets_and_string_ids():
    gt = rs([inst((0, 0, 20, 20))], ids=["img-a"])
    # ten false positives scored above the true positive: it is cut at max_dets=10
    preds = [inst((40, 40, 50, 50 + k % 3), score=0.9 + k / 100) for k in range(10)]
    pred = rs([*preds, inst((0, 0, 20, 20), score=0.5)], ids=["img-a"])
    assert evaluate_instances(gt, pred, "bbox", max_dets=10)["AP"] == 0.0
    assert evaluate_instances(gt, pred, "bbox", max_dets=11)["AP"] == pytest.approx(1 / 11)


def test_segm_skips_gt_without_mask_and_errors():
    gt = rs([inst((0, 0, 20, 20)), inst((30, 30, 60, 60), mask=False)])
    pred = rs([inst((0, 0, 20, 20), score=0.9)])
    res = evaluate_instances(gt, pred, "segm")
    assert res["num_gt_skipped"] == 1 and res["AP"] == pytest.approx(1.0)
    assert evaluate_instances(gt, pred, "bbox")["AR"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="image 0: instance 0 has no score"):
        evaluate_instances(gt, rs([inst((0, 0, 5, 5))]))
    with pytest.raises(ValueError, match="image 0: instance 0 has no mask"):
        evaluate_instances(gt, rs([inst((0, 0, 5, 5), score=0.5, mask=False)]), "segm")
    with pytest.raises(ValueError, match="image 7 is not in the ground truth"):
        evaluate_instances(gt, rs([], ids=[7]))
    with pytest.raises(ValueError, match="engine"):
        evaluate_instances(gt, pred, engine="detectron2")
    with pytest.raises(ValueError, match="iou_type"):
        build_coco_inputs(gt, pred, "keypoints")


def test_as_groups_accepts_mappings_and_split_like_objects():
    class SplitLike:
        base_ids = (1, 2)
        novel_ids = (3,)

    assert as_groups(SplitLike()) == {"base": [1, 2], "novel": [3]}
    assert as_groups({"a": (np.int64(4),)}) == {"a": [4]}
    assert as_groups(None) == {}
    with pytest.raises(TypeError, match="groups must be"):
        as_groups([1, 2])
    gt, pred = random_sets(2, n_images=4)
    a = evaluate_instances(gt, pred, "bbox", groups=SplitLike())
    b = evaluate_instances(gt, pred, "bbox", groups={"base": [1, 2], "novel": [3]})
    assert a.keys() == b.keys()
    assert all((math.isnan(a[k]) and math.isnan(b[k])) or a[k] == b[k] for k in a)


@pytest.mark.parametrize("engine", ENGINES)
def test_annotation_id_zero_is_renumbered(engine):
    a, b = inst((0, 0, 20, 20)), inst((30, 30, 60, 60))
    a.id, b.id = 0, 5
    gt = rs([a, b])
    g, _, _ = build_coco_inputs(gt, rs([]), "bbox")
    assert [x["id"] for x in g["annotations"]] == [1, 2]
    pred = rs([inst((0, 0, 20, 20), score=0.9), inst((0, 0, 20, 20), score=0.8)])
    # the duplicate must stay a false positive: AP = 51/101 (one of two found, precision 1 first)
    assert evaluate_instances(gt, pred, "bbox", engine=engine)["AP"] == pytest.approx(51 / 101)
