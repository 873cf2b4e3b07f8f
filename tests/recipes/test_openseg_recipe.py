"""Recipes openseg / lseg / align: vocabularies, training data, the evaluation against an oracle, smoke runs +
Segmenter, the teacher's pseudo masks for caption-only images (entering L_S, cached across --resume)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from omniseg.data.dataset import PartsDataset
from omniseg.data.synth import lexicon
from omniseg.engine.config import load_config
from omniseg.ops.rle import rle_decode
from omniseg.recipes.contract import run_recipe
from omniseg.recipes.data import open_source
from omniseg.recipes.openseg import (
    ALIGN,
    OPENSEG,
    PSEUDO_MASKS,
    ALIGNExperiment,
    LSegExperiment,
    OpenSegExperiment,
    class_queries,
    gt_segments,
    semantic_metrics,
    train_data,
    train_loader,
)

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_class_queries_of_the_three_vocabularies():
    cats = [c for c in lexicon.categories() if c.name in ("red circle", "grass")]
    assert class_queries(cats, "names") == ["red circle", "grass"]
    syn = class_queries(cats, "synonyms")
    assert syn[1] == "lawn|turf" and "crimson disk" in syn[0].split("|") and "red circle" not in syn[0].split("|")
    assert len(syn[0].split("|")) == 3 * 4 - 1  # (red + 2 synonyms) x (circle + 3 synonyms), less the name
    every = class_queries(cats, "all")
    assert every[1] == "grass|lawn|turf" and every[0].split("|")[0] == "red circle" and len(every[0].split("|")) == 12


def test_training_data_has_things_stuff_masks_and_captions(tmp_path):
    cfg = load_config(OpenSegExperiment, CONFIGS / "openseg_smoke.yaml", [f"train.output_dir={tmp_path}"])
    ds = train_data(cfg, progress=False)
    s = ds.raw_sample(0)
    assert s.captions and s.targets.has_mask.all()
    assert (~s.targets.is_thing).any() and s.targets.is_thing.any()
    assert len(s.targets) == len(s.record.segments)  # every panoptic segment, things and stuff


class Oracle(nn.Module):
    """Scores and proposals from the ground truth (stride 1): query k of class c scores 1 on c's pixels."""

    def __init__(self, gt, load_image, swap=None):
        super().__init__()
        self.cats = sorted(gt.categories, key=lambda c: c.id)
        self.text_class = {q: k for k, c in enumerate(self.cats) for q in [c.name, *c.synonyms]}
        if swap:
            a, b = swap
            self.text_class.update({q: b for q in [self.cats[a].name]} | {q: a for q in [self.cats[b].name]})
        self.by_pixels = {np.asarray(load_image(i)).tobytes(): r for i, r in enumerate(gt.records)}
        self.pyramid = type("P", (), {"stride": 1})()
        self.num_proposals = 16
        self.register_buffer("pixel_mean", torch.zeros(1))

    def embed(self, texts):
        return torch.eye(len(self.cats))[[self.text_class[t] for t in texts]]

    def encode(self, images, sizes):
        onehot, masks = [], []
        for img, (h, w) in zip(images, sizes):
            rec = self.by_pixels[img[:, :h, :w].permute(1, 2, 0).contiguous().numpy().tobytes()]
            oh = torch.zeros(len(self.cats), *images.shape[-2:])
            m = torch.full((self.num_proposals, *images.shape[-2:]), -10.0)
            for n, s in enumerate(gt_segments(rec)):
                seg = torch.from_numpy(rle_decode(s.mask)).bool()
                oh[[c.id for c in self.cats].index(s.category_id), :h, :w][seg] = 1
                m[n, :h, :w][seg] = 10.0
            onehot.append(oh)
            masks.append(m)
        return {"onehot": torch.stack(onehot), "masks": torch.stack(masks)}

    def query_scores(self, enc, i, q):
        return torch.einsum("qk,khw->qhw", q, enc["onehot"][i])


@pytest.fixture(scope="module")
def val():
    return open_source("synth", 3, 1000, 64, progress=False)


