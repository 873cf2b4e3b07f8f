"""MAE pretraining recipe: config defaults and checks, a tiny run, the exported backbone, no predictor."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from omniseg.engine.config import ConfigError, load_config
from omniseg.errors import ArgumentValueError
from omniseg.modeling.backbones.vit import VisionTransformer
from omniseg.recipes import pretrain_mae
from omniseg.recipes.contract import run_recipe
from omniseg.recipes.pretrain_mae import RECIPE, MAEPretrainExperiment, build_model

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "pretrain_mae_vits_synth.yaml"
TINY = ["model.patch_size=8", "data.train_num_images=4", "data.val_num_images=2", "data.image_size=32", "data.batch_size=2",
        "model.decoder_dim=16", "model.decoder_depth=1", "model.decoder_heads=2",
        "train.max_iter=3", "train.warmup_iters=1", "train.log_period=1", "train.checkpoint_period=3",
        "train.progress=false", "train.device=cpu"]


def test_defaults_follow_mae_and_the_shipped_config_loads():
    cfg = load_config(MAEPretrainExperiment)
    t = cfg.train
    assert (t.optimizer, tuple(t.betas), t.weight_decay, t.schedule) == ("adamw", (0.9, 0.95), 0.05, "cosine")
    assert cfg.model.mask_ratio == 0.75 and cfg.model.norm_pix_loss
    shipped = load_config(MAEPretrainExperiment, CONFIG)
    assert shipped.recipe == "pretrain_mae" and shipped.data.image_size % shipped.model.patch_size == 0


@pytest.mark.parametrize("override,match", [
    ("data.image_size=40", r"data.image_size \(40\) must be a multiple of model.patch_size \(16\)"),
    ("model.decoder_heads=3", r"model.decoder_dim \(128\) must be a multiple of 4 and of model.decoder_heads"),
    ("model.mask_ratio=1", r"model.mask_ratio: must be < 1"),
])
def test_bad_configs_are_clear_errors(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(MAEPretrainExperiment, None, [override])


def test_build_model_sizes_the_vit_from_the_data_section():
    cfg = load_config(MAEPretrainExperiment, None, ["data.image_size=64", "model.patch_size=8"])
    model = build_model(cfg)
    enc = model.encoder
    assert (enc.img_size, enc.patch_size, enc.out_channels, len(enc.blocks)) == (64, 8, 384, 12)
    assert model.backbone_kind == "vit" and model.mask_ratio == 0.75 and model.decoder_pred.out_features == 192


def test_tiny_run_writes_checkpoints_and_a_finite_loss(tmp_path, monkeypatch):
    from omniseg.engine.checkpoint import latest_checkpoint, load_checkpoint

    def tiny_vit(*, img_size: int, patch_size: int) -> VisionTransformer:  # ViT-S's checkpoints take ~2 s
        return VisionTransformer(img_size=img_size, patch_size=patch_size, embed_dim=32, depth=1, num_heads=2)

    monkeypatch.setitem(pretrain_mae.VIT_BUILDERS, "vit_small", tiny_vit)
    cfg = load_config(MAEPretrainExperiment, None, [f"train.output_dir={tmp_path}", *TINY])
    out = run_recipe(RECIPE, cfg)
    assert out["step"] == 3 and math.isfinite(out["losses"]["loss_mae"])
    loss = out["eval"]["mae_loss"]
    assert math.isfinite(loss) and loss > 0
    ckpt = latest_checkpoint(tmp_path / "checkpoints")
    assert ckpt is not None and (tmp_path / "run.json").is_file()
    model = build_model(cfg)
    load_checkpoint(ckpt, model=model)
    # the evaluation is deterministic: the same masks each time, so the same number again
    assert RECIPE.eval_fn(cfg, None, False)(model)["mae_loss"] == pytest.approx(loss, rel=1e-5)
    assert set(model.backbone_state_dict()) == set(model.encoder.state_dict())
    with pytest.raises(ArgumentValueError, match="predicts nothing"):
        RECIPE.predictor(model, cfg, None)
