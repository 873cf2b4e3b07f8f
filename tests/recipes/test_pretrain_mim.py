"""SimMIM pretraining recipe: the shipped config, a tiny images-only run, a deterministic
evaluation, the exported trunk, no predictor."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from omniseg.engine.config import ConfigError, load_config
from omniseg.errors import ArgumentValueError
from omniseg.recipes.box_to_mask import BoxToMaskExperiment
from omniseg.recipes.contract import run_recipe
from omniseg.recipes.pretrain_mim import RECIPE, MimExperiment, build_model

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "pretrain_r18_mim_coco_mini.yaml"


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """4 smooth random photos of different sizes, no annotations."""
    d = tmp_path / "photos"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(64, 96), (50, 70), (96, 64), (64, 64)]):
        low = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        Image.fromarray(low).resize((w, h), Image.BILINEAR).save(d / f"img{i}.png")
    return d


def test_shipped_config_matches_the_box_to_mask_trunk():
    cfg = load_config(MimExperiment, CONFIG)
    assert cfg.recipe == "pretrain_mim" and "coco-mini" in cfg.data.train
    assert (cfg.model.trunk, cfg.model.patch, cfg.model.mask_ratio) == ("resnet18", 32, 0.6)  # SimMIM Sec. 3.2
    b2m = load_config(BoxToMaskExperiment, ROOT / "configs" / "box_to_mask_synth.yaml").model
    assert (b2m.backbone, b2m.width, b2m.norm) == (f"{cfg.model.trunk}_fpn", cfg.model.width, cfg.model.norm)
    with pytest.raises(ConfigError, match="model.mask_ratio: must be < 1"):
        load_config(MimExperiment, None, ["model.mask_ratio=1"])


def test_tiny_images_only_run(tmp_path, image_folder):
    from omniseg.modeling.backbones.resnet import build_resnet18
    from omniseg.modeling.weights import load_resnet_trunk
    from omniseg.recipes.pretraining import MANIFEST_FILE, export_backbone

    out_dir = tmp_path / "run"
    cfg = load_config(MimExperiment, None, [
        f"data.train={image_folder}", f"data.val={image_folder}", "data.val_num_images=3", "data.batch_size=2",
        "model.width=4", "train.max_iter=2", "train.optimizer=adamw", "train.lr=0.001", "train.log_period=1",
        "train.checkpoint_period=2", "train.progress=false", "train.device=cpu", f"train.output_dir={out_dir}"])
    out = run_recipe(RECIPE, cfg)
    assert out["step"] == 2 and math.isfinite(out["losses"]["loss_mim"])
    l1 = out["eval"]["mim_l1"]
    assert math.isfinite(l1) and l1 > 0

    weights = export_backbone(RECIPE, cfg, "test", 1.0)
    manifest = json.loads((out_dir / MANIFEST_FILE).read_text())
    assert manifest["kind"] == "resnet" and manifest["data"]["labels_read"] is False and manifest["steps"] == 2
    trunk = build_resnet18(norm="GN", freeze_at=0, width=4)
    assert load_resnet_trunk(trunk, weights).ok

    from omniseg.engine.checkpoint import latest_checkpoint, load_checkpoint

    model = build_model(cfg.model, None)
    load_checkpoint(latest_checkpoint(out_dir / "checkpoints"), model=model)
    assert all(torch.equal(v, model.trunk.state_dict()[k]) for k, v in trunk.state_dict().items())
    # the evaluation draws the same masks every time: the same number again, on 3 of the 4 images
    evaluate = RECIPE.eval_fn(cfg, None, False)
    assert evaluate(model)["mim_l1"] == pytest.approx(l1, rel=1e-5)
    cfg.data.val_num_images = 4
    assert RECIPE.eval_fn(cfg, None, False)(model)["mim_l1"] != pytest.approx(l1, rel=1e-5)
    with pytest.raises(ArgumentValueError, match="predicts nothing"):
        RECIPE.predictor(model, cfg, None)()
