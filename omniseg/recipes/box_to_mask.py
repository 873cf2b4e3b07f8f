"""Recipe: train :class:`~omniseg.modeling.box_to_mask.BoxToMask` through the engine and score it.

Evaluation gives the model the ground-truth boxes (and classes) of the validation images
and scores its masks with COCO mask AP; the same boxes filled as rectangles are scored
alongside as the trivial baseline, so "the model learned masks" is a measured claim.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Literal

import torch

from omniseg.data.records import Instance, RecordSet
from omniseg.engine.config import TrainConfig
from omniseg.errors import ArgumentValueError
from omniseg.modeling.box_to_mask import BoxToMask, BoxToMaskConfig, build_box_to_mask
from omniseg.modeling.predictions import ImagePrediction, InstancePredictions
from omniseg.ops.rle import rle_encode
from omniseg.recipes.contract import Recipe, RunInfo
from omniseg.recipes.data import DataConfig, open_val, train_dataset


@dataclass
class BoxToMaskExperiment:
    """Top-level config (YAML sections: model, data, train)."""

    recipe: Literal["box_to_mask"] = "box_to_mask"
    model: BoxToMaskConfig = field(default_factory=BoxToMaskConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def _box_given(inst: Instance) -> bool:
    return inst.box is not None and inst.box_quality == "exact" and not inst.is_crowd


def predict_masks_for_gt_boxes(
    model: BoxToMask, gt: RecordSet, load_image=None, batch_size: int = 8, rank: int = 0, world: int = 1
) -> RecordSet:
    """Predictions: every exact, non-crowd GT box of this rank's images with the model's mask."""
    from omniseg.data.loader import build_test_loader

    device = next(model.parameters()).device
    by_id = {r.image_id: r for r in gt}
    pred = RecordSet(records=[], categories=gt.categories, image_root=gt.image_root, name="box_to_mask")
    for batch in build_test_loader(gt, batch_size, load_image=load_image, rank=rank, world_size=world):
        recs = [by_id[i] for i in batch.image_ids]
        given = [[i for i in r.instances if _box_given(i)] for r in recs]
        boxes = [torch.tensor([i.box for i in g], dtype=torch.float32).reshape(-1, 4).to(device) for g in given]
        masks = model.predict_masks(batch.images.to(device), batch.image_sizes, boxes)
        for r, g, m in zip(recs, given, masks):
            rec = copy.copy(r)
            rec.instances = [
                Instance(text=i.text, category_id=i.category_id, box=i.box, mask=rle_encode(mk.cpu().numpy()),
                         source="box_to_mask", score=1.0)
                for i, mk in zip(g, m)
            ]
            pred.records.append(rec)
    return pred


def filled_box_predictions(gt: RecordSet) -> RecordSet:
    """The trivial baseline: each exact GT box filled as its own mask."""
    import numpy as np

    pred = copy.deepcopy(gt)
    for r in pred:
        out = []
        for i in r.instances:
            if not _box_given(i):
                continue
            m = np.zeros((r.height, r.width), np.uint8)
            x0, y0, x1, y1 = (int(round(v)) for v in i.box)
            m[y0:y1, x0:x1] = 1
            out.append(Instance(text=i.text, category_id=i.category_id, box=i.box, mask=rle_encode(m),
                                source="filled-box", score=1.0))
        r.instances, r.segments = out, []
    return pred


def make_eval_fn(cfg: BoxToMaskExperiment, progress: bool = True):
    """eval_fn for the Trainer: mask AP (and AP50) of the model's masks on GT boxes, gathered over ranks."""
    from omniseg.engine.distributed import all_gather_object, get_rank, get_world_size
    from omniseg.evaluation.instance import evaluate_instances

    d = cfg.data
    gt, load_image = open_val(d, progress)
    baseline = evaluate_instances(gt, filled_box_predictions(gt), iou_type="segm")

    def eval_fn(model: torch.nn.Module) -> dict[str, float]:
        part = predict_masks_for_gt_boxes(model, gt, load_image, rank=get_rank(), world=get_world_size())
        records = [r for p in all_gather_object(part.records) for r in p]
        pred = RecordSet(records=records, categories=gt.categories, image_root=gt.image_root)
        res = evaluate_instances(gt, pred, iou_type="segm")
        return {"mask_AP": res["AP"], "mask_AP50": res["AP50"], "mask_AP75": res["AP75"],
                "filled_box_AP": baseline["AP"], "filled_box_AP50": baseline["AP50"]}

    return eval_fn


def predictor(model: BoxToMask, cfg: BoxToMaskExperiment, info: RunInfo):
    """Masks for given boxes (the auto-labeling use); instance k is named ``vocabulary[k]``
    ("object" past its end)."""

    def predict(images, image_sizes, output_sizes, vocabulary=None, boxes=None) -> list[ImagePrediction]:
        if boxes is None:
            raise ArgumentValueError("box_to_mask segments given boxes: pass boxes=[[x0, y0, x1, y1], ...] "
                                     "(omniseg segment --boxes)")
        if list(image_sizes) != list(output_sizes):
            raise ValueError("box_to_mask predicts at the input size: output_sizes must equal image_sizes")
        device = next(model.parameters()).device
        boxes = [b.to(device).float().reshape(-1, 4) for b in boxes]
        masks = model.predict_masks(images.to(device), list(image_sizes), boxes)
        names = list(vocabulary or [])
        out = []
        for b, m in zip(boxes, masks):
            k = len(b)
            texts = [names[i] if i < len(names) else "object" for i in range(k)]
            out.append(ImagePrediction(InstancePredictions(b, torch.ones(k), torch.arange(k), m), texts))
        return out

    return predict


RECIPE = Recipe(
    name="box_to_mask",
    config=BoxToMaskExperiment,
    build_model=lambda cfg, info: build_box_to_mask(cfg.model),
    train_data=lambda cfg, progress: train_dataset(cfg.data, progress=progress),
    eval_fn=lambda cfg, info, progress: make_eval_fn(cfg, progress),
    predictor=predictor,
    pad_divisor=1,    boxes="required",
)
