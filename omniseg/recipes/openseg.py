"""Recipes ``openseg`` (:mod:`omniseg.modeling.openseg`) and ``lseg`` (the LSeg+ baseline, :mod:`omniseg.modeling.lseg`).

Training data: the training view of ``data.train`` with every image's class-agnostic masks, things AND stuff
(``include_stuff``: the panoptic segments), and its captions (openseg paper Sec. 4.1.1: COCO panoptic masks used
class-agnostically + COCO captions). OpenSeg reads masks + captions; LSeg+ reads masks + their class names.
Teacher pseudo-masks for caption-only images (Sec. 3.3 / 4.3) are not implemented: an image without masks
simply adds nothing to L_S.

Evaluation (:func:`semantic_eval_fn`, on the validation images at their stored size), keys:

* ``mIoU`` / ``grounding_mIoU`` (paper Sec. 4.3 "Evaluation metrics"; :mod:`omniseg.evaluation.semantic`) over
  every category of the validation set (things + stuff), label maps from the panoptic segments;
* ``recall@0.5`` / ``recall@0.7`` / ``recall@0.9`` (OpenSeg only): class-agnostic recall of the things + stuff
  segments by the model's N proposals (mask sigmoid > 0.5; best overlap, Table 1 protocol;
  :func:`omniseg.evaluation.proposals.proposal_recall`).

Vocabularies (``eval.vocabularies``; :func:`class_queries`): ``names`` (a: one query per class, its name; the
unsuffixed keys), ``synonyms`` (b: each class queried by its synonyms only, ensembled by max; keys ``mIoU/synonyms``
...), ``all`` (c: the name and every synonym of each class, ensembled; keys ``.../all``). The benchmark driver may
call :func:`semantic_metrics` with any ``{key suffix: entries}`` of its own ("a|b" entries: one class, several
queries). Prediction: any vocabulary (default: every training category's name) -> ``ImagePrediction.semantic``
(K x H x W scores) plus, for OpenSeg, the proposals as instances named by their best entry.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from torch import nn

from omniseg.data.records import Category, ImageRecord, Instance, RecordSet, Segment
from omniseg.engine.config import TrainConfig
from omniseg.modeling.lseg import LSeg, LSegConfig, build_lseg
from omniseg.modeling.openseg import (
    QUERY_SEPARATOR,
    OpenSeg,
    OpenSegConfig,
    build_openseg,
    ensemble_max,
    split_queries,
)
from omniseg.modeling.openseg_heads import resize_valid
from omniseg.recipes.contract import Recipe, RunInfo
from omniseg.recipes.data import DataConfig, open_train, open_val, train_transforms, training_view
from omniseg.recipes.open_vocab import TextConfig, build_phrase_embedder, text_encoder_id

VocabularyKind = Literal["names", "synonyms", "all"]
RECALL_IOUS = (0.5, 0.7, 0.9)
IGNORE = 255


@dataclass
class SemanticEvalConfig:
    """``vocabularies``: which of (a) ``names``, (b) ``synonyms``, (c) ``all`` the evaluation scores (module
    docstring); ``recall``: also proposal recall (OpenSeg only)."""

    vocabularies: tuple[VocabularyKind, ...] = ("names",)
    recall: bool = True


@dataclass
class OpenSegExperiment:
    """Top-level config (YAML sections: model, text, data, eval, train)."""

    recipe: Literal["openseg"] = "openseg"
    model: OpenSegConfig = field(default_factory=OpenSegConfig)
    text: TextConfig = field(default_factory=TextConfig)
    data: DataConfig = field(default_factory=DataConfig)
    eval: SemanticEvalConfig = field(default_factory=SemanticEvalConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class LSegExperiment:
    """Top-level config of the LSeg+ baseline (YAML sections: model, text, data, eval, train)."""

    recipe: Literal["lseg"] = "lseg"
    model: LSegConfig = field(default_factory=LSegConfig)
    text: TextConfig = field(default_factory=TextConfig)
    data: DataConfig = field(default_factory=DataConfig)
    eval: SemanticEvalConfig = field(default_factory=SemanticEvalConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def train_data(cfg: Any, progress: bool = True):
    """The training view with things + stuff masks and captions (flip / LSJ as ``cfg.data`` says)."""
    from omniseg.data.dataset import RecordDataset

    rs, load_image = open_train(cfg.data, progress)
    return RecordDataset(training_view(rs, cfg.data), transforms=train_transforms(cfg.data, photos=load_image is None),
                         load_image=load_image, seed=cfg.data.train_seed, include_stuff=True)


def category_names(info: RunInfo) -> list[str]:
    """Every category's name (things and stuff), by id: the default vocabulary."""
    return [c.name for c in sorted(info.category_objects(), key=lambda c: c.id)]


