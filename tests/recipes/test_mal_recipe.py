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


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    """The smoke config in the whole-image mode (crop vs image ablation), trained through run_recipe."""
    from omniseg.recipes.contract import run_recipe

    out = tmp_path_factory.mktemp("mal_image")
    cfg = load_config(MALExperiment, SMOKE, [f"train.output_dir={out}", "model.input=image", "model.image_size=64"])
    return out, run_recipe(RECIPE, cfg)


def test_whole_image_mode_trains_evaluates_and_autolabels_a_box_file(image_run, tmp_path, capsys):
    import torch
    from PIL import Image

    from omniseg.api import Segmenter
    from omniseg.cli import main as cli_main
    from omniseg.data.formats.coco import to_coco_dict
    from omniseg.data.synth.generate import generate_records, synth_recordset
    from omniseg.data.synth.world import SynthConfig

    out, summary = image_run
    assert summary["step"] == 2 and 0.0 <= summary["eval"]["mask_mIoU"] <= 1.0
    seg = Segmenter.from_checkpoint(out)
    assert seg.model.cfg.input == "image" and seg.model.cfg.image_size == 64
    recs, _ = generate_records(SynthConfig(seed=4, num_images=2, image_size=64), tmp_path / "images", progress=False)
    data = to_coco_dict(synth_recordset(recs))
    for a in data["annotations"]:
        a.pop("segmentation", None)
    (tmp_path / "boxes.json").write_text(json.dumps(data))
    rc = cli_main(["autolabel", str(tmp_path / "boxes.json"), "--images", str(tmp_path / "images"), "--checkpoint",
                   str(out), "--out", str(tmp_path / "masks.json")])
    assert rc == 0, capsys.readouterr()
    got = json.loads((tmp_path / "masks.json").read_text())["annotations"]
    assert len(got) == len(data["annotations"]) > 0 and all("autolabel_skipped" not in a for a in got)
    for img in data["images"]:
        anns = [a for a in got if a["image_id"] == img["id"]]
        boxes = [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]
        want = seg.predict(tmp_path / "images" / img["file_name"], boxes=boxes)
        assert [a["segmentation"] for a in anns] == [w.mask for w in want]
        assert [a["mask_score"] for a in anns] == pytest.approx([w.score for w in want], abs=1e-4)  # written rounded
        pixels = torch.from_numpy(np.array(Image.open(tmp_path / "images" / img["file_name"]).convert("RGB")))
        (masks, _), = seg.model.predict_masks(pixels.permute(2, 0, 1)[None], [(64, 64)], [torch.tensor(boxes)])
        assert [rle_encode(m.numpy().astype(np.uint8)) for m in masks] == [w.mask for w in want]


def test_whole_image_labeler_is_refused_by_onnx_export(image_run, tmp_path, capsys):
    """The ONNX graph is the crop labeler's: exporting a whole-image run would give wrong masks silently."""
    pytest.importorskip("onnx")
    from omniseg.cli import main as cli_main

    out, _ = image_run
    assert cli_main(["export", str(out), "--out", str(tmp_path / "m.onnx")]) == 1
    err = capsys.readouterr().err.strip()
    assert "model.input=image: only MAL's crop labeler (model.input=crop) exports to ONNX" in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "m.onnx").exists()
