"""Recipe: train the Mask Auto-Labeler (:mod:`omniseg.modeling.mal`, mal-mask-auto-labeler phase 1)
and score its pseudo-masks.

Training reads boxes only: :func:`train_data` strips every mask (and panoptic segment) from the
records before the data loader sees them. Evaluation gives the labeler the exact, non-crowd
ground-truth boxes of the held-out images (``data.val``) and compares its masks with the true ones:
pseudo-mask mIoU (over boxes that have a true mask) and COCO mask AP (masks pasted into the image,
scored by the mask score), next to two baselines on the same boxes: the filled box and the ellipse
inscribed in it (keys ``mask_*``, ``filled_box_*``, ``ellipse_*``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from omniseg.data.records import ImageRecord, Instance, RecordSet
from omniseg.engine.config import ConfigError, TrainConfig, bounded
from omniseg.errors import ArgumentValueError
from omniseg.modeling.mal import MAL, MALConfig, build_mal
from omniseg.modeling.predictions import ImagePrediction, InstancePredictions
from omniseg.ops.rle import rle_encode, rle_iou
from omniseg.recipes.contract import Recipe, RunInfo
from omniseg.recipes.data import DataConfig, open_val, train_dataset, training_view


@dataclass
class MALTrainConfig(TrainConfig):
    """:class:`TrainConfig` with MAL's optimizer (Sec. 4.2: AdamW, betas (0.9, 0.9), cosine annealing).

    The paper's lr is 1.5e-6 per image (4.8e-5 at its batch of 32 crops); the weight decay (5e-4) is
    the authors' code's default, the paper does not give one.
    """

    optimizer: Literal["sgd", "adamw"] = "adamw"
    lr: float = bounded(4.8e-5, gt=0)
    betas: tuple[float, float] = bounded((0.9, 0.9), ge=0, lt=1)
    weight_decay: float = bounded(5e-4, ge=0)
    schedule: Literal["cosine", "step", "constant"] = "cosine"


@dataclass
class MALExperiment:
    """Top-level config (YAML sections: model, data, train)."""

    recipe: Literal["mal"] = "mal"
    model: MALConfig = field(default_factory=MALConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: MALTrainConfig = field(default_factory=MALTrainConfig)

    def __post_init__(self) -> None:
        m = self.model
        for key in ("crop_size",) + (("image_size",) if m.input == "image" else ()):
            if m.encoder.startswith("vit") and getattr(m, key) % m.patch_size:
                raise ConfigError(f"model.{key} ({getattr(m, key)}) must be a multiple of model.patch_size "
                                  f"({m.patch_size})")


def strip_masks(rs: RecordSet) -> RecordSet:
    """``rs`` without masks or segments: what MAL may train on (boxes and classes only)."""
    out = copy.copy(rs)
    out.records = []
    for r in rs:
        rec = copy.copy(r)
        rec.instances = [copy.copy(i) for i in r.instances]
        for i in rec.instances:
            i.mask = None
        rec.segments = []
        out.records.append(rec)
    return out


def train_data(cfg: MALExperiment, progress: bool = True):
    """The training RecordDataset: ``data.train`` with its split applied and every mask removed."""
    return train_dataset(cfg.data, progress=progress, view=lambda rs: strip_masks(training_view(rs, cfg.data)))


def _box_given(inst: Instance) -> bool:
    return inst.box is not None and inst.box_quality == "exact" and not inst.is_crowd


def filled_box_mask(box, height: int, width: int) -> np.ndarray:
    """The box filled (pixels whose centers lie in it; as box_to_mask's baseline, rounded edges)."""
    m = np.zeros((height, width), np.uint8)
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    m[max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)] = 1
    return m


def ellipse_mask(box, height: int, width: int) -> np.ndarray:
    """The ellipse inscribed in the box: pixels whose centers satisfy ((x-cx)/a)^2 + ((y-cy)/b)^2 <= 1."""
    x0, y0, x1, y1 = (float(v) for v in box)
    a, b = max((x1 - x0) / 2, 1e-6), max((y1 - y0) / 2, 1e-6)
    xs, ys = np.arange(width) + 0.5, np.arange(height) + 0.5
    d = ((xs[None, :] - (x0 + x1) / 2) / a) ** 2 + ((ys[:, None] - (y0 + y1) / 2) / b) ** 2
    return (d <= 1).astype(np.uint8)


def _with_masks(r: ImageRecord, given: list[Instance], masks: list[np.ndarray], scores: list[float],
                source: str) -> ImageRecord:
    rec = copy.copy(r)
    rec.instances = [Instance(text=i.text, category_id=i.category_id, box=i.box, mask=rle_encode(m), source=source,
                              score=float(s)) for i, m, s in zip(given, masks, scores)]
    rec.segments = []
    return rec


def baseline_predictions(gt: RecordSet, kind: Literal["filled_box", "ellipse"]) -> RecordSet:
    """Each exact, non-crowd GT box with the baseline mask (score 1)."""
    fn = filled_box_mask if kind == "filled_box" else ellipse_mask
    records = []
    for r in gt:
        given = [i for i in r.instances if _box_given(i)]
        records.append(_with_masks(r, given, [fn(i.box, r.height, r.width) for i in given], [1.0] * len(given), kind))
    return RecordSet(records=records, categories=gt.categories, image_root=gt.image_root, name=kind)


