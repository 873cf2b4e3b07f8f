"""The MAL recipe: box-only training data, the evaluation dict and its baselines, a run through
run_recipe and the box-prompted Segmenter."""

import json
from pathlib import Path

import numpy as np
import pytest

from omniseg.data.records import Category, ImageRecord, Instance, RecordSet
from omniseg.engine.config import load_config
from omniseg.ops.rle import rle_decode, rle_encode
from omniseg.recipes.mal import (
    RECIPE,
    MALExperiment,
    baseline_predictions,
    ellipse_mask,
    mean_iou,
    scores_of,
    train_data,
)
from omniseg.recipes.table import RECIPES

SMOKE = Path(__file__).resolve().parents[2] / "configs" / "mal_smoke.yaml"


def test_registered_with_the_papers_optimizer():
    assert RECIPES["mal"] is RECIPE
    t = MALExperiment().train
    assert (t.optimizer, t.betas, t.schedule) == ("adamw", (0.9, 0.9), "cosine")  # Sec. 4.2
    m = MALExperiment().model
    assert (m.mil_weight, m.crf_weight, m.crf_zeta, m.crf_omega, m.ema_momentum) == (4.0, 0.5, 0.5, 2.0, 0.996)


def test_training_data_has_no_masks():
    cfg = load_config(MALExperiment, SMOKE)
    from omniseg.recipes.data import open_train

    full, _ = open_train(cfg.data, progress=False)
    assert any(i.mask is not None for r in full for i in r.instances)  # the world has masks ...
    ds = train_data(cfg, progress=False)
    assert all(i.mask is None for r in ds.rs for i in r.instances) and all(not r.segments for r in ds.rs)
    assert sum(len(r.instances) for r in ds.rs) == sum(len(r.instances) for r in full)  # ... boxes all kept
    sample = ds[0]
    assert len(sample.targets) and not sample.targets.has_mask.any() and sample.targets.masks.sum() == 0


def _tiny_gt() -> RecordSet:
    top = np.zeros((10, 10), np.uint8)
    top[0:2, 0:4] = 1  # 8 pixels in the box (0, 0, 4, 4)
    full = np.zeros((10, 10), np.uint8)
    full[5:9, 5:9] = 1  # fills the box (5, 5, 9, 9)
    rec = ImageRecord(image_id=1, file_name="a.png", width=10, height=10, instances=[
        Instance(text="a", category_id=1, box=(0, 0, 4, 4), mask=rle_encode(top)),
        Instance(text="a", category_id=1, box=(5, 5, 9, 9), mask=rle_encode(full)),
        Instance(text="a", category_id=1, box=(0, 5, 3, 9), mask=None),  # box only: no IoU
        Instance(text="a", category_id=1, box=(0, 0, 9, 9), mask=rle_encode(full), is_crowd=True),  # not given
    ])
    return RecordSet(records=[rec], categories=[Category(id=1, name="a")])


def test_filled_box_and_ellipse_baselines_by_hand():
    gt = _tiny_gt()
    filled = baseline_predictions(gt, "filled_box")
    assert len(filled.records[0].instances) == 3  # the crowd box is no prompt
    assert mean_iou(gt, filled) == pytest.approx((8 / 16 + 1.0) / 2)  # IoUs 0.5 and 1
    # the inscribed ellipse of a 4 x 4 box: pixel centres 0.5 .. 3.5 around 2 -> all but the 4 corners
    e = ellipse_mask((0, 0, 4, 4), 4, 4)
    assert e.tolist() == [[0, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 1], [0, 1, 1, 0]]
    # IoU with `top` (8 px, rows 0-1): intersection 2 + 4 = 6, union 8 + 12 - 6 = 14; with `full`: 12 / 16
    assert mean_iou(gt, baseline_predictions(gt, "ellipse")) == pytest.approx((6 / 14 + 12 / 16) / 2)
    scores = scores_of(gt, filled, "filled_box")
    assert set(scores) == {"filled_box_mIoU", "filled_box_AP", "filled_box_AP50", "filled_box_AP75"}


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    from omniseg.recipes.contract import run_recipe

    out = tmp_path_factory.mktemp("mal_smoke")
    cfg = load_config(MALExperiment, SMOKE, [f"train.output_dir={out}"])
    summary = run_recipe(RECIPE, cfg)
    return out, summary


def test_run_recipe_evaluates_the_labeler_and_the_baselines(smoke_run):
    out, summary = smoke_run
    assert summary["step"] == 2
    keys = {f"{p}_{m}" for p in ("mask", "filled_box", "ellipse") for m in ("mIoU", "AP", "AP50", "AP75")}
    assert set(summary["eval"]) == keys
    assert all(0.0 <= summary["eval"][k] <= 1.0 for k in keys if k.endswith("mIoU"))
    info = json.loads((out / "run.json").read_text())
    assert info["recipe"] == "mal" and set(info["metrics"]) == keys


def test_segmenter_predicts_one_mask_per_box(smoke_run):
    from omniseg.api import Segmenter
    from omniseg.data.synth.world import SynthConfig, generate_image

    out, _ = smoke_run
    seg = Segmenter.from_checkpoint(out)
    image, rec = generate_image(SynthConfig(seed=5, num_images=1, image_size=70), 0)
    boxes = [list(i.box) for i in rec.instances]
    found = seg.predict(image, boxes=boxes)
    assert len(found) == len(boxes) and [i.text for i in found] == ["object"] * len(boxes)
    for inst, box in zip(found, boxes):
        assert rle_decode(inst.mask).shape == (70, 70)
        assert 0.0 <= inst.score <= 1.0
        assert list(inst.box) == pytest.approx(box)
    assert seg.predict(image, boxes=np.zeros((0, 4))) == []