def build_openseg_model(cfg: OpenSegExperiment, info: RunInfo | None = None) -> OpenSeg:
    from omniseg.data.caption_words import CaptionWords

    model = build_openseg(cfg.model)
    model.set_text_embedder(build_phrase_embedder(cfg.text, cfg.model.embed_dim))
    model.set_caption_words(CaptionWords(cfg.model.words))
    return model


def build_lseg_model(cfg: LSegExperiment, info: RunInfo) -> LSeg:
    model = build_lseg(cfg.model, category_names(info))
    model.set_text_embedder(build_phrase_embedder(cfg.text, cfg.model.embed_dim))
    return model


def semantic_predictor(model: OpenSeg | LSeg, default_vocabulary: Sequence[str], method: str):
    """A :class:`~omniseg.recipes.contract.Predictor` filling ``semantic`` for any vocabulary ("a|b" entries are
    one class queried by a and b, ensembled by max)."""
    from omniseg.errors import ArgumentValueError
    from omniseg.modeling.predictions import ImagePrediction

    def predict(images, image_sizes, output_sizes, vocabulary=None, boxes=None):
        if boxes is not None:
            raise ArgumentValueError(f"{method} finds its own regions; boxes= (--boxes) is for box-to-mask models")
        texts = list(vocabulary or default_vocabulary)
        if not texts:
            raise ArgumentValueError(f"{method}: empty vocabulary (pass vocabulary=[...])")
        try:
            split_queries(texts)
        except ValueError as e:
            raise ArgumentValueError(f"{method}: {e}") from None
        device = next(model.parameters()).device
        out = model.predict(images.to(device), texts, image_sizes, output_sizes)
        return [ImagePrediction(inst, texts, semantic=sem) for sem, inst in out]

    return predict


def class_queries(categories: Sequence[Category], kind: VocabularyKind) -> list[str]:
    """One vocabulary entry per category, in the given order: (a) ``names``: its name; (b) ``synonyms``: its
    synonyms joined by "|" (the name when it has none); (c) ``all``: name and synonyms."""
    if kind == "names":
        return [c.name for c in categories]
    if kind == "synonyms":
        return [QUERY_SEPARATOR.join(c.synonyms or [c.name]) for c in categories]
    if kind == "all":
        return [QUERY_SEPARATOR.join([c.name, *c.synonyms]) for c in categories]
    raise ValueError(f"vocabulary kind must be names, synonyms or all, got {kind!r}")


def gt_segments(rec: ImageRecord) -> list[Segment]:
    """The record's panoptic segments; without any, its masked instances (things only)."""
    if rec.segments:
        return rec.segments
    return [Segment(i.text, i.category_id, i.mask, True, is_crowd=i.is_crowd) for i in rec.instances if i.mask]