def test_semantic_metrics_of_an_oracle_are_perfect(val):
    gt, load_image = val
    cats = sorted(gt.categories, key=lambda c: c.id)
    vocabs = {"": class_queries(cats, "names"), "synonyms": class_queries(cats, "synonyms"),
              "all": class_queries(cats, "all")}
    out = semantic_metrics(Oracle(gt, load_image), gt, load_image, vocabs, batch_size=2)
    assert out == {"mIoU": 1.0, "grounding_mIoU": 1.0, "mIoU/synonyms": 1.0, "grounding_mIoU/synonyms": 1.0,
                   "mIoU/all": 1.0, "grounding_mIoU/all": 1.0, "recall@0.5": 1.0, "recall@0.7": 1.0, "recall@0.9": 1.0}
    # two present classes swapped by name: both are wrong wherever they are (names only; synonyms still right)
    present = sorted({[c.id for c in cats].index(s.category_id) for r in gt for s in gt_segments(r)})
    out = semantic_metrics(Oracle(gt, load_image, swap=present[:2]), gt, load_image, vocabs, recall=False)
    assert out["mIoU"] < 1 and out["mIoU/synonyms"] == 1.0 and "recall@0.5" not in out


@pytest.mark.parametrize(("name", "config", "metrics"), [
    ("openseg", OpenSegExperiment, {"mIoU", "grounding_mIoU", "recall@0.5", "recall@0.7", "recall@0.9"}),
    ("lseg", LSegExperiment, {"mIoU", "grounding_mIoU"}),
    ("align", ALIGNExperiment, {"mIoU", "grounding_mIoU"}),
])
def test_smoke_run_then_semantic_prediction(tmp_path, monkeypatch, name, config, metrics):
    pytest.importorskip("spacy")
    from omniseg.api import Segmenter
    from omniseg.recipes.table import RECIPES

    monkeypatch.setitem(RECIPES, "align", ALIGN)  # until the table lists it
    cfg = load_config(config, CONFIGS / f"{name}_smoke.yaml", [f"train.output_dir={tmp_path}"])
    summary = run_recipe(RECIPES[name], cfg)
    assert summary["step"] == 2 and set(summary["eval"]) == metrics
    seg = Segmenter.from_checkpoint(tmp_path)
    image = np.random.default_rng(0).integers(0, 255, (40, 52, 3), dtype=np.uint8)
    res = seg.predict_semantic(image, vocabulary=["red circle|crimson disk", "grass", "sky"], class_scores=True)
    assert res.class_scores.shape == (3, 40, 52) and res.labels.shape == (40, 52)
    assert np.array_equal(res.labels, res.class_scores.argmax(0))
    default = seg.predict_semantic(image, class_scores=True)  # the training categories, things + stuff
    assert default.names == [c.name for c in lexicon.categories()]


