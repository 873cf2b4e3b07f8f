"""Segmenter (checkpoint -> predictor) and the ``omniseg segment`` command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from omniseg.api import Segmenter, resolve_checkpoint
from omniseg.cli import main as cli_main
from omniseg.data.synth.world import SynthConfig, generate_image
from omniseg.engine.config import load_config
from omniseg.modeling.box_to_mask import build_box_to_mask
from omniseg.ops.rle import rle_decode
from omniseg.recipes.box_to_mask import RECIPE, BoxToMaskExperiment
from omniseg.recipes.contract import run_recipe


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    cfg = load_config(BoxToMaskExperiment, None, [
        "model.width=8", "model.fpn_channels=16", "model.norm=GN", "model.freeze_at=0",
        "model.head_convs=1", "model.head_dim=8", "data.train_num_images=4", "data.val_num_images=2",
        "data.image_size=96", "data.batch_size=2", "train.max_iter=2", "train.progress=false",
        f"train.output_dir={out}", "train.checkpoint_period=2",
    ])
    run_recipe(RECIPE, cfg)
    return out, cfg


def test_resolve_checkpoint_accepts_run_checkpoints_and_step_folders(trained):
    out, _ = trained
    step = resolve_checkpoint(out)
    assert step.name == "step_00000002"
    assert resolve_checkpoint(out / "checkpoints") == step == resolve_checkpoint(step)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        resolve_checkpoint(out / "nope")


def test_segmenter_matches_the_trained_weights(trained):
    out, cfg = trained
    seg = Segmenter.from_checkpoint(out)
    image, rec = generate_image(SynthConfig(seed=5, num_images=1, image_size=96), 0)
    boxes = [list(i.box) for i in rec.instances]
    found = seg.predict(image, boxes=boxes, vocabulary=[i.text for i in rec.instances])
    assert [i.text for i in found] == [i.text for i in rec.instances]
    # the same weights loaded by hand give the same masks
    from omniseg.engine.checkpoint import load_checkpoint

    model = build_box_to_mask(cfg.model)
    load_checkpoint(out / "checkpoints", model=model)
    model.eval()
    t = torch.from_numpy(image).permute(2, 0, 1)[None]
    ref = model.predict_masks(t, [(96, 96)], [torch.tensor(boxes)])[0]
    for inst, m in zip(found, ref):
        assert np.array_equal(rle_decode(inst.mask).astype(bool), m.numpy())


def test_segmenter_errors(trained):
    out, _ = trained
    seg = Segmenter.from_checkpoint(out)
    with pytest.raises(ValueError, match="pass boxes"):
        seg.predict(np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="H x W x 3 uint8"):
        seg.predict(np.zeros((32, 32), np.uint8), boxes=[[0, 0, 4, 4]])
    with pytest.raises(FileNotFoundError, match="ema.safetensors"):
        Segmenter.from_checkpoint(out, use_ema=True)


def test_segment_command(trained, tmp_path, capsys):
    from PIL import Image

    out, _ = trained
    image, _ = generate_image(SynthConfig(seed=5, num_images=1, image_size=96), 0)
    path = tmp_path / "img.png"
    Image.fromarray(image).save(path)
    rc = cli_main(["segment", str(path), "--checkpoint", str(out), "--boxes", "1,2,40,50; 50,50,90,90",
                   "--vocabulary", "first, second", "--out", str(tmp_path / "seg"), "--min-score", "0"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "2 instance(s)" in text and "first" in text and "second" in text
    preds = json.loads((tmp_path / "seg" / "predictions.json").read_text())
    assert [i["text"] for i in preds[0]["instances"]] == ["first", "second"]
    assert preds[0]["instances"][0]["box"] == [1.0, 2.0, 40.0, 50.0]
    assert (tmp_path / "seg" / "img.png").exists()
    with pytest.raises(SystemExit, match="x0,y0,x1,y1"):
        cli_main(["segment", str(path), "--checkpoint", str(out), "--boxes", "5,5,1,1"])


@pytest.mark.parametrize("config", ["maskx_smoke.yaml", "fcos_mo_smoke.yaml"])
def test_segmenter_for_detectors(config, tmp_path):
    """Train each detector recipe's smoke config for 2 steps, then predict through the Segmenter."""
    from pathlib import Path

    from omniseg.recipes.table import RECIPES

    path = Path(__file__).resolve().parents[1] / "configs" / config
    recipe_name = "maskx_rcnn" if config.startswith("maskx") else "fcos_mo"
    recipe = RECIPES[recipe_name]
    cfg = load_config(recipe.config, path, ["train.max_iter=2", "train.checkpoint_period=2", f"train.output_dir={tmp_path}",
                                      "data.val_num_images=1"]
                      + (["model.score_threshold=0.0"] if recipe_name == "maskx_rcnn" else []))
    run_recipe(recipe, cfg)
    seg = Segmenter.from_checkpoint(tmp_path)
    image, _ = generate_image(SynthConfig(seed=9, num_images=1, image_size=100), 0)  # 100: not a multiple of 32
    found = seg.predict(image, min_score=0.0)
    assert len(found) > 0  # an untrained model still detects something at threshold 0
    for inst in found:
        assert inst.score is not None and 0.0 <= inst.score <= 1.0
        assert rle_decode(inst.mask).shape == (100, 100)
        assert 0 <= inst.box[0] <= inst.box[2] <= 100 and 0 <= inst.box[1] <= inst.box[3] <= 100
    with pytest.raises(ValueError, match="finds its own boxes"):
        seg.predict(image, boxes=[[0, 0, 5, 5]])
    if recipe_name == "fcos_mo":  # open vocabulary: any phrases
        phrases = ["crimson disk", "a blue thing"]
        assert {i.text for i in seg.predict(image, vocabulary=phrases, min_score=0.0)} <= set(phrases)
    else:  # closed vocabulary: unknown names are an error, known ones filter
        with pytest.raises(ValueError, match="closed vocabulary"):
            seg.predict(image, vocabulary=["crimson disk"])
        assert {i.text for i in seg.predict(image, vocabulary=["red ring"], min_score=0.0)} <= {"red ring"}
