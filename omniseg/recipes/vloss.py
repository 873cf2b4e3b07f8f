"""Recipe ``vloss``: one query-based model trained on panoptic masks, detection boxes and image-text pairs at
once (:mod:`omniseg.modeling.vloss`; vloss paper, "VLOSS: omni-supervised segmentation").

Training data (paper Sec. 4.1 on the synthetic world: COCO panoptic / Objects365 / COCO captions become three
disjoint image sets of one world, each with one supervision kind; :func:`train_data`):

* ``panoptic``: ``data.train`` (``train_num_images`` images at ``train_seed``) with the masks of the *panoptic
  classes* only: every stuff class and the thing classes of the split's base group (``data.split`` /
  ``data.split_file``). Things of the other classes are not labelled there at all (their pixels are void),
  as an Objects365-only class is not in COCO panoptic.
* ``detection``: ``data.detection`` (``detection_num_images`` at ``detection_seed``) with the exact boxes of
  every thing class of the split (base and novel: the novel ones are the *open-world* classes, seen only
  here). Masks: from ``data.pseudo_masks`` when given (paper Sec. 3.2: pseudo masks of an off-the-shelf
  labeler; here a COCO instances JSON written by ``omniseg autolabel`` with a MAL run, or a COCO results
  list, matched to the boxes by image file name, class and box IoU >= 0.9); otherwise box-only targets
  (``mask_valid`` False), which the model supervises with its box-projection loss.
* ``image_text``: ``data.image_text`` (``image_text_num_images`` at ``image_text_seed``) with its captions
  only; one caption per image and step, embedded by the recipe's frozen text encoder (``text``), feeds L_con.

An empty spec (``data.detection=""``, ``data.image_text=""``) leaves that source out (the Table-3 baseline
trains on panoptic data only).

Schedules (``data.schedule``, Sec. 3.4 / Fig. 3 / Table 4) on :class:`omniseg.data.sampler.MultiSourceBatchSampler`:
``mix`` = every batch slot drawn from the three sources by weight; ``stt`` = ``stt_cycles`` cycles, each a
warm-up (detection + image-text batches, alternating by integer weight) of ``switch`` of the cycle followed by
a cool-down (panoptic + image-text batches); ``pretrain_finetune`` = detection + image-text batches for the
first ``switch`` of the run, then panoptic batches only. The batch is one kind except under ``mix``.
The classes of every batch are the names of every category (things of both groups and stuff), so a box
of a detection-only class and a panoptic segment are scored against the same text embeddings.

Evaluation (:func:`panoptic_eval_fn`, ``data.val``: held-out images with every class's panoptic ground
truth; vocabulary = every category name): ``PQ``/``SQ``/``RQ`` (all, ``_th``, ``_st``;
:mod:`omniseg.evaluation.panoptic`), thing mask AP (``mask_AP``, ``mask_AP50``, ``mask_AP75``;
:mod:`omniseg.evaluation.instance`), and per split group: ``PQ_th/base`` / ``PQ_th/novel`` (mean PQ of
the group's thing classes) and ``mask_AP/novel`` ... -- ``novel`` = the detection-only (open-world) classes.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from omniseg.data.dataset import PartsDataset, RecordDataset
from omniseg.data.pseudo_masks import attach_pseudo_masks
from omniseg.data.records import Category, ImageRecord, RecordSet, Segment
from omniseg.engine.config import ConfigError, TrainConfig, bounded
from omniseg.errors import ArgumentValueError
from omniseg.modeling.predictions import ImagePrediction
from omniseg.modeling.vloss import (
    VLOSS,
    VLOSSConfig,
    VLOSSPrediction,
    VLOSSTarget,
    build_vloss,
    vloss_inference,
)
from omniseg.recipes.contract import Recipe, RunInfo
from omniseg.recipes.data import DataConfig, SplitName, named_split, open_source, open_val, train_transforms
from omniseg.recipes.open_vocab import TextConfig, build_phrase_embedder, text_encoder_id

Schedule = Literal["mix", "pretrain_finetune", "stt"]
Kind = Literal["panoptic", "detection", "image_text"]
KINDS: tuple[Kind, ...] = ("panoptic", "detection", "image_text")


@dataclass
class VLOSSDataConfig(DataConfig):
    """:class:`DataConfig` (``train`` = the panoptic source) plus the other two sources and the schedule."""

    split: SplitName = "voc-like"  # base = panoptic thing classes, novel = detection-only (open-world)
    detection: str = "synth"  # "" = no detection source
    detection_images: str = ""
    detection_num_images: int = bounded(200, ge=1)
    detection_seed: int = bounded(2000, ge=0)
    pseudo_masks: str = ""  # COCO instances JSON (omniseg autolabel) / results list: masks for the detection boxes
    image_text: str = "synth"  # "" = no image-text source
    image_text_images: str = ""
    image_text_num_images: int = bounded(200, ge=1)
    image_text_seed: int = bounded(3000, ge=0)
    schedule: Schedule = "stt"
    switch: float = bounded(0.5, gt=0, lt=1)  # stt: warm-up share of a cycle; pretrain_finetune: of the run
    stt_cycles: int = bounded(4, ge=1)  # stt: warm-up + cool-down cycles over train.max_iter (the paper: epochs)
    panoptic_weight: float = bounded(1.0, ge=0)  # mix: probabilities; stt / pretrain_finetune: integer repeats
    detection_weight: float = bounded(1.0, ge=0)
    image_text_weight: float = bounded(1.0, ge=0)


@dataclass
class PanopticEvalConfig:
    """Mask2Former panoptic inference thresholds (:func:`omniseg.modeling.vloss.vloss_inference`)."""

    overlap_threshold: float = bounded(0.8, ge=0, le=1)
    object_threshold: float = bounded(0.8, ge=0, le=1)


@dataclass
class VLOSSExperiment:
    """Top-level config (YAML sections: model, text, data, eval, train)."""

    recipe: Literal["vloss"] = "vloss"
    model: VLOSSConfig = field(default_factory=VLOSSConfig)
    text: TextConfig = field(default_factory=TextConfig)
    data: VLOSSDataConfig = field(default_factory=VLOSSDataConfig)
    eval: PanopticEvalConfig = field(default_factory=PanopticEvalConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# ----------------------------------------------------------------------------- data


def _view(rs: RecordSet, kind: Kind, keep_things: set[int]) -> RecordSet:
    """``rs`` as the ``kind`` source sees it: panoptic = stuff + ``keep_things`` segments and instances;
    detection = boxes of ``keep_things`` instances (masks dropped); image_text = captions only."""
    out = RecordSet(records=[], categories=list(rs.categories), image_root=rs.image_root, name=f"vloss/{kind}")
    for r in rs:
        rec = copy.copy(r)
        rec.narratives, rec.labels = [], []
        insts = [i for i in r.instances if i.category_id in keep_things] if kind != "image_text" else []
        rec.instances = [dataclasses.replace(i, mask=None) if kind == "detection" else i for i in insts]
        rec.segments = [s for s in r.segments if not s.is_thing or s.category_id in keep_things] \
            if kind == "panoptic" else []
        rec.captions = list(r.captions) if kind == "image_text" else []
        out.records.append(rec)
    return out


def source_split(cfg: VLOSSDataConfig, categories: list[Category]):
    """The split of ``cfg`` over ``categories`` (base: panoptic things, novel: detection-only things)."""
    split = named_split(cfg, categories)
    if split is None:
        raise ConfigError("data.split: VLOSS needs a split of the thing classes (base = labelled in the panoptic "
                          "source, novel = detection-only); e.g. data.split=voc-like or data.split_file=FILE.json")
    return split


def train_data(cfg: VLOSSExperiment, progress: bool = True) -> PartsDataset:
    """The three training sources (module docstring), each with ``data``'s augmentations."""
    d = cfg.data
    specs = {"panoptic": (d.train, d.train_num_images, d.train_seed, d.train_images),
             "detection": (d.detection, d.detection_num_images, d.detection_seed, d.detection_images),
             "image_text": (d.image_text, d.image_text_num_images, d.image_text_seed, d.image_text_images)}
    seeds = [s[2] for s in specs.values() if s[0]]
    if len(set(seeds)) < len(seeds) and all(s[0] == "synth" for s in specs.values() if s[0]):
        raise ConfigError(f"data.train_seed / detection_seed / image_text_seed: {seeds} -- the synthetic sources "
                          "need different seeds (disjoint images, as the paper's three data sets)")
    parts: dict[Kind, RecordDataset] = {}
    categories: list[Category] | None = None
    split = None
    for kind, (spec, n, seed, images) in specs.items():
        if not spec:
            continue
        rs, load_image = open_source(spec, n, seed, d.image_size, progress, images, f"data.{kind}_images")
        if categories is None:
            categories, split = rs.categories, source_split(d, rs.categories)
        elif [(c.id, c.name) for c in rs.categories] != [(c.id, c.name) for c in categories]:
            raise ConfigError(f"data.{kind}: {spec} has other categories than data.train; the sources must share "
                              "one category list (ids and names)")
        things = set(split.base_ids) | (set(split.novel_ids) if kind == "detection" else set())
        view = _view(rs, kind, things)
        if kind == "detection" and d.pseudo_masks:
            if attach_pseudo_masks(view, d.pseudo_masks) == 0:
                raise ConfigError(f"data.pseudo_masks: {d.pseudo_masks} has no mask for any box of data.detection "
                                  "(matched by image file name, class and box)")
        parts[kind] = RecordDataset(view, transforms=train_transforms(d, photos=load_image is None),
                                    load_image=load_image, seed=seed, include_stuff=kind == "panoptic")
    if d.schedule != "mix" and ("detection" not in parts or "panoptic" not in parts):
        raise ConfigError(f"data.schedule={d.schedule} switches between detection and panoptic batches; "
                          "it needs both sources (data.detection and data.train)")
    return PartsDataset(parts, list(categories or []), name="vloss")