def _student(out, teacher, *extra):
    return load_config(OpenSegExperiment, CONFIGS / "openseg_smoke.yaml", [
        f"train.output_dir={out}", f"data.teacher={teacher}", "data.caption_only_num_images=2", *extra])


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A 2-step OpenSeg trained with L_S only (model.grounding_weight=0: no caption read, Sec. 3.3)."""
    out = tmp_path_factory.mktemp("teacher")
    cfg = load_config(OpenSegExperiment, CONFIGS / "openseg_smoke.yaml",
                      [f"train.output_dir={out}", "model.grounding_weight=0"])
    assert "loss_grounding" not in run_recipe(OPENSEG, cfg)["losses"]
    return out


def test_caption_only_images_without_teacher_add_nothing_to_ls(tmp_path):
    cfg = load_config(OpenSegExperiment, CONFIGS / "openseg_smoke.yaml",
                      [f"train.output_dir={tmp_path}", "data.caption_only_num_images=3", "data.caption_only_seed=7"])
    ds = train_data(cfg, progress=False)
    assert isinstance(ds, PartsDataset) and [len(p) for p in ds.parts.values()] == [4, 3] and len(ds) == 7
    s = ds.parts["caption_only"].raw_sample(0)
    assert len(s.targets) == 0 and s.captions == [n.caption for n in s.record.narratives]  # narratives as captions
    assert ds[5].image_id == ds.parts["caption_only"][1].image_id
    batches = iter(train_loader(cfg, ds))
    sources = {src for _ in range(4) for src in next(batches).sources}
    assert sources == {ds.parts["masked"].name, ds.parts["caption_only"].name}  # both sources drawn
    from omniseg.engine.config import ConfigError

    with pytest.raises(ConfigError, match="caption_only_num_images"):
        train_data(load_config(OpenSegExperiment, CONFIGS / "openseg_smoke.yaml", ["data.teacher=x"]), False)
    for key, seed in (("train", 0), ("val", 1000)):  # never the training or the validation images
        with pytest.raises(ConfigError, match=f"equals data.{key}_seed"):
            train_data(load_config(OpenSegExperiment, CONFIGS / "openseg_smoke.yaml",
                                   ["data.caption_only_num_images=1", f"data.caption_only_seed={seed}"]), False)


def test_teacher_pseudo_masks_enter_ls_as_ground_truth_masks(tmp_path, teacher):
    from omniseg.data.batch import collate
    from omniseg.data.dataset import RecordDataset
    from omniseg.data.records import RecordSet, Segment
    from omniseg.modeling.contrastive_classifier import PhraseEmbedder
    from omniseg.modeling.openseg import build_openseg
    from omniseg.text.encoders import HashEncoder

    cfg = _student(tmp_path, teacher)
    ds = train_data(cfg, progress=False)
    masked, pseudo = ds.parts.values()
    rec = pseudo.rs.records[0]
    assert rec.instances and {i.source for i in rec.instances} == {"pseudo"} and not rec.segments
    assert len(rec.instances) <= cfg.data.pseudo_top_k
    # the same image with the same masks given as ground truth (panoptic segments, as data.train's)
    as_gt = [dataclasses.replace(rec, instances=[], segments=[Segment("region", None, i.mask) for i in rec.instances])]
    gt = RecordDataset(RecordSet(records=as_gt, categories=pseudo.rs.categories), load_image=pseudo.load_image,
                       include_stuff=True)
    none = RecordDataset(RecordSet(records=[dataclasses.replace(rec, instances=[])], categories=pseudo.rs.categories),
                         load_image=pseudo.load_image)
    torch.manual_seed(0)
    model = build_openseg(cfg.model)
    model.set_text_embedder(PhraseEmbedder(HashEncoder(cfg.model.embed_dim).encode, cfg.model.embed_dim))
    model.set_caption_words(lambda caption: caption.split())

    def loss_seg(second):
        return model(collate([masked.raw_sample(0), second]))["loss_seg"].detach()

    with_pseudo, with_gt, without = loss_seg(pseudo.raw_sample(0)), loss_seg(gt.raw_sample(0)), loss_seg(
        none.raw_sample(0))
    alone = model(collate([masked.raw_sample(0)]))["loss_seg"].detach()
    assert torch.equal(with_pseudo, with_gt) and not torch.allclose(with_pseudo, without)
    assert torch.allclose(without, alone)  # without masks the caption-only image adds nothing to L_S


def test_pseudo_masks_are_predicted_once_and_reused_on_resume(tmp_path, teacher, monkeypatch):
    from omniseg.api import Segmenter

    cfg = _student(tmp_path, teacher)
    summary = run_recipe(OPENSEG, cfg)
    cache = tmp_path / PSEUDO_MASKS
    saved = json.loads(cache.read_text())
    assert summary["step"] == 2 and len(saved["masks"]) == 2 and saved["teacher"].startswith(str(teacher))

    def no_teacher(*a, **k):
        raise AssertionError("the teacher ran again")

    monkeypatch.setattr(Segmenter, "from_checkpoint", no_teacher)
    assert run_recipe(OPENSEG, _student(tmp_path, teacher, "train.max_iter=3"), resume=True)["step"] == 3
    assert json.loads(cache.read_text()) == saved
    with pytest.raises(AssertionError, match="ran again"):  # another rule: the cache does not apply
        train_data(_student(tmp_path, teacher, "data.pseudo_top_k=1"), progress=False)


def test_openseg_starts_from_an_align_run_and_its_checkpoint_needs_it_no_more(tmp_path, monkeypatch):
    # Sec. 4.1: OpenSeg's backbone starts from the ALIGN checkpoint (model.init_from = an ALIGN-style run)
    pytest.importorskip("spacy")
    import shutil

    from omniseg.api import Segmenter
    from omniseg.engine.checkpoint import load_weights

    align_run, run = tmp_path / "align", tmp_path / "openseg"
    run_recipe(ALIGN, load_config(ALIGNExperiment, CONFIGS / "align_smoke.yaml", [f"train.output_dir={align_run}"]))
    cfg = load_config(OpenSegExperiment, CONFIGS / "openseg_smoke.yaml",
                      [f"train.output_dir={run}", f"model.init_from={align_run}"])
    start = OPENSEG.build_model(cfg, None).state_dict()
    a = load_weights(align_run)
    assert all(torch.equal(start[k], v) for k, v in a.items() if k.startswith("pyramid."))
    assert all(torch.equal(start["emb_head." + k[5:]], v) for k, v in a.items() if k.startswith("head."))
    run_recipe(OPENSEG, cfg)
    shutil.rmtree(align_run)  # the checkpoint holds every weight
    seg = Segmenter.from_checkpoint(run)
    assert seg.cfg.model.init_from == ""
    image = np.random.default_rng(0).integers(0, 255, (40, 52, 3), dtype=np.uint8)
    assert seg.predict_semantic(image, vocabulary=["grass", "sky"]).labels.shape == (40, 52)
