"""as_predictions / perturb_predictions: perfect copy scores AP 1, perturbed copy strictly less."""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest

from omniseg.data.records import Category, ImageRecord, Instance, RecordSet
from omniseg.data.synth.generate import generate_records, synth_recordset
from omniseg.data.synth.world import SynthConfig
from omniseg.evaluation.instance import evaluate_instances
from omniseg.evaluation.perturb import PerturbConfig, _shift, as_predictions, perturb_predictions
from omniseg.ops.rle import rle_decode, rle_encode, rle_to_box

CFG = SynthConfig(seed=5, num_images=4, image_size=64, min_scale=8, max_scale=40, min_objects=2, max_objects=4)


@pytest.fixture(scope="module")
def gt(tmp_path_factory) -> RecordSet:
    records, _ = generate_records(CFG, tmp_path_factory.mktemp("img"), workers=1, progress=False)
    return synth_recordset(records)


def _square(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> dict:
    m = np.zeros((h, w), np.uint8)
    m[y0:y1, x0:x1] = 1
    return rle_encode(m)


def _hand_gt() -> RecordSet:
    a = _square(12, 12, 2, 6, 2, 6)
    crowd = _square(12, 12, 8, 12, 0, 12)
    insts = [
        Instance("cat", 1, box=rle_to_box(a), mask=a),
        Instance("cat", 1, box=rle_to_box(crowd), mask=crowd, is_crowd=True),
        Instance("dog", 2, box=(7.0, 1.0, 11.0, 5.0)),  # box only
    ]
    return RecordSet([ImageRecord(1, "a.png", 12, 12, instances=insts)], [Category(1, "cat"), Category(2, "dog")])


def test_as_predictions_hand() -> None:
    gt = _hand_gt()
    before = copy.deepcopy(gt)
    pred = as_predictions(gt, score=0.7)
    assert gt == before  # input untouched
    insts = pred.records[0].instances
    assert [(i.text, i.is_crowd, i.score, i.source) for i in insts] == [
        ("cat", False, 0.7, "gt-copy"),
        ("dog", False, 0.7, "gt-copy"),
    ]
    assert insts[0].mask == gt.records[0].instances[0].mask and insts[1].box == (7.0, 1.0, 11.0, 5.0)
    assert evaluate_instances(gt, pred, "bbox")["AP"] == pytest.approx(1.0)


def test_as_predictions_ap_is_one(gt: RecordSet) -> None:
    pred = as_predictions(gt)
    assert sum(len(r.instances) for r in pred) == sum(len(r.instances) for r in gt) > 4
    for t in ("segm", "bbox"):
        res = evaluate_instances(gt, pred, t)
        assert res["AP"] == pytest.approx(1.0) and res["AP50"] == pytest.approx(1.0), t


def test_perturb_deterministic_and_damaging(gt: RecordSet) -> None:
    before = copy.deepcopy(gt)
    a = perturb_predictions(gt)
    b = perturb_predictions(gt, PerturbConfig())
    c = perturb_predictions(gt, PerturbConfig(seed=1))
    assert gt == before
    assert a == b
    assert a != c
    assert [r.image_id for r in a] == [r.image_id for r in gt]
    assert [(r.width, r.height, r.file_name) for r in a] == [(r.width, r.height, r.file_name) for r in gt]
    insts = [i for r in a for i in r.instances]
    assert all(i.score is not None and 0.05 <= i.score <= 1.0 and i.source == "perturbed" for i in insts)
    assert all(r.segments == [] for r in a)
    gt_masks = {rle_decode(i.mask).tobytes() for r in gt for i in r.instances}
    assert any(rle_decode(i.mask).tobytes() not in gt_masks for i in insts)  # something changed
    for i in insts:  # boxes follow the (damaged) masks
        assert i.box == pytest.approx(rle_to_box(i.mask))


def test_perturbed_ap_strictly_between(gt: RecordSet) -> None:
    pred = perturb_predictions(gt)
    for t in ("segm", "bbox"):
        ap = evaluate_instances(gt, pred, t)["AP"]
        assert 0.0 < ap < 1.0, (t, ap)


def test_no_damage_config_keeps_masks(gt: RecordSet) -> None:
    cfg = PerturbConfig(drop=0.0, shift_px=0, morph=0.0, wrong_class=0.0, false_positives=0.0)
    pred = perturb_predictions(gt, cfg)
    for p, g in zip(pred.records, gt.records):
        kept = [i for i in g.instances if not i.is_crowd and i.mask is not None]
        assert [i.category_id for i in p.instances] == [i.category_id for i in kept]
        assert all(np.array_equal(rle_decode(x.mask), rle_decode(y.mask)) for x, y in zip(p.instances, kept))
    assert evaluate_instances(gt, pred, "segm")["AP"] == pytest.approx(1.0)


def test_drop_everything_and_false_positives_only(gt: RecordSet) -> None:
    pred = perturb_predictions(gt, PerturbConfig(drop=1.0, false_positives=0.0))
    assert all(r.instances == [] for r in pred)
    pred = perturb_predictions(gt, PerturbConfig(drop=1.0, false_positives=3.0))
    fps = [i for r in pred for i in r.instances]
    assert fps and all(0.05 <= i.score <= 0.6 for i in fps)
    thing_ids = {c.id for c in gt.categories if c.isthing}
    assert all(i.category_id in thing_ids for i in fps)
    assert evaluate_instances(gt, pred, "segm")["AP"] < 0.05


def test_crowd_and_box_only_never_predicted() -> None:
    pred = perturb_predictions(_hand_gt(), PerturbConfig(drop=0.0, false_positives=0.0, wrong_class=0.0))
    # only the masked non-crowd cat survives
    assert [(i.text, i.category_id) for i in pred.records[0].instances] == [("cat", 1)]


def test_tiny_images_and_no_categories() -> None:
    tiny = RecordSet([ImageRecord(1, "t.png", 5, 4)], [Category(1, "cat")])
    pred = perturb_predictions(tiny, PerturbConfig(false_positives=20.0))
    assert len(pred.records[0].instances) > 0
    for i in pred.records[0].instances:
        assert rle_decode(i.mask).shape == (4, 5) and rle_decode(i.mask).sum() > 0
    none = RecordSet([ImageRecord(1, "t.png", 30, 30)], [])
    assert perturb_predictions(none, PerturbConfig(false_positives=5.0)).records[0].instances == []


def _shift_reference(m: np.ndarray, dy: int, dx: int) -> np.ndarray:
    out = np.zeros_like(m)
    h, w = m.shape
    for y, x in itertools.product(range(h), range(w)):
        if 0 <= y + dy < h and 0 <= x + dx < w:
            out[y + dy, x + dx] = m[y, x]
    return out


def test_shift_matches_reference() -> None:
    rng = np.random.default_rng(0)
    m = (rng.random((5, 7)) < 0.4).astype(np.uint8)
    for dy, dx in itertools.product(range(-6, 7), range(-8, 9)):
        np.testing.assert_array_equal(_shift(m, dy, dx), _shift_reference(m, dy, dx))
    # hand-worked: a pixel at the right edge leaves the image instead of wrapping around
    e = np.zeros((2, 3), np.uint8)
    e[0, 2] = 1
    assert _shift(e, 0, 1).sum() == 0
    assert _shift(e, 1, -2).tolist() == [[0, 0, 0], [1, 0, 0]]