def semantic_metrics(model: OpenSeg | LSeg, gt: RecordSet, load_image: Any, vocabularies: dict[str, list[str]],
                     batch_size: int = 4, recall: bool = True, progress: bool = False) -> dict[str, float]:
    """mIoU, grounding mIoU per vocabulary and (``recall``, OpenSeg) proposal recall on ``gt`` (module docstring).

    Args:
        model: an OpenSeg or LSeg+ model (put in eval mode for the call).
        gt: images with panoptic segments (or masked instances); class k = ``gt.categories`` sorted by id.
        vocabularies: key suffix ("" for the unsuffixed keys) -> one entry per class of ``gt.categories`` by id.
        recall: proposal recall at IoU 0.5 / 0.7 / 0.9 of the model's ``num_proposals`` proposals (models
            without proposals: none).

    Returns:
        ``mIoU{suffix}``, ``grounding_mIoU{suffix}`` (suffix "/name" for a non-empty key) and ``recall@t``.
        Every rank shares the work and gets the same numbers.
    """
    import torch
    from tqdm import tqdm

    from omniseg.data.loader import build_test_loader
    from omniseg.engine.distributed import all_gather_object, get_rank, get_world_size
    from omniseg.evaluation.proposals import proposal_recall
    from omniseg.evaluation.semantic import ConfusionMatrix, grounding_argmax, segments_to_label_map
    from omniseg.ops.rle import rle_encode

    cats = sorted(gt.categories, key=lambda c: c.id)
    index = {c.id: k for k, c in enumerate(cats)}
    queries = {}
    for key, entries in vocabularies.items():
        if len(entries) != len(cats):
            raise ValueError(f"vocabulary {key!r}: {len(entries)} entries for {len(cats)} classes")
        flat, groups = split_queries(entries)
        queries[key] = (model.embed(flat), groups)
    cms = {key: (ConfusionMatrix(len(cats), IGNORE), ConfusionMatrix(len(cats), IGNORE)) for key in queries}
    by_id = {r.image_id: r for r in gt}
    props: list[ImageRecord] = []
    recall = recall and bool(getattr(model, "num_proposals", 0))
    was_training = model.training
    model.eval()
    loader = build_test_loader(gt, batch_size, load_image=load_image, rank=get_rank(), world_size=get_world_size())
    try:
        with torch.no_grad():
            for batch in tqdm(loader, desc="semantic eval", disable=not progress, leave=False):
                enc = model.encode(batch.images.to(model.pixel_mean.device), batch.image_sizes)
                for i, image_id in enumerate(batch.image_ids):
                    rec, size, out_size = by_id[image_id], batch.image_sizes[i], batch.orig_sizes[i]
                    segs = gt_segments(rec)
                    label = segments_to_label_map(segs, rec.height, rec.width, index, IGNORE)
                    present = [int(c) for c in np.unique(label) if c != IGNORE]
                    for key, (q, groups) in queries.items():
                        sem = ensemble_max(model.query_scores(enc, i, q), groups, len(cats))
                        sem = resize_valid(sem, size, model.pyramid.stride, out_size).cpu().numpy()
                        cms[key][0].update(label, sem.argmax(0), str(image_id))
                        if present:
                            cms[key][1].update(label, grounding_argmax(sem, present), str(image_id))
                    if recall:
                        masks = (resize_valid(enc["masks"][i], size, model.pyramid.stride, out_size) > 0).cpu().numpy()
                        props.append(ImageRecord(image_id, rec.file_name, rec.width, rec.height, instances=[
                            Instance(text="region", category_id=None, mask=rle_encode(m), score=1.0)
                            for m in masks if m.any()]))
    finally:
        model.train(was_training)
    out: dict[str, float] = {}
    for key, (cm, gcm) in cms.items():
        suffix = f"/{key}" if key else ""
        for name, c in (("mIoU", cm), ("grounding_mIoU", gcm)):
            c.matrix = sum(all_gather_object(c.matrix))
            out[f"{name}{suffix}"] = c.summary()["mIoU"]
    if recall:
        props = [r for part in all_gather_object(props) for r in part]
        truth = RecordSet(records=[ImageRecord(r.image_id, r.file_name, r.width, r.height, instances=[
            Instance(text=s.text, category_id=s.category_id, mask=s.mask, is_crowd=s.is_crowd) for s in gt_segments(r)])
            for r in gt], categories=gt.categories)
        n = int(model.num_proposals)
        res = proposal_recall(truth, RecordSet(records=props), num_proposals=(n,), ious=RECALL_IOUS, iou_type="segm",
                              progress=False)
        out.update({f"recall@{t}": res[f"R{round(100 * t)}@{n}"] for t in RECALL_IOUS})
    return out


def semantic_eval_fn(cfg: Any, info: RunInfo, progress: bool = True):
    """eval_fn for the Trainer: :func:`semantic_metrics` on ``data.val`` with ``eval.vocabularies``."""
    gt, load_image = open_val(cfg.data, progress)
    cats = sorted(gt.categories, key=lambda c: c.id)
    vocabularies = {("" if kind == "names" else kind): class_queries(cats, kind) for kind in cfg.eval.vocabularies}

    def eval_fn(model: nn.Module) -> dict[str, float]:
        core = model.module if hasattr(model, "module") else model
        return semantic_metrics(core, gt, load_image, vocabularies, cfg.data.batch_size,
                                cfg.eval.recall, progress)

    return eval_fn


OPENSEG = Recipe(
    name="openseg", config=OpenSegExperiment, build_model=build_openseg_model, train_data=train_data,
    eval_fn=semantic_eval_fn, text_encoder=lambda cfg: text_encoder_id(cfg.text),
    predictor=lambda model, cfg, info: semantic_predictor(model, category_names(info), "OpenSeg"),
)
LSEG = Recipe(
    name="lseg", config=LSegExperiment, build_model=build_lseg_model, train_data=train_data,
    eval_fn=semantic_eval_fn, text_encoder=lambda cfg: text_encoder_id(cfg.text),
    predictor=lambda model, cfg, info: semantic_predictor(model, category_names(info), "LSeg+"),
)
