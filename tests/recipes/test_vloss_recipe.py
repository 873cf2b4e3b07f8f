"""Recipe vloss: the three sources and their split, pseudo masks, the schedules' batch order, the evaluation
against hand-made predictions, and a smoke run that trains, evaluates, predicts and segments from its checkpoint."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from omniseg.data.records import RecordSet
from omniseg.engine.config import ConfigError, load_config
from omniseg.ops.rle import rle_decode
from omniseg.recipes.contract import RunInfo, categories_info, run_recipe
from omniseg.recipes.data import open_source
from omniseg.recipes.vloss import (
    RECIPE,
    VLOSSExperiment,
    build_model,
    panoptic_metrics,
    source_split,
    train_data,
    train_loader,
)

SMOKE = Path(__file__).resolve().parents[2] / "configs" / "vloss_smoke.yaml"


def _cfg(tmp_path, *overrides: str) -> VLOSSExperiment:
    return load_config(VLOSSExperiment, SMOKE, [f"train.output_dir={tmp_path / 'run'}", *overrides])


@pytest.fixture(scope="module")
def smoke_data(tmp_path_factory):
    cfg = _cfg(tmp_path_factory.mktemp("vloss_data"))
    return cfg, train_data(cfg, progress=False)


def test_sources_hold_one_supervision_kind_each_on_disjoint_images(smoke_data):
    cfg, data = smoke_data
    assert list(data.parts) == ["panoptic", "detection", "image_text"] and len(data) == 12
    split = source_split(cfg.data, data.rs.categories)
    base, novel = set(split.base_ids), set(split.novel_ids)
    stuff = {c.id for c in data.rs.categories if not c.isthing}
    assert len(base) == 20 and len(novel) == 60  # voc-like on the 80 synthetic thing classes
    worlds = {k: open_source("synth", 4, seed, 64, False)[0] for k, seed in
              (("panoptic", 0), ("detection", 2000), ("image_text", 3000))}
    for kind, part in data.parts.items():
        for i in range(len(part)):
            s, world = part.raw_sample(i), worlds[kind].records[i]
            ids = set(s.targets.category_ids.tolist())
            if kind == "panoptic":  # every stuff and base-thing segment of the world, nothing else
                want = sorted(g.category_id for g in world.segments if g.category_id in base | stuff)
                assert sorted(s.targets.category_ids.tolist()) == want and s.targets.has_mask.all()
                assert not s.captions
            elif kind == "detection":  # every thing box, masks dropped
                assert sorted(s.targets.category_ids.tolist()) == sorted(i.category_id for i in world.instances)
                assert ids <= base | novel and s.targets.has_box.all() and not s.targets.has_mask.any()
                assert not s.captions and not (s.targets.masks != 0).any()
            else:
                assert len(s.targets) == 0 and s.captions == world.captions and s.captions
    assert any(c in novel for i in range(4) for c in data.parts["detection"].raw_sample(i).targets.category_ids.tolist())
    firsts = [part.raw_sample(0).image for part in data.parts.values()]
    assert not torch.equal(firsts[0], firsts[1]) and not torch.equal(firsts[1], firsts[2])


def test_targets_of_each_kind(smoke_data):
    cfg, data = smoke_data
    info = RunInfo("vloss", categories_info(data.rs.categories), "hash")
    model = build_model(cfg, info)
    ids = sorted(c.id for c in data.rs.categories)
    from omniseg.data.batch import collate

    batch = collate([data.parts[k].raw_sample(0) for k in ("panoptic", "detection", "image_text")])
    pan, det, txt = (model.target(t, k, c) for t, k, c in
                     zip(batch.targets, ("panoptic", "detection", "image_text"), batch.captions))
    want = [ids.index(c) for c in batch.targets[0].category_ids.tolist()]
    assert pan.labels.tolist() == want and pan.mask_valid.all() and pan.masks.shape[1:] == batch.images.shape[-2:]
    assert torch.equal(pan.masks, batch.targets[0].masks.float()) and pan.caption_emb is None
    assert not det.mask_valid.any() and torch.equal(det.boxes, batch.targets[1].boxes)
    assert txt.labels.numel() == 0 and txt.masks is None
    caps = model.text(batch.captions[2])
    assert txt.caption_emb is not None and any(torch.allclose(txt.caption_emb, c) for c in caps)
    assert float(txt.caption_emb.norm()) == pytest.approx(1.0, abs=1e-5)


def test_pseudo_masks_fill_the_matching_detection_boxes(tmp_path):
    """A COCO instances file with the true masks of one image's first two things: those boxes get exactly
    these masks (mask_valid True), every other box stays box-only."""
    world = open_source("synth", 4, 2000, 64, False)[0]
    n = next(k for k, r in enumerate(world.records) if len(r.instances) >= 3)
    rec = world.records[n]
    given = rec.instances[:2]
    path = tmp_path / "pseudo.json"
    path.write_text(json.dumps({
        "images": [{"id": 7, "file_name": rec.file_name, "width": rec.width, "height": rec.height}],
        "annotations": [{"id": k + 1, "image_id": 7, "category_id": i.category_id, "iscrowd": 0,
                         "bbox": [i.box[0], i.box[1], i.box[2] - i.box[0], i.box[3] - i.box[1]],
                         "segmentation": i.mask} for k, i in enumerate(given)],
        "categories": [{"id": c.id, "name": c.name} for c in world.categories if c.isthing]}))
    data = train_data(_cfg(tmp_path, f"data.pseudo_masks={path}"), progress=False)
    t = data.parts["detection"].raw_sample(n).targets
    assert t.has_mask.tolist() == [True, True] + [False] * (len(rec.instances) - 2)
    for k, inst in enumerate(given):
        assert np.array_equal(t.masks[k].numpy(), rle_decode(inst.mask))
    assert not data.parts["detection"].raw_sample((n + 1) % 4).targets.has_mask.any()
    path.write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    with pytest.raises(ConfigError, match="data.pseudo_masks: .* has no mask for any box"):
        train_data(_cfg(tmp_path, f"data.pseudo_masks={path}"), progress=False)


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="need different seeds"):
        train_data(_cfg(tmp_path, "data.detection_seed=0"), progress=False)
    with pytest.raises(ConfigError, match="VLOSS needs a split"):
        train_data(_cfg(tmp_path, "data.split=", "data.schedule=mix"), progress=False)
    with pytest.raises(ConfigError, match="needs both sources"):
        train_data(_cfg(tmp_path, "data.detection="), progress=False)


def _kinds(cfg, data, n: int) -> list[str]:
    sampler = train_loader(cfg, data, seed=3).sampler
    names = list(data.parts)
    return ["".join(sorted({names[s][0].upper() for s in sampler.sources_of(b)})) for b in range(n)]


@pytest.mark.parametrize("schedule, overrides, want", [
    # Sec. 3.4 / Fig. 3: each cycle = warm-up (detection, image-text batches) then cool-down (panoptic, image-text)
    ("stt", ["train.max_iter=8", "data.stt_cycles=2"], "D I P I D I P I"),
    ("stt", ["train.max_iter=10", "data.stt_cycles=1", "data.switch=0.3", "data.panoptic_weight=2"],
     "D I D P P I P P I P"),
    # Table 4's pre-train then fine-tune: detection + image-text for the first half, panoptic only after
    ("pretrain_finetune", ["train.max_iter=6"], "D I D P P P"),
    ("pretrain_finetune", ["train.max_iter=5", "data.switch=0.2"], "D P P P P"),
])
def test_schedule_order_of_source_kinds(smoke_data, tmp_path, schedule, overrides, want):
    cfg = _cfg(tmp_path, f"data.schedule={schedule}", *overrides)
    assert " ".join(_kinds(cfg, smoke_data[1], len(want.split()))) == want


def test_mix_draws_every_slot_by_weight(smoke_data, tmp_path):
    sampler = train_loader(_cfg(tmp_path, "data.schedule=mix", "data.image_text_weight=2"), smoke_data[1]).sampler
    slots = np.concatenate([sampler.sources_of(b) for b in range(400)])
    assert np.bincount(slots, minlength=3) / slots.size == pytest.approx([0.25, 0.25, 0.5], abs=0.05)
    assert sum(len(set(sampler.sources_of(b))) > 1 for b in range(400)) > 100  # kinds mixed inside batches


def test_loader_batches_follow_the_schedule(smoke_data, tmp_path):
    cfg = _cfg(tmp_path, "train.max_iter=4")  # the smoke config: stt, one cycle of 2 + 2 batches
    batches = iter(train_loader(cfg, smoke_data[1]))
    got = [sorted(set(next(batches).sources)) for _ in range(4)]
    assert got == [["vloss/detection"], ["vloss/image_text"], ["vloss/panoptic"], ["vloss/image_text"]]


def test_panoptic_metrics_against_hand_made_predictions(tmp_path):
    """The ground truth as prediction scores 1 everywhere; without the detection-only classes, their PQ and AP
    are 0 while the panoptic classes' stay 1."""
    cfg = _cfg(tmp_path)
    gt = open_source("synth", 3, 1000, 64, False)[0]
    split = source_split(cfg.data, gt.categories)

    def as_pred(drop: set[int]) -> RecordSet:
        recs = [dataclasses.replace(r, segments=[s for s in r.segments if s.category_id not in drop],
                                    instances=[dataclasses.replace(i, score=1.0) for i in r.instances
                                               if i.category_id not in drop]) for r in gt]
        return RecordSet(records=recs, categories=gt.categories)

    perfect = panoptic_metrics(gt, as_pred(set()), split)
    assert perfect["PQ"] == perfect["PQ_th"] == perfect["PQ_st"] == perfect["mask_AP"] == pytest.approx(1.0)
    present = {i.category_id for r in gt for i in r.instances}
    assert present & set(split.novel_ids) and present & set(split.base_ids)
    blind = panoptic_metrics(gt, as_pred(set(split.novel_ids)), split)
    assert blind["PQ_th/novel"] == 0.0 and blind["PQ_th/base"] == pytest.approx(1.0)
    assert blind["mask_AP/novel"] == 0.0 and blind["mask_AP/base"] == pytest.approx(1.0)
    assert blind["PQ_st"] == pytest.approx(1.0) and 0 < blind["PQ"] < 1


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("vloss_smoke")
    cfg = _cfg(out)  # the config's schedule (stt) through the recipe's own train_loader
    return out / "run", run_recipe(RECIPE, cfg)