#: which sampler phase each kind joins (Sec. 3.4): warm-up = detection (+ image-text), cool-down = panoptic
PHASES: dict[str, dict[Kind, str]] = {"stt": {"panoptic": "cooldown", "detection": "warmup", "image_text": "both"},
                                      "pretrain_finetune": {"panoptic": "cooldown", "detection": "warmup",
                                                            "image_text": "warmup"}}


def schedule_lengths(cfg: VLOSSExperiment) -> tuple[int, int]:
    """(warm-up, cool-down) batches of one switchable cycle: ``stt`` = ``stt_cycles`` cycles over the run,
    ``pretrain_finetune`` = one cycle as long as the run."""
    d, total = cfg.data, cfg.train.max_iter
    cycle = total if d.schedule == "pretrain_finetune" else max(2, math.ceil(total / d.stt_cycles))
    warm = min(max(1, round(d.switch * cycle)), cycle - 1) if cycle > 1 else 1
    return warm, max(1, cycle - warm)


def train_loader(cfg: VLOSSExperiment, data: PartsDataset, rank: int = 0, world_size: int = 1, seed: int = 0):
    """The endless training loader of ``data.schedule`` (module docstring) over ``data.parts``."""
    from omniseg.data.loader import Source, build_train_loader

    d = cfg.data
    weights = {"panoptic": d.panoptic_weight, "detection": d.detection_weight, "image_text": d.image_text_weight}
    kinds = list(data.parts)
    phase = PHASES.get(d.schedule, {})
    sources = [Source(data.parts[k], weights[k], phase.get(k, "both")) for k in kinds]
    if d.schedule == "mix":
        return build_train_loader(sources, "mix", d.batch_size, num_workers=d.num_workers, rank=rank,
                                  world_size=world_size, seed=seed)
    for k in kinds:
        if weights[k] != int(weights[k]):
            raise ConfigError(f"data.{k}_weight={weights[k]}: data.schedule={d.schedule} alternates whole batches "
                              "and needs integer weights")
    warm, cool = schedule_lengths(cfg)
    return build_train_loader(sources, "switchable", d.batch_size, num_workers=d.num_workers, rank=rank,
                              world_size=world_size, seed=seed, warmup_batches=warm, cooldown_batches=cool)


