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