def test_smoke_run_trains_evaluates_and_predicts_from_its_checkpoint(smoke_run, tmp_path, capsys):
    from omniseg.api import Segmenter
    from omniseg.cli import main as cli_main
    from omniseg.data.formats.panoptic import read_coco_panoptic
    from omniseg.data.synth.world import SynthConfig, generate_image

    run, summary = smoke_run
    assert summary["step"] == 4 and {"loss_cls", "loss_bce", "loss_dice", "loss_proj", "loss_con"} <= set(
        summary["losses"])
    ev = summary["eval"]
    for key in ("PQ", "PQ_th", "PQ_st", "mask_AP", "PQ_th/novel", "PQ_th/base", "mask_AP/novel"):
        assert key in ev and (np.isnan(ev[key]) or 0 <= ev[key] <= 1)
    assert json.loads((run / "run.json").read_text())["recipe"] == "vloss"
    seg = Segmenter.from_checkpoint(run)
    image = generate_image(SynthConfig(seed=1000, image_size=64), 0)[0][:50, :60].copy()
    out = seg.predict_panoptic(image, ["red circle", "grass"])
    assert out.index.shape == (50, 60) and int(out.index.max()) < len(out.segments) and int(out.index.min()) >= -1
    assert out.names == ["red circle", "grass"]
    assert all(s["text"] in ("red circle", "grass") and s["isthing"] == (s["text"] == "red circle")
               for s in out.segments)
    Image.fromarray(image).save(tmp_path / "a.png")
    rc = cli_main(["segment", str(tmp_path / "a.png"), "--checkpoint", str(run), "--task", "panoptic",
                   "--out", str(tmp_path / "p.json")])
    assert rc == 0, capsys.readouterr().err
    back = read_coco_panoptic(tmp_path / "p.json", tmp_path / "p", progress=False)
    assert back.records[0].width == 60 and {c.name for c in back.categories} == {c["name"] for c in
                                                                                 seg.info.categories}