# ----------------------------------------------------------------------------- model


class VLOSSRun(nn.Module):
    """The trained module of a run: the VLOSS network (:attr:`net`) plus what turns a :class:`Batch` into its
    inputs -- normalization, the class-name and caption embeddings of the frozen text encoder, and one
    :class:`VLOSSTarget` per image by the image's source kind."""

    def __init__(self, net: VLOSS, embed: Any, class_names: Sequence[str], class_ids: Sequence[int],
                 tokens: bool = False):
        super().__init__()
        from omniseg.modeling.preprocess import PIXEL_MEAN, PIXEL_STD

        self.net, self.embed = net, embed
        self.class_names, self.tokens = list(class_names), tokens
        self.index = {int(c): k for k, c in enumerate(class_ids)}
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(1, 3, 1, 1), persistent=False)

    def text(self, texts: Sequence[str]) -> Tensor:
        """len(texts) x E L2-normalised frozen embeddings on the model's device."""
        return nn.functional.normalize(self.embed(list(texts)).to(self.pixel_mean.device), dim=-1)

    def run(self, images: Tensor, image_sizes: Sequence[tuple[int, int]], texts: Sequence[str]):
        from omniseg.modeling.preprocess import normalize_images

        class_emb = self.text(texts)
        return self.net(normalize_images(images, self.pixel_mean, self.pixel_std, image_sizes), class_emb), class_emb

    def target(self, t: Any, kind: Kind, captions: Sequence[str]) -> VLOSSTarget:
        """One image's :class:`VLOSSTarget` from its collated targets (panoptic / detection) or captions."""
        from omniseg.ops.masks import masks_to_boxes

        dev = self.pixel_mean.device
        known = torch.tensor([int(c) in self.index for c in t.category_ids.tolist()], dtype=torch.bool)
        t = t.select((~t.is_crowd.cpu()) & known & (kind != "image_text"))
        masks = t.masks.to(dev, torch.float32)
        boxes = torch.where(t.has_box[:, None], t.boxes, masks_to_boxes(t.masks)).to(dev)
        labels = torch.tensor([self.index[int(c)] for c in t.category_ids.tolist()], dtype=torch.long, device=dev)
        cap_emb = cap_tokens = None
        if kind == "image_text" and captions:
            caption = captions[int(torch.randint(len(captions), ()))]  # one caption per image and step (Sec. 3.5)
            cap_emb = self.text([caption])[0]
            if self.tokens:  # FILIP-style L_con (Table 6): one embedding per word of the caption
                words = [w for w in (x.strip(".,;:!?\"'()").lower() for x in caption.split()) if w]
                cap_tokens = self.text(words or [caption])
        return VLOSSTarget(kind=kind, labels=labels, masks=masks if kind != "image_text" else None,
                           mask_valid=t.has_mask.to(dev), boxes=boxes, caption_emb=cap_emb, caption_tokens=cap_tokens)

    def forward(self, batch: Any) -> dict[str, Tensor]:
        kinds = [source_kind(s) for s in batch.sources]
        targets = [self.target(t, k, c) for t, k, c in zip(batch.targets, kinds, batch.captions)]
        out, class_emb = self.run(batch.images, batch.image_sizes, self.class_names)
        return self.net.loss(out, targets, class_emb)


