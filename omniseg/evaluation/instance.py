"""COCO box / mask AP with a base / novel (or any grouping) breakdown.

The evaluation itself is the COCO protocol (IoU 0.50:0.05:0.95, 101 recall points, area
ranges small / medium / large, crowd regions ignored). Two engines run it:
``engine="faster"`` (faster-coco-eval, C++; default) and ``engine="pycocotools"`` (the
reference). Both fill the same ``precision`` array (T x R x K x A x M); every number here,
including the per-group and per-class breakdowns, is read from that array with the
summarize rule of pycocotools (mean over entries > -1), so one evaluation serves all groups.

Ground truth and predictions are :class:`~omniseg.data.records.RecordSet` s converted with
:func:`omniseg.data.formats.coco.to_coco_dict` / :func:`~omniseg.data.formats.coco.to_coco_results`.
Image ids are renumbered 1..N internally (Open Images / LN ids are strings), and so are
annotation ids (COCOeval reads id 0 as "unmatched"). For ``"segm"``
the results' ``bbox`` is dropped so detection areas are mask areas (as detectron2 does).
Ground truth lacking a mask cannot be scored in ``"segm"`` mode: it is left out and counted
in ``"num_gt_skipped"`` (nothing is fabricated from its box).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

from omniseg.data.formats.coco import to_coco_dict, to_coco_results
from omniseg.data.records import RecordSet

IouType = Literal["segm", "bbox"]
Engine = Literal["faster", "pycocotools"]


def _coco_classes(engine: Engine) -> tuple[Any, Any]:
    if engine == "faster":
        from faster_coco_eval import COCO, COCOeval_faster

        return COCO, COCOeval_faster
    if engine == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        return COCO, COCOeval
    raise ValueError(f"engine must be 'faster' or 'pycocotools', got {engine!r}")


def build_coco_inputs(
    gt: RecordSet, pred: RecordSet, iou_type: IouType
) -> tuple[dict[str, Any], list[dict[str, Any]], int]:
    """COCO ground-truth dict and results list with image ids renumbered 1..N.

    Returns:
        (gt_dict, results, num_gt_skipped) where skipped ground truth lacked a mask in
        ``"segm"`` mode.
    """
    if iou_type not in ("segm", "bbox"):
        raise ValueError(f"iou_type must be 'segm' or 'bbox', got {iou_type!r}")
    id_map = {r.image_id: i + 1 for i, r in enumerate(gt.records)}
    if len(id_map) != len(gt.records):
        raise ValueError(f"ground truth {gt.name!r} has duplicate image ids")
    for r in pred.records:
        if r.image_id not in id_map:
            raise ValueError(f"predictions {pred.name!r}: image {r.image_id!r} is not in the ground truth")
        for j, inst in enumerate(r.instances):
            if inst.score is None:
                raise ValueError(
                    f"predictions {pred.name!r}: image {r.image_id!r}: instance {j} has no score"
                )
            if iou_type == "segm" and inst.mask is None:
                raise ValueError(f"predictions {pred.name!r}: image {r.image_id!r}: instance {j} has no mask")
    gt_dict = to_coco_dict(gt)
    for img in gt_dict["images"]:
        img["id"] = id_map[img["id"]]
    anns = []
    for a in gt_dict["annotations"]:
        a["image_id"] = id_map[a["image_id"]]
        if iou_type == "segm" and "segmentation" not in a:
            continue
        a["id"] = len(anns) + 1  # COCOeval uses id 0 for "unmatched": never let a file's 0 through
        anns.append(a)
    skipped = len(gt_dict["annotations"]) - len(anns)
    gt_dict["annotations"] = anns
    known = {c["id"] for c in gt_dict["categories"]}
    for cid in sorted({a["category_id"] for a in anns} - known):
        gt_dict["categories"].append({"id": cid, "name": str(cid), "supercategory": ""})
    results = to_coco_results(pred)
    for res in results:
        res["image_id"] = id_map[res["image_id"]]
        res.pop("bbox" if iou_type == "segm" else "segmentation", None)
    return gt_dict, results, skipped


def run_coco_eval(
    gt_dict: dict[str, Any],
    results: list[dict[str, Any]],
    iou_type: IouType,
    max_dets: int = 100,
    engine: Engine = "faster",
) -> tuple[np.ndarray, np.ndarray, list[int], list[int]]:
    """Run COCOeval with one engine.

    Returns:
        (precision T x R x K x A x M, recall T x K x A x M, category ids in K order,
        maxDets in M order).
    """
    coco_cls, eval_cls = _coco_classes(engine)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = coco_cls()
        coco_gt.dataset = gt_dict
        coco_gt.createIndex()
        if results:
            coco_dt = coco_gt.loadRes(results)
        else:  # pycocotools' loadRes cannot take an empty list
            coco_dt = coco_cls()
            coco_dt.dataset = {
                "images": gt_dict["images"],
                "categories": gt_dict["categories"],
                "annotations": [],
            }
            coco_dt.createIndex()
        ev = eval_cls(coco_gt, coco_dt, iou_type)
        ev.params.maxDets = sorted({1, 10, int(max_dets)})
        ev.evaluate()
        ev.accumulate()
    return (
        np.asarray(ev.eval["precision"]),
        np.asarray(ev.eval["recall"]),
        [int(c) for c in ev.params.catIds],
        list(ev.params.maxDets),
    )


def as_groups(groups: Any) -> dict[str, list[int]]:
    """Group name -> category ids from a mapping, or from a split with ``base_ids`` / ``novel_ids``.

    Duck-typed so this module does not depend on :mod:`omniseg.data.splits`. A split's
    ignored categories form no group (they still count in the overall numbers when the
    ground truth holds them; drop them from the ground truth to exclude them).
    """
    if groups is None:
        return {}
    if isinstance(groups, Mapping):
        return {str(k): [int(c) for c in v] for k, v in groups.items()}
    if hasattr(groups, "base_ids") and hasattr(groups, "novel_ids"):
        return {"base": [int(c) for c in groups.base_ids], "novel": [int(c) for c in groups.novel_ids]}
    raise TypeError(f"groups must be a mapping name -> category ids or a split, got {type(groups).__name__}")


def _mean_valid(x: np.ndarray) -> float:
    v = x[x > -1]
    return float(v.mean()) if v.size else float("nan")


def summarize_precision(
    precision: np.ndarray, recall: np.ndarray, k_index: Sequence[int] | None = None, m_index: int = -1
) -> dict[str, float]:
    """COCO summary numbers for a subset of categories (pycocotools' ``_summarize`` rule).

    Args:
        precision: T x R x K x A x M (T = 10 IoUs 0.50:0.95, A = all/small/medium/large).
        recall: T x K x A x M.
        k_index: category indices into K (None = all).
        m_index: maxDets index.

    Returns:
        AP, AP50, AP75, APs, APm, APl, AR (fractions; NaN where no ground truth).
    """
    k = list(range(precision.shape[2])) if k_index is None else list(k_index)
    # index one axis at a time: mixing a list and an int index would move the axes
    p = precision[..., m_index][:, :, k]
    r = recall[..., m_index][:, k]
    return {
        "AP": _mean_valid(p[..., 0]),
        "AP50": _mean_valid(p[0, ..., 0]),
        "AP75": _mean_valid(p[5, ..., 0]),
        "APs": _mean_valid(p[..., 1]),
        "APm": _mean_valid(p[..., 2]),
        "APl": _mean_valid(p[..., 3]),
        "AR": _mean_valid(r[..., 0]),
    }


def evaluate_instances(
    gt: RecordSet,
    pred: RecordSet,
    iou_type: IouType = "segm",
    groups: Mapping[str, Sequence[int]] | Any | None = None,
    max_dets: int = 100,
    engine: Engine = "faster",
    per_class: bool = False,
) -> dict[str, float]:
    """COCO AP (and AR) of predictions, overall and per category group.

    Args:
        gt: ground-truth RecordSet (categories + instances with boxes / masks, crowd flags).
        pred: predictions over the same image ids; every instance needs ``score``, a
            category (id or name) and, for ``"segm"``, a mask.
        iou_type: "segm" (mask AP) or "bbox" (box AP).
        groups: group name -> category ids, e.g. ``{"base": [...], "novel": [...]}``, or a
            split object with ``base_ids`` / ``novel_ids`` (see :func:`as_groups`). Ids absent
            from the ground truth are ignored.
        max_dets: detections per image kept by COCOeval (its last maxDets).
        engine: "faster" (faster-coco-eval) or "pycocotools" (reference).
        per_class: also return ``"class/<name>/AP"`` and ``"class/<name>/AP50"``.

    Returns:
        "AP", "AP50", "AP75", "APs", "APm", "APl", "AR" and "<group>/<key>" for each group,
        fractions in [0, 1] (NaN where undefined), plus "num_gt_skipped".
    """
    gt_dict, results, skipped = build_coco_inputs(gt, pred, iou_type)
    precision, recall, cat_ids, _ = run_coco_eval(gt_dict, results, iou_type, max_dets, engine)
    out = summarize_precision(precision, recall)
    k_of = {c: i for i, c in enumerate(cat_ids)}
    for name, ids in as_groups(groups).items():
        k = [k_of[int(c)] for c in ids if int(c) in k_of]
        summary = summarize_precision(precision, recall, k) if k else dict.fromkeys(out, float("nan"))
        out.update({f"{name}/{key}": v for key, v in summary.items()})
    if per_class:
        names = {c["id"]: c["name"] for c in gt_dict["categories"]}
        for c, k in k_of.items():
            out[f"class/{names.get(c, str(c))}/AP"] = _mean_valid(precision[:, :, k, 0, -1])
            out[f"class/{names.get(c, str(c))}/AP50"] = _mean_valid(precision[0, :, k, 0, -1])
    out["num_gt_skipped"] = float(skipped)
    return out


#: the one metric-key scheme (training logs, ``omniseg eval``, bench results): ``mask_AP50/novel``,
#: ``box_AP``, ``mask_num_gt_skipped``, ``class/mask/<name>/AP``
METRIC_PREFIX = {"segm": "mask", "bbox": "box"}


def metric_keys(res: dict[str, float], iou_type: str) -> dict[str, float]:
    """:func:`evaluate_instances` results under the project's metric keys: ``AP`` -> ``mask_AP``,
    ``novel/AP50`` -> ``mask_AP50/novel``, ``class/<name>/AP`` -> ``class/mask/<name>/AP``."""
    prefix = METRIC_PREFIX[iou_type]
    out: dict[str, float] = {}
    for k, v in res.items():
        if k.startswith("class/"):
            out[f"class/{prefix}/{k[len('class/'):]}"] = v
        elif "/" in k:
            group, metric = k.split("/", 1)
            out[f"{prefix}_{metric}/{group}"] = v
        else:
            out[f"{prefix}_{k}"] = v
    return out
