"""Scoring shared by the detector recipes: gather per-rank predictions, COCO mask / box AP by group."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from omniseg.data.records import RecordSet


def gather_predictions(part: RecordSet, gt: RecordSet) -> RecordSet:
    """Every rank's predicted records (a collective: call on all ranks)."""
    from omniseg.engine.distributed import all_gather_object

    records = [r for p in all_gather_object(part.records) for r in p]
    return RecordSet(records=records, categories=gt.categories, image_root=gt.image_root, name=part.name)


def detection_metrics(gt: RecordSet, pred: RecordSet, split: Any = None) -> dict[str, float]:
    """``mask_AP``, ``mask_AP50``, ``mask_AP75`` and ``box_*`` overall, plus ``<key>/base`` and
    ``<key>/novel`` when a split (anything with ``base_ids`` / ``novel_ids``) is given."""
    from omniseg.evaluation.instance import evaluate_instances, metric_keys

    out: dict[str, float] = {}
    for iou_type in ("segm", "bbox"):
        res = evaluate_instances(gt, pred, iou_type=iou_type, groups=split)
        keys = metric_keys({k: v for k, v in res.items() if k.split("/")[-1] in ("AP", "AP50", "AP75")}, iou_type)
        out.update({k: float(v) for k, v in keys.items()})
    return out


def predict_records(
    model: nn.Module, predictor: Any, gt: RecordSet, load_image=None, batch_size: int = 4, rank: int = 0,
    world: int = 1, progress: bool = True, phrases: dict[int, str] | None = None, source: str = "",
) -> RecordSet:
    """Predictions of ``predictor`` (:class:`~omniseg.recipes.contract.Predictor` of ``model``) on
    this rank's share of ``gt``.

    Args:
        model: the module behind the predictor (put in eval mode for the call, its mode restored).
        phrases: class id -> the phrase that names it, asked for as the vocabulary (default: every
            thing class's name); a detection of phrase k is scored as class id k (a closed-vocabulary
            model's own class names are mapped to ids by name).
        source: the predictions' ``source``.
    """
    import copy

    from tqdm import tqdm

    from omniseg.data.loader import build_test_loader

    if phrases is None:
        phrases = {c.id: c.name for c in gt.categories if c.isthing}
    ids = list(phrases)
    texts = [phrases[i] for i in ids]
    by_name = {t: i for i, t in zip(ids, texts)}
    by_id = {r.image_id: r for r in gt}
    pred = RecordSet(records=[], categories=gt.categories, image_root=gt.image_root, name=source)
    was_training = model.training
    model.eval()
    loader = build_test_loader(gt, batch_size, load_image=load_image, rank=rank, world_size=world)
    try:
        for batch in tqdm(loader, desc=f"{source} predict", disable=not progress, leave=False):
            out = predictor(batch.images, batch.image_sizes, batch.orig_sizes, texts)
            for image_id, p in zip(batch.image_ids, out):
                rec = copy.copy(by_id[image_id])
                cat_ids = ids if p.texts == texts else [by_name.get(t) for t in p.texts]
                rec.instances = p.to_instances(cat_ids, source=source)
                rec.segments, rec.captions, rec.narratives, rec.labels = [], [], [], []
                pred.records.append(rec)
    finally:
        model.train(was_training)
    return pred


def detection_eval_fn(
    predictor_of: Callable[[nn.Module], Any], data: Any, output_dir: str, progress: bool = True,
    split_of: Callable[[Any, list], Any] | None = None, source: str = "",
) -> Callable[[nn.Module], dict[str, float]]:
    """eval_fn for the Trainer of a detector recipe: ``predictor_of(model)`` on the validation
    images with their thing class names as the vocabulary, predictions saved to
    ``<output_dir>/val_predictions.json`` (for re-scoring), mask / box AP overall and on the base /
    novel groups of ``split_of(data, categories)`` (default: the named split of ``data.split``)."""
    from omniseg.data.formats.coco import write_coco_results
    from omniseg.engine.distributed import get_rank, get_world_size
    from omniseg.recipes.data import named_split, open_val

    gt, load_image = open_val(data, progress)
    split = (split_of or named_split)(data, gt.categories)

    def eval_fn(model: nn.Module) -> dict[str, float]:
        core = model.module if hasattr(model, "module") else model
        part = predict_records(core, predictor_of(core), gt, load_image, data.batch_size, get_rank(),
                               get_world_size(), progress, source=source)
        pred = gather_predictions(part, gt)
        if get_rank() == 0:
            write_coco_results(f"{output_dir}/val_predictions.json", pred)
        return detection_metrics(gt, pred, split)

    return eval_fn