def source_kind(source: str) -> Kind:
    """The supervision kind of a sample's source name (``vloss/<kind>``)."""
    kind = source.rsplit("/", 1)[-1]
    if kind not in KINDS:
        raise ValueError(f"sample source {source!r} is not a vloss source (vloss/panoptic, vloss/detection, "
                         "vloss/image_text)")
    return kind  # type: ignore[return-value]


def build_model(cfg: VLOSSExperiment, info: RunInfo) -> VLOSSRun:
    cats = sorted(info.category_objects(), key=lambda c: c.id)
    return VLOSSRun(build_vloss(cfg.model), build_phrase_embedder(cfg.text, cfg.model.embed_dim),
                    [c.name for c in cats], [c.id for c in cats], tokens=cfg.model.contrastive == "filip")


# ----------------------------------------------------------------------------- prediction


def predictor(model: VLOSSRun, cfg: VLOSSExperiment, info: RunInfo):
    """Any vocabulary (default: every category's name) -> instances (things) + panoptic segments. A name is a
    stuff class where a training stuff category has it; every other name is a thing class."""
    stuff = {c.name for c in info.category_objects() if not c.isthing}

    def predict(images, image_sizes, output_sizes, vocabulary=None, boxes=None) -> list[ImagePrediction]:
        if boxes is not None:
            raise ArgumentValueError("vloss finds its own segments; boxes= (--boxes) is for box-to-mask models")
        texts = list(vocabulary or model.class_names)
        if not texts:
            raise ArgumentValueError("vloss: empty vocabulary (pass vocabulary=[...])")
        is_thing = [t not in stuff for t in texts]
        with torch.no_grad():
            out, _ = model.run(images.to(model.pixel_mean.device), image_sizes, texts)
            results = vloss_inference(out, list(image_sizes), list(output_sizes), is_thing=is_thing,
                                      overlap_threshold=cfg.eval.overlap_threshold,
                                      object_threshold=cfg.eval.object_threshold)
        return [to_prediction(r, texts) for r in results]

    return predict