def predict_for_gt_boxes(model: MAL, gt: RecordSet, load_image=None, batch_size: int = 4, rank: int = 0,
                         world: int = 1) -> list[ImageRecord]:
    """This rank's images with every exact, non-crowd GT box carrying the labeler's mask and score."""
    from omniseg.data.loader import build_test_loader

    device = next(model.parameters()).device
    by_id = {r.image_id: r for r in gt}
    out = []
    for batch in build_test_loader(gt, batch_size, load_image=load_image, rank=rank, world_size=world):
        recs = [by_id[i] for i in batch.image_ids]
        given = [[i for i in r.instances if _box_given(i)] for r in recs]
        boxes = [torch.tensor([i.box for i in g], dtype=torch.float32).reshape(-1, 4) for g in given]
        results = model.predict_masks(batch.images.to(device), batch.image_sizes, boxes)
        for r, g, (masks, scores) in zip(recs, given, results):
            out.append(_with_masks(r, g, list(masks.cpu().numpy().astype(np.uint8)), scores.tolist(), "mal"))
    return out


def mean_iou(gt: RecordSet, pred: RecordSet) -> float:
    """Mean mask IoU over the exact, non-crowd GT boxes that have a true mask; ``pred`` holds one
    instance per such box (with or without a true mask), in the GT order (NaN: no box to score)."""
    by_id = {r.image_id: r for r in pred}
    ious = []
    for r in gt:
        given = [i for i in r.instances if _box_given(i)]
        p = by_id.get(r.image_id)
        if p is None or len(p.instances) != len(given):
            raise ValueError(f"image {r.image_id}: predictions do not pair with its {len(given)} given boxes")
        ious += [float(rle_iou([q.mask], [i.mask])[0, 0]) for i, q in zip(given, p.instances) if i.mask is not None]
    return float(np.mean(ious)) if ious else float("nan")


def scores_of(gt: RecordSet, pred: RecordSet, prefix: str) -> dict[str, float]:
    """``{prefix}_mIoU``, ``{prefix}_AP``, ``{prefix}_AP50``, ``{prefix}_AP75`` of ``pred`` on ``gt``."""
    from omniseg.evaluation.instance import evaluate_instances

    res = evaluate_instances(gt, pred, iou_type="segm")
    return {f"{prefix}_mIoU": mean_iou(gt, pred), f"{prefix}_AP": res["AP"], f"{prefix}_AP50": res["AP50"],
            f"{prefix}_AP75": res["AP75"]}


def make_eval_fn(cfg: MALExperiment, progress: bool = True):
    """eval_fn for the Trainer: the labeler's scores and the two baselines' (module docstring)."""
    from omniseg.engine.distributed import all_gather_object, get_rank, get_world_size

    gt, load_image = open_val(cfg.data, progress)
    baselines = {**scores_of(gt, baseline_predictions(gt, "filled_box"), "filled_box"),
                 **scores_of(gt, baseline_predictions(gt, "ellipse"), "ellipse")}

    def eval_fn(model: torch.nn.Module) -> dict[str, float]:
        core = model.module if hasattr(model, "module") else model
        part = predict_for_gt_boxes(core, gt, load_image, cfg.data.batch_size, get_rank(), get_world_size())
        records = [r for p in all_gather_object(part) for r in p]
        pred = RecordSet(records=records, categories=gt.categories, image_root=gt.image_root, name="mal")
        return {**scores_of(gt, pred, "mask"), **baselines}

    return eval_fn


def predictor(model: MAL, cfg: MALExperiment, info: RunInfo):
    """Masks for given boxes (box-prompted, the auto-labeling use): one instance per box, in order,
    scored by its mask score; instance k is named ``vocabulary[k]`` ("object" past its end)."""

    def predict(images, image_sizes, output_sizes, vocabulary=None, boxes=None) -> list[ImagePrediction]:
        if boxes is None:
            raise ArgumentValueError("mal segments given boxes: pass boxes=[[x0, y0, x1, y1], ...] "
                                     "(omniseg segment --boxes)")
        if list(image_sizes) != list(output_sizes):
            raise ValueError("mal predicts at the input size: output_sizes must equal image_sizes")
        device = next(model.parameters()).device
        boxes = [b.to(device).float().reshape(-1, 4) for b in boxes]
        names = list(vocabulary or [])
        out = []
        for b, (masks, scores) in zip(boxes, model.predict_masks(images.to(device), list(image_sizes), boxes)):
            k = len(b)
            texts = [names[i] if i < len(names) else "object" for i in range(k)]
            out.append(ImagePrediction(InstancePredictions(b, scores, torch.arange(k), masks), texts))
        return out

    return predict


RECIPE = Recipe(
    name="mal",
    config=MALExperiment,
    build_model=lambda cfg, info: build_mal(cfg.model),
    train_data=train_data,
    eval_fn=lambda cfg, info, progress: make_eval_fn(cfg, progress),
    predictor=predictor,
    pad_divisor=1,
    boxes="required",
)
