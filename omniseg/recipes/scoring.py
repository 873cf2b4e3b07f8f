"""Scoring shared by the detector recipes: gather per-rank predictions, COCO mask / box AP by group."""

from __future__ import annotations

from typing import Any

from omniseg.data.records import RecordSet


def gather_predictions(part: RecordSet, gt: RecordSet) -> RecordSet:
    """Every rank's predicted records (a collective: call on all ranks)."""
    from omniseg.engine.distributed import all_gather_object

    records = [r for p in all_gather_object(part.records) for r in p]
    return RecordSet(records=records, categories=gt.categories, image_root=gt.image_root, name=part.name)


def detection_metrics(gt: RecordSet, pred: RecordSet, split: Any = None) -> dict[str, float]:
    """``mask_AP``, ``mask_AP50``, ``mask_AP75`` and ``box_*`` overall, plus ``<key>/base`` and
    ``<key>/novel`` when a split (anything with ``base_ids`` / ``novel_ids``) is given."""
    from omniseg.evaluation.instance import evaluate_instances

    out: dict[str, float] = {}
    for iou_type, prefix in (("segm", "mask"), ("bbox", "box")):
        res = evaluate_instances(gt, pred, iou_type=iou_type, groups=split)
        for key in ("AP", "AP50", "AP75"):
            out[f"{prefix}_{key}"] = float(res[key])
            for g in ("base", "novel"):
                if f"{g}/{key}" in res:
                    out[f"{prefix}_{key}/{g}"] = float(res[f"{g}/{key}"])
    return out


def vocabulary_predictions(
    model: Any, predict: Any, embed: Any, gt: RecordSet, load_image=None, batch_size: int = 4, rank: int = 0,
    world: int = 1, progress: bool = True, phrases: dict[int, str] | None = None, source: str = "",
) -> RecordSet:
    """Open-vocabulary predictions on this rank's share of ``gt``.

    Args:
        model: the module (put in eval mode for the call, its mode restored after).
        predict: ``predict(images, vocab C x D, image_sizes, output_sizes) -> list[InstancePredictions]``
            whose labels index the vocabulary.
        embed: ``embed(texts) -> C x D`` phrase embeddings.
        phrases: class id -> the phrase that names it (default: every thing class's name); a
            detection of phrase k is scored as class id k.
        source: the predictions' ``source``.
    """
    import copy

    from tqdm import tqdm

    from omniseg.data.loader import build_test_loader

    if embed is None:
        raise ValueError("open-vocabulary prediction needs the model's text embedder")
    if phrases is None:
        phrases = {c.id: c.name for c in gt.categories if c.isthing}
    ids = list(phrases)
    texts = [phrases[i] for i in ids]
    device = next(model.parameters()).device
    vocab = embed(texts).to(device)
    by_id = {r.image_id: r for r in gt}
    pred = RecordSet(records=[], categories=gt.categories, image_root=gt.image_root, name=source)
    was_training = model.training
    model.eval()
    loader = build_test_loader(gt, batch_size, load_image=load_image, rank=rank, world_size=world)
    try:
        for batch in tqdm(loader, desc=f"{source} predict", disable=not progress, leave=False):
            out = predict(batch.images.to(device), vocab, batch.image_sizes, batch.orig_sizes)
            for image_id, p in zip(batch.image_ids, out):
                rec = copy.copy(by_id[image_id])
                rec.instances = p.to_instances(texts, ids, source=source)
                rec.segments, rec.captions, rec.narratives, rec.labels = [], [], [], []
                pred.records.append(rec)
    finally:
        model.train(was_training)
    return pred


def vocabulary_eval_fn(predict_records: Any, data: Any, output_dir: str, progress: bool = True):
    """eval_fn for the Trainer of an open-vocabulary recipe: ``predict_records(model, gt, load_image,
    batch_size, rank, world, progress)`` on the validation images, saved to
    ``<output_dir>/val_predictions.json`` (for re-scoring), mask / box AP overall and on the
    base / novel groups of ``data.split``."""
    from omniseg.data.formats.coco import write_coco_results
    from omniseg.engine.distributed import get_rank, get_world_size
    from omniseg.recipes.data import named_split, open_source

    gt, load_image = open_source(data.val, data.val_num_images, data.val_seed, data.image_size, progress)
    split = named_split(data, gt.categories)

    def eval_fn(model) -> dict[str, float]:
        core = model.module if hasattr(model, "module") else model
        part = predict_records(core, gt, load_image, data.batch_size, get_rank(), get_world_size(), progress)
        pred = gather_predictions(part, gt)
        if get_rank() == 0:
            write_coco_results(f"{output_dir}/val_predictions.json", pred)
        return detection_metrics(gt, pred, split)

    return eval_fn