def to_prediction(result: VLOSSPrediction, texts: Sequence[str]) -> ImagePrediction:
    """One image of :func:`vloss_inference` as an :class:`ImagePrediction` (``panoptic``: index into
    ``segments`` or -1; ``segments``: ``text``, ``label``, ``isthing``, ``score``)."""
    panoptic = result.segment_map.long() - 1  # segment ids are 1, 2, ... in order; 0 (none) -> -1
    segments = [{"text": texts[s.label], "label": s.label, "isthing": s.isthing, "score": s.score}
                for s in result.segments]
    return ImagePrediction(result.instances, list(texts), panoptic=panoptic, segments=segments)


# ----------------------------------------------------------------------------- evaluation


def prediction_record(rec: ImageRecord, p: ImagePrediction, ids: Sequence[int]) -> ImageRecord:
    """``rec``'s image with the prediction's segments and instances (``ids[label]`` = category id)."""
    from omniseg.ops.rle import rle_encode

    out = copy.copy(rec)
    pan = p.panoptic.cpu().numpy()
    out.segments = [Segment(s["text"], ids[s["label"]], rle_encode(pan == j), s["isthing"], id=j + 1)
                    for j, s in enumerate(p.segments or []) if (pan == j).any()]
    out.instances = p.to_instances(list(ids), source="vloss")
    out.captions, out.narratives, out.labels = [], [], []
    return out


def panoptic_metrics(gt: RecordSet, pred: RecordSet, split: Any) -> dict[str, float]:
    """PQ (all / things / stuff), thing mask AP, and both per split group (module docstring)."""
    from omniseg.evaluation.instance import evaluate_instances, metric_keys
    from omniseg.evaluation.panoptic import panoptic_quality

    pq = panoptic_quality(gt, pred, gt.categories, progress=False)
    out = {k: float(v) for k, v in pq.items() if k[:2] in ("PQ", "SQ", "RQ")}
    for group, ids in (("base", split.base_ids), ("novel", split.novel_ids)):
        vals = [pq["per_class"][c]["PQ"] for c in ids if c in pq["per_class"]]
        out[f"PQ_th/{group}"] = float(np.mean(vals)) if vals else float("nan")
    things = {c.id for c in gt.categories if c.isthing}
    truth = RecordSet(records=[dataclasses.replace(r, instances=[i for i in r.instances if i.category_id in things])
                               for r in gt], categories=gt.categories)
    res = evaluate_instances(truth, pred, iou_type="segm", groups=split)
    out.update({k: float(v) for k, v in metric_keys(
        {k: v for k, v in res.items() if k.split("/")[-1] in ("AP", "AP50", "AP75")}, "segm").items()})
    return out


def panoptic_eval_fn(cfg: VLOSSExperiment, info: RunInfo, progress: bool = True):
    """eval_fn for the Trainer: predict ``data.val`` with every category's name, score (module docstring)."""
    from omniseg.data.loader import build_test_loader
    from omniseg.engine.distributed import get_rank, get_world_size
    from omniseg.recipes.scoring import gather_predictions

    gt, load_image = open_val(cfg.data, progress)
    split = source_split(cfg.data, gt.categories)
    cats = sorted(gt.categories, key=lambda c: c.id)
    texts, ids = [c.name for c in cats], [c.id for c in cats]
    by_id = {r.image_id: r for r in gt}

    def eval_fn(model: nn.Module) -> dict[str, float]:
        core = model.module if hasattr(model, "module") else model
        predict, was_training = predictor(core, cfg, info), core.training
        part = RecordSet(records=[], categories=gt.categories, name="vloss")
        core.eval()
        try:
            for batch in build_test_loader(gt, cfg.data.batch_size, load_image=load_image, rank=get_rank(),
                                           world_size=get_world_size()):
                for image_id, p in zip(batch.image_ids, predict(batch.images, batch.image_sizes, batch.orig_sizes,
                                                                texts)):
                    part.records.append(prediction_record(by_id[image_id], p, ids))
        finally:
            core.train(was_training)
        return panoptic_metrics(gt, gather_predictions(part, gt), split)

    return eval_fn


RECIPE = Recipe(
    name="vloss", config=VLOSSExperiment, build_model=build_model, train_data=train_data,
    eval_fn=panoptic_eval_fn, predictor=predictor, train_loader=train_loader,
    text_encoder=lambda cfg: text_encoder_id(cfg.text),
)
