"""FCOS-MO recipe: ALP training data (stand-in and from an alps.jsonl), quantization switch, smoke run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from omniseg.engine.config import load_config
from omniseg.recipes.alp_data import ALPConfig, alp_train_dataset, simulated_alps
from omniseg.recipes.contract import run_recipe
from omniseg.recipes.data import named_split, open_source
from omniseg.recipes.fcos_mo import RECIPE, FCOSMOExperiment, build_model

SMOKE = Path(__file__).resolve().parents[2] / "configs" / "fcos_mo_smoke.yaml"


def _train_data(cfg: FCOSMOExperiment):
    return alp_train_dataset(cfg.data, cfg.alp, progress=False)


def _cfg(tmp_path, *extra: str) -> FCOSMOExperiment:
    return load_config(FCOSMOExperiment, SMOKE, [f"train.output_dir={tmp_path}", *extra])


def test_simulated_alps_are_weak_labels_of_novel_instances(tmp_path):
    cfg = _cfg(tmp_path)
    rs, _ = open_source("synth", 8, 0, 128, progress=False)
    split = named_split(cfg.data, rs.categories)
    alps = simulated_alps(rs, set(split.novel_ids), ALPConfig(sim_seed=3))
    names = {c.id: c.name for c in rs.categories}
    novel_names = {names[i] for i in split.novel_ids}
    n_novel = sum(1 for r in rs for i in r.instances if i.category_id in split.novel_ids and not i.is_crowd)
    total = sum(len(v) for v in alps.values())
    assert 0 < total <= n_novel
    by_id = {r.image_id: r for r in rs}
    for image_id, insts in alps.items():
        rec = by_id[image_id]
        for a in insts:
            assert a.category_id is None and a.box_quality == "approximate" and a.mask is None
            assert a.text in novel_names and a.source == "simulated-alp"
            x0, y0, x1, y1 = a.box
            assert 0 <= x0 < x1 <= rec.width and 0 <= y0 < y1 <= rec.height
    # shifted boxes: not the true ones
    true_boxes = {tuple(i.box) for r in rs for i in r.instances if i.box is not None}
    assert any(a.box not in true_boxes for v in alps.values() for a in v)


def test_training_data_holds_alps_and_no_novel_annotations(tmp_path):
    cfg = _cfg(tmp_path, "alp.quantize=false")
    ds = _train_data(cfg)
    split = named_split(cfg.data, ds.rs.categories)
    n_alp = 0
    for k in range(len(ds)):
        t = ds.raw_sample(k).targets
        alp = ~t.box_exact & t.has_box
        n_alp += int(alp.sum())
        assert (t.category_ids[alp] == -1).all() and not t.has_mask[alp].any()
        assert not any(int(c) in split.novel_ids for c in t.category_ids)
    assert n_alp > 0
    # without a split the stand-in has nothing to stand in for
    with pytest.raises(ValueError):
        _train_data(_cfg(tmp_path, "data.split="))


def test_quantization_switch_moves_only_approximate_boxes(tmp_path):
    on = _train_data(_cfg(tmp_path, "data.flip=false"))
    off = _train_data(_cfg(tmp_path, "data.flip=false", "alp.quantize=false"))
    moved = 0
    for k in range(len(on)):
        a, b = on[(k, 7)].targets, off[(k, 7)].targets
        assert torch.equal(a.boxes[a.box_exact], b.boxes[b.box_exact])
        approx = ~a.box_exact & a.has_box
        # quantization only stretches edges outwards
        assert (a.boxes[approx][:, :2] <= b.boxes[approx][:, :2] + 1e-4).all()
        assert (a.boxes[approx][:, 2:] >= b.boxes[approx][:, 2:] - 1e-4).all()
        moved += int((a.boxes[approx] != b.boxes[approx]).any(dim=1).sum())
    assert moved > 0


def test_alps_from_a_curated_jsonl(tmp_path):
    rs, _ = open_source("synth", 8, 0, 128, progress=False)
    rec = rs.records[2]
    path = tmp_path / "alps.jsonl"
    path.write_text(json.dumps({"image_id": rec.image_id, "phrase": "crimson disk", "box": [3, 4, 40, 50],
                                "box_quality": "approximate", "source": "alp"}) + "\n")
    cfg = _cfg(tmp_path, "alp.simulate=false", f"alp.path={path}")
    ds = _train_data(cfg)
    t = ds.raw_sample(2).targets
    i = t.texts.index("crimson disk")
    assert t.boxes[i].tolist() == [3.0, 4.0, 40.0, 50.0] and not t.box_exact[i] and t.category_ids[i] == -1


def test_smoke_run_trains_evaluates_and_reloads(tmp_path):
    from omniseg.engine.checkpoint import latest_checkpoint, load_checkpoint

    cfg = _cfg(tmp_path)
    out = run_recipe(RECIPE, cfg)
    assert out["step"] == cfg.train.max_iter
    ev = out["eval"]
    for k in ("mask_AP", "mask_AP50", "mask_AP50/base", "mask_AP50/novel", "box_AP50", "box_AP50/novel"):
        assert k in ev and 0.0 <= ev[k] <= 1.0
    ckpt = latest_checkpoint(tmp_path / "checkpoints")
    assert ckpt is not None
    model = build_model(cfg)
    load_checkpoint(ckpt, model=model)
    model.eval()
    preds = model.predict(torch.zeros(1, 3, 64, 64, dtype=torch.uint8), ["red ring", "crimson disk"])
    assert len(preds) == 1 and preds[0].masks.shape[1:] == (64, 64)


def test_embed_dim_must_match_the_encoder(tmp_path):
    # MiniLM gives 384-d vectors; the smoke model projects to 32
    with pytest.raises(ValueError, match="384"):
        build_model(_cfg(tmp_path, "text.encoder=minilm"))
    from omniseg.engine.config import ConfigError

    with pytest.raises(ConfigError, match=r"backbone: 'resnet101_fpn_p3p7' is not one of \['resnet18_fpn_p3p7'"):
        _cfg(tmp_path, "model.backbone=resnet101_fpn_p3p7")
    with pytest.raises(ConfigError, match="unknown key 'arch'"):
        _cfg(tmp_path, "arch=fcos_mo_r18")
