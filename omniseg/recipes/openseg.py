"""Recipes ``openseg`` (:mod:`omniseg.modeling.openseg`), ``lseg`` (the LSeg+ baseline, :mod:`omniseg.modeling.lseg`)
and ``align`` (the ALIGN-style image-level baseline, :mod:`omniseg.modeling.align_baseline`).

Training data: the training view of ``data.train`` with every image's class-agnostic masks, things AND stuff
(``include_stuff``: the panoptic segments), and its captions (openseg paper Sec. 4.1.1: COCO panoptic masks used
class-agnostically + COCO captions). OpenSeg reads masks + captions; LSeg+ reads masks + their class names; ALIGN
reads the captions only.

Scaling with narratives (OpenSeg only; Sec. 3.3, 4.3 "Scaling up training data", Appendix G): with
``data.caption_only_num_images`` > 0 a second source of synthetic images (``data.caption_only_seed``) enters
training WITHOUT its masks, its narratives as its captions (Localized-Narratives style; the short captions when an
image has none). Both sources are drawn with equal probability per batch slot (Sec. 4.1: "we sample examples from
the datasets with equal probability"; ``data.caption_only_weight`` changes the ratio). ``data.teacher`` names an
OpenSeg run (best: trained with ``model.grounding_weight=0``, L_S only, Sec. 3.3) whose proposals on those images,
chosen by :func:`~omniseg.modeling.openseg.select_pseudo_masks` (at most ``data.pseudo_top_k`` per image), become
their masks and enter L_S as ground-truth masks do. They are predicted once, at the start of training, and cached in
``<train.output_dir>/pseudo_masks.json`` (keyed by the teacher's weights, the images and the rule: a resumed run
reads them back). Without a teacher a caption-only image adds nothing to L_S (only to L_G).

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

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from torch import nn

from omniseg.data.dataset import PartsDataset, RecordDataset
from omniseg.data.records import Category, ImageRecord, Instance, RecordSet, Segment
from omniseg.engine.config import ConfigError, TrainConfig, bounded
from omniseg.modeling.align_baseline import ALIGNBaseline, ALIGNConfig, build_align
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
from omniseg.recipes.data import (
    DataConfig,
    open_source,
    open_train,
    open_val,
    train_transforms,
    training_view,
)
from omniseg.recipes.open_vocab import TextConfig, build_phrase_embedder, text_encoder_id

VocabularyKind = Literal["names", "synonyms", "all"]
RECALL_IOUS = (0.5, 0.7, 0.9)
IGNORE = 255
#: the teacher's pseudo masks of a run, in its output folder (module docstring)
PSEUDO_MASKS = "pseudo_masks.json"


@dataclass
class SemanticEvalConfig:
    """``vocabularies``: which of (a) ``names``, (b) ``synonyms``, (c) ``all`` the evaluation scores (module
    docstring); ``recall``: also proposal recall (OpenSeg only)."""

    vocabularies: tuple[VocabularyKind, ...] = ("names",)
    recall: bool = True


@dataclass
class OpenSegDataConfig(DataConfig):
    """OpenSeg's data section: :class:`~omniseg.recipes.data.DataConfig` plus the caption-only source and the
    teacher of its pseudo masks (module docstring, "Scaling with narratives")."""

    teacher: str = ""  # an OpenSeg run folder / checkpoint whose proposals mask the caption-only images ("": none)
    caption_only_num_images: int = bounded(0, ge=0)  # synthetic caption-only images (0: none)
    caption_only_seed: int = bounded(2000, ge=0)  # their world seed (other than train_seed / val_seed)
    caption_only_weight: float = bounded(1.0, gt=0)  # draw probability vs data.train's 1 (Sec. 4.1: equal)
    pseudo_top_k: int = bounded(16, ge=0)  # at most this many pseudo masks an image (0: every one kept)


@dataclass
class OpenSegExperiment:
    """Top-level config (YAML sections: model, text, data, eval, train)."""

    recipe: Literal["openseg"] = "openseg"
    model: OpenSegConfig = field(default_factory=OpenSegConfig)
    text: TextConfig = field(default_factory=TextConfig)
    data: OpenSegDataConfig = field(default_factory=OpenSegDataConfig)
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


@dataclass
class ALIGNExperiment:
    """Top-level config of the ALIGN-style baseline (YAML sections: model, text, data, eval, train)."""

    recipe: Literal["align"] = "align"
    model: ALIGNConfig = field(default_factory=ALIGNConfig)
    text: TextConfig = field(default_factory=TextConfig)
    data: DataConfig = field(default_factory=DataConfig)
    eval: SemanticEvalConfig = field(default_factory=SemanticEvalConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def train_data(cfg: Any, progress: bool = True) -> RecordDataset:
    """The training view with things + stuff masks and captions (flip / LSJ as ``cfg.data`` says); with
    ``data.caption_only_num_images``, a :class:`~omniseg.data.dataset.PartsDataset` adding the caption-only source."""
    d = cfg.data
    rs, load_image = open_train(d, progress)
    masked = RecordDataset(training_view(rs, d), transforms=train_transforms(d, photos=load_image is None),
                           load_image=load_image, seed=d.train_seed, include_stuff=True)
    if getattr(d, "teacher", "") and not d.caption_only_num_images:
        raise ConfigError("data.teacher: set data.caption_only_num_images > 0 (the images it pseudo-labels)")
    if not getattr(d, "caption_only_num_images", 0):
        return masked
    for key in ("train", "val"):
        if getattr(d, key) == "synth" and d.caption_only_seed == getattr(d, f"{key}_seed"):
            raise ConfigError(f"data.caption_only_seed={d.caption_only_seed} equals data.{key}_seed: the caption-only "
                              "images must be other images")
    return PartsDataset({"masked": masked, "caption_only": caption_only_data(cfg, progress)}, name="openseg")


def caption_only_data(cfg: Any, progress: bool = True) -> RecordDataset:
    """The caption-only synthetic images: no masks, their narratives as captions; with ``data.teacher``, its
    pseudo masks as their class-agnostic masks (module docstring)."""
    d = cfg.data
    rs, load_image = open_source("synth", d.caption_only_num_images, d.caption_only_seed, d.image_size, progress)
    records = [dataclasses.replace(r, instances=[], segments=[], captions=[n.caption for n in r.narratives if
                                   n.caption] or list(r.captions)) for r in rs]
    rs = RecordSet(records=records, categories=rs.categories, name=f"{rs.name}-caption-only")
    if d.teacher:
        for rec, masks in zip(records, teacher_pseudo_masks(cfg, rs, load_image, progress)):
            rec.instances = masks
    return RecordDataset(rs, transforms=train_transforms(d, photos=False), load_image=load_image,
                         seed=d.caption_only_seed)


def teacher_pseudo_masks(cfg: Any, rs: RecordSet, load_image: Any, progress: bool = True) -> list[list[Instance]]:
    """Per record of ``rs``, the pseudo masks of the teacher ``data.teacher`` (source "pseudo", score = the
    mask's confidence): read from ``<train.output_dir>/pseudo_masks.json`` when it was made by the same teacher
    weights, images and rule, else predicted (batches of ``data.batch_size``) and written there."""
    import hashlib
    import json

    import torch
    from tqdm import tqdm

    from omniseg.api import Segmenter
    from omniseg.data.loader import build_test_loader
    from omniseg.engine.checkpoint import resolve_checkpoint
    from omniseg.engine.distributed import is_main_process
    from omniseg.engine.trainer import resolve_device
    from omniseg.modeling.openseg import PSEUDO_MIN_AREA, PSEUDO_NMS_IOU, select_pseudo_masks
    from omniseg.ops.rle import rle_encode
    from omniseg.utils.atomic import atomic_write_json

    d = cfg.data
    try:
        step = resolve_checkpoint(d.teacher)
    except FileNotFoundError as e:
        raise ConfigError(f"data.teacher: {e}") from None
    key = {"teacher_weights_sha256": hashlib.sha256((step / "model.safetensors").read_bytes()).hexdigest(),
           "images": rs.name, "image_size": d.image_size,
           "rule": {"top_k": d.pseudo_top_k, "nms_iou": PSEUDO_NMS_IOU, "min_area": PSEUDO_MIN_AREA}}
    cache = Path(cfg.train.output_dir) / PSEUDO_MASKS
    saved = json.loads(cache.read_text(encoding="utf-8")) if cache.is_file() else {}
    found = saved.get("masks") if saved.get("key") == key else None
    if found is None or len(found) != len(rs):
        teacher = Segmenter.from_checkpoint(step, device=str(resolve_device(cfg.train.device)))
        if teacher.recipe.name != "openseg":
            raise ConfigError(f"data.teacher: {step} is a {teacher.recipe.name} run; it must be an openseg run")
        model, index, found = teacher.model, {r.image_id: k for k, r in enumerate(rs)}, [[] for _ in rs]
        with torch.no_grad():
            for batch in tqdm(build_test_loader(rs, d.batch_size, load_image=load_image), desc="teacher pseudo masks",
                              disable=not progress, leave=False):
                enc = model.encode(batch.images.to(teacher.device), batch.image_sizes)
                for i, image_id in enumerate(batch.image_ids):
                    probs = resize_valid(enc["masks"][i], batch.image_sizes[i], model.pyramid.stride,
                                         batch.orig_sizes[i]).sigmoid()
                    masks, scores = select_pseudo_masks(probs, d.pseudo_top_k)
                    found[index[image_id]] = [{"mask": rle_encode(m.cpu().numpy()), "score": round(float(p), 4)}
                                              for m, p in zip(masks, scores)]
        if is_main_process():
            atomic_write_json(cache, {"teacher": str(step), "key": key, "masks": found})
    return [[Instance(text="region", mask=m["mask"], source="pseudo", score=m["score"]) for m in ms] for ms in found]


def train_loader(cfg: Any, data: RecordDataset, rank: int = 0, world_size: int = 1, seed: int = 0):
    """The default loader; for the two-part dataset of :func:`train_data` each batch slot draws the masked source or the
    caption-only one with probabilities 1 : ``data.caption_only_weight`` (Sec. 4.1)."""
    from omniseg.data.loader import Source, build_train_loader
    from omniseg.recipes.contract import single_source_loader

    if not isinstance(data, PartsDataset):
        return single_source_loader(cfg, data, rank, world_size, seed)
    sources = [Source(data.parts["masked"], 1.0), Source(data.parts["caption_only"], cfg.data.caption_only_weight)]
    return build_train_loader(sources, "mix", cfg.data.batch_size, num_workers=cfg.data.num_workers, rank=rank,
                              world_size=world_size, seed=seed)


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


def build_align_model(cfg: ALIGNExperiment, info: RunInfo | None = None) -> ALIGNBaseline:
    model = build_align(cfg.model)
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
    train_loader=train_loader, eval_fn=semantic_eval_fn, text_encoder=lambda cfg: text_encoder_id(cfg.text),
    predictor=lambda model, cfg, info: semantic_predictor(model, category_names(info), "OpenSeg"),
)
LSEG = Recipe(
    name="lseg", config=LSegExperiment, build_model=build_lseg_model, train_data=train_data,
    eval_fn=semantic_eval_fn, text_encoder=lambda cfg: text_encoder_id(cfg.text),
    predictor=lambda model, cfg, info: semantic_predictor(model, category_names(info), "LSeg+"),
)
ALIGN = Recipe(
    name="align", config=ALIGNExperiment, build_model=build_align_model, train_data=train_data,
    eval_fn=semantic_eval_fn, text_encoder=lambda cfg: text_encoder_id(cfg.text),
    predictor=lambda model, cfg, info: semantic_predictor(model, category_names(info), "ALIGN"),
)
