"""Recipe: train :class:`~omniseg.modeling.box_to_mask.BoxToMask` through the engine and score it.

Evaluation gives the model the ground-truth boxes (and classes) of the validation images
and scores its masks with COCO mask AP; the same boxes filled as rectangles are scored
alongside as the trivial baseline, so "the model learned masks" is a measured claim.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch

from omniseg.data.records import Instance, RecordSet
from omniseg.engine.config import TrainConfig
from omniseg.modeling.box_to_mask import BoxToMask, BoxToMaskConfig, build_box_to_mask
from omniseg.ops.rle import rle_encode
from omniseg.recipes.data import DataConfig, open_source, train_dataset


@dataclass
class BoxToMaskExperiment:
    """Top-level config (YAML sections: model, data, train)."""

    recipe: str = "box_to_mask"
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
    gt, load_image = open_source(d.val, d.val_num_images, d.val_seed, d.image_size, progress)
    baseline = evaluate_instances(gt, filled_box_predictions(gt), iou_type="segm")

    def eval_fn(model: torch.nn.Module) -> dict[str, float]:
        part = predict_masks_for_gt_boxes(model, gt, load_image, rank=get_rank(), world=get_world_size())
        records = [r for p in all_gather_object(part.records) for r in p]
        pred = RecordSet(records=records, categories=gt.categories, image_root=gt.image_root)
        res = evaluate_instances(gt, pred, iou_type="segm")
        return {"mask_AP": res["AP"], "mask_AP50": res["AP50"], "mask_AP75": res["AP75"],
                "filled_box_AP": baseline["AP"], "filled_box_AP50": baseline["AP50"]}

    return eval_fn


def run(cfg: BoxToMaskExperiment, resume: bool = False) -> dict:
    """Train (optionally resuming) and evaluate; returns the Trainer's summary."""
    from omniseg.data.loader import build_train_loader
    from omniseg.engine.distributed import get_rank, get_world_size
    from omniseg.engine.optim import build_optimizer, build_scheduler
    from omniseg.engine.trainer import Trainer, seed_everything

    t = cfg.train
    seed_everything(t.seed + get_rank(), t.deterministic)
    model = build_box_to_mask(cfg.model)
    data = build_train_loader(
        [train_dataset(cfg.data, progress=t.progress)], "mix", cfg.data.batch_size,
        num_workers=cfg.data.num_workers, rank=get_rank(), world_size=get_world_size(), seed=t.seed,
    )
    optimizer = build_optimizer(model, t)
    trainer = Trainer(model, optimizer, build_scheduler(optimizer, t), data, t,
                      eval_fn=make_eval_fn(cfg, t.progress), run_config=cfg)
    if resume:
        trainer.resume()
    return trainer.train()


def model_from_config(cfg: BoxToMaskExperiment) -> BoxToMask:
    """The model a checkpoint of this recipe holds (used by :class:`omniseg.api.Segmenter`)."""
    return build_box_to_mask(cfg.model)


def predict_image(
    model: BoxToMask, cfg: BoxToMaskExperiment, image: torch.Tensor, vocabulary=None, boxes=None
) -> list[Instance]:
    """Masks for given boxes in one 3 x H x W uint8 image (the auto-labeling use)."""
    if boxes is None:
        raise ValueError("box_to_mask segments given boxes: pass boxes=[[x0, y0, x1, y1], ...]")
    h, w = image.shape[-2:]
    boxes = boxes.to(image.device).float().reshape(-1, 4)
    masks = model.predict_masks(image[None], [(h, w)], [boxes])[0]
    names = vocabulary or []
    return [Instance(text=names[k] if k < len(names) else "object", box=tuple(b.tolist()),
                     mask=rle_encode(m.cpu().numpy()), source="box_to_mask", score=1.0)
            for k, (b, m) in enumerate(zip(boxes, masks))]
