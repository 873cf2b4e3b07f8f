"""Mask^X R-CNN recipe: configs load, splits in both directions, smoke runs end to end."""

import json
from pathlib import Path

import pytest
import torch

from omniseg.data.splits import apply_split
from omniseg.engine.checkpoint import latest_checkpoint, load_weights
from omniseg.engine.config import load_config
from omniseg.recipes.contract import run_recipe
from omniseg.recipes.data import open_source
from omniseg.recipes.maskx_rcnn import (
    RECIPE,
    MaskXExperiment,
    build_model,
    build_split,
    predictor,
    train_dataset,
)
from omniseg.recipes.scoring import predict_records
from omniseg.recipes.table import RECIPES


def run(cfg, resume=False):
    return run_recipe(RECIPE, cfg, resume)

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _smoke(tmp_path, *overrides):
    return load_config(MaskXExperiment, CONFIGS / "maskx_smoke.yaml",
                       [f"train.output_dir={tmp_path}", *overrides])


def test_committed_configs_load_and_are_registered():
    assert RECIPES["maskx_rcnn"] is RECIPE and RECIPE.config is MaskXExperiment
    full = load_config(MaskXExperiment, CONFIGS / "maskx_voc_like.yaml")
    assert full.model.mask_head == "transfer" and full.model.transfer_input == "cls+box"
    assert full.model.stop_grad and full.model.fused_mlp and full.model.transfer_mlp_layers == 2
    assert full.data.split == "voc-like" and full.data.novel_supervision == "box" and full.data.image_size == 256
    smoke = load_config(MaskXExperiment, CONFIGS / "maskx_smoke.yaml", ["data.reverse_split=true"])
    assert smoke.data.reverse_split and smoke.train.max_iter <= 5


def test_splits_both_directions_and_random():
    cfg = load_config(MaskXExperiment, CONFIGS / "maskx_smoke.yaml").data
    rs, _ = open_source("synth", 6, 0, 64, progress=False)
    fwd = build_split(cfg, rs.categories)
    assert (len(fwd.base_ids), len(fwd.novel_ids)) == (20, 60)
    cfg.reverse_split = True
    rev = build_split(cfg, rs.categories)
    assert rev.base_ids == fwd.novel_ids and rev.novel_ids == fwd.base_ids
    assert all(rev.train_supervision[i] == "mask" for i in rev.base_ids)
    assert all(rev.train_supervision[i] == "box" for i in rev.novel_ids)
    view = apply_split(rs, rev)
    n_inst = 0
    for rec in view:
        for inst in rec.instances:
            n_inst += 1
            assert (inst.mask is not None) == (inst.category_id in rev.base_ids) and inst.box is not None
    assert n_inst == sum(len(r.instances) for r in rs)
    cfg.reverse_split, cfg.random_base = False, 40
    rnd = build_split(cfg, rs.categories)
    assert len(rnd.base_ids) == 40 and rnd.name == "random40"
    cfg.random_base, cfg.split = 0, ""
    assert build_split(cfg, rs.categories) is None
    cfg.split = "nope"
    with pytest.raises(ValueError, match="unknown split"):
        build_split(cfg, rs.categories)
    from omniseg.engine.config import ConfigError

    with pytest.raises(ConfigError, match=r"split: 'voc_like' is not one of \['', 'voc-like'"):
        load_config(MaskXExperiment, CONFIGS / "maskx_smoke.yaml", ["data.split=voc_like"])


def test_training_view_drops_novel_masks(tmp_path):
    cfg = _smoke(tmp_path)
    ds = train_dataset(cfg.data, progress=False)
    split = build_split(cfg.data, ds.rs.categories)
    insts = [i for r in ds.rs for i in r.instances]
    assert insts and all((i.mask is not None) == (i.category_id in split.base_ids) for i in insts)


def test_text_transfer_input_uses_frozen_class_name_embeddings(tmp_path):
    cfg = _smoke(tmp_path, "model.transfer_input=text", "model.text_encoder=hash")
    rs, _ = open_source("synth", 1, 0, 64, progress=False)
    model = build_model(cfg.model, rs.categories)
    things = sorted((c for c in rs.categories if c.isthing), key=lambda c: c.id)
    from omniseg.text.encoders import build_text_encoder

    expected = build_text_encoder("hash").encode([c.name for c in things])
    torch.testing.assert_close(model.mask_head.transfer.fixed_embeddings, expected)
    assert model.category_ids == [c.id for c in things]


def test_predict_records_writes_rle_instances(tmp_path):
    cfg = _smoke(tmp_path)
    gt, load_image = open_source("synth", 2, 7, 64, progress=False)
    torch.manual_seed(0)
    model = build_model(cfg.model, gt.categories).eval()
    model.detector.roi_heads.cfg.score_threshold = 0.0
    from omniseg.recipes.contract import RunInfo, categories_info

    info = RunInfo("maskx_rcnn", categories_info(gt.categories))
    pred = predict_records(model, predictor(model, cfg, info), gt, load_image, batch_size=2)
    assert [r.image_id for r in pred] == [r.image_id for r in gt]
    ids = {c.id: c.name for c in gt.categories if c.isthing}
    n = 0
    for r in pred:
        for inst in r.instances:
            n += 1
            assert ids[inst.category_id] == inst.text and 0 <= inst.score <= 1
            assert inst.mask["size"] == [r.height, r.width] and isinstance(inst.mask["counts"], str)
    assert n > 0


def _metrics(out_dir):
    return [json.loads(line) for line in (Path(out_dir) / "metrics.jsonl").read_text().splitlines()]


def test_end_to_end_smoke_run_and_resume(tmp_path):
    summary = run(_smoke(tmp_path))
    assert summary["step"] == 3
    ev = summary["eval"]
    for key in ("mask_AP", "mask_AP/base", "mask_AP/novel", "box_AP", "box_AP/base", "box_AP/novel"):
        assert key in ev and 0.0 <= ev[key] <= 1.0, (key, ev[key])  # NaN fails: both groups have GT here
    logged = [m for m in _metrics(tmp_path) if "loss_mask" in m]
    assert len(logged) == 3 and all(m["loss_mask"] > 0 for m in logged)
    assert (tmp_path / "config.yaml").exists() and latest_checkpoint(tmp_path / "checkpoints") is not None
    resumed = run(_smoke(tmp_path, "train.max_iter=4"), resume=True)
    assert resumed["step"] == 4
    assert [m["step"] for m in _metrics(tmp_path) if "loss_mask" in m] == [1, 2, 3, 4]


def test_stage_wise_smoke_run_keeps_detector_fixed(tmp_path):
    summary = run(_smoke(tmp_path, "model.mode=stage_wise", "model.stage1_iters=2", "model.stop_grad=false"))
    assert summary["step"] == 3
    stage1 = load_weights(tmp_path / "stage1" / "checkpoints")
    final = load_weights(tmp_path / "checkpoints")
    det = [k for k in stage1 if k.startswith("detector.")]
    assert det
    for k in det:
        torch.testing.assert_close(final[k], stage1[k], msg=k)
    assert any(not torch.equal(final[k], stage1[k]) for k in stage1 if k.startswith("mask_head."))
    stage2 = _metrics(tmp_path)
    assert all("det_loss_cls" in m and "loss_cls" not in m for m in stage2 if "loss" in m)
    with pytest.raises(ValueError, match="stage1_iters"):
        run(_smoke(tmp_path / "bad", "model.mode=stage_wise"))
