"""Open-Images-style AP50 with group-of handling and at most ``max_dets`` detections per image.

What is implemented (the Open Images detection metric, as in the OID challenge evaluation):

    1. Per image, only the ``max_dets`` highest-scoring detections (over all classes) are kept.
    2. Per image and class, detections in decreasing score order are matched to the
       non-group-of ground truth (``is_crowd=False``) with which they have the highest IoU.
       IoU >= 0.5 and that box not yet taken -> true positive; IoU >= 0.5 but already taken
       (duplicate) -> false positive.
    3. Detections still unmatched whose intersection-over-detection-area (IoA) with a
       group-of box (``is_crowd=True``) is >= 0.5 are assigned to the group-of box of highest
       IoA. They are not false positives; each group-of box that received at least one
       detection counts as ONE true positive with the highest score among them. A group-of
       box that received none is a false negative (group-of boxes count in the number of
       positives).
    4. All other detections are false positives.
    5. Per class, AP is the area under the precision/recall curve with precision made
       monotonically non-increasing (all points, no 11-point sampling, PASCAL VOC 2010+).
       Classes with no ground truth are NaN and left out of the mean.

Not implemented: Open Images' image-level label verification (detections of classes not
verified for an image are ignored there); here every image is treated as exhaustively
labeled for every class. Boxes use continuous XYXY pixel coordinates. ``iou_type="segm"``
runs the same protocol on RLE masks (IoA from COCO's crowd IoU, which is inter / area(det)).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Literal

import numpy as np
from tqdm import tqdm

from omniseg.data.records import Instance, RecordSet
from omniseg.evaluation.proposals import box_iou
from omniseg.ops.rle import rle_iou


def box_ioa(det: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Intersection over detection area, D x G, for XYXY boxes (0 for empty detections)."""
    det = np.asarray(det, dtype=np.float64).reshape(-1, 4)
    gt = np.asarray(gt, dtype=np.float64).reshape(-1, 4)
    area = np.clip(det[:, 2] - det[:, 0], 0, None) * np.clip(det[:, 3] - det[:, 1], 0, None)
    iw = np.clip(
        np.minimum(det[:, None, 2], gt[None, :, 2]) - np.maximum(det[:, None, 0], gt[None, :, 0]), 0, None
    )
    ih = np.clip(
        np.minimum(det[:, None, 3], gt[None, :, 3]) - np.maximum(det[:, None, 1], gt[None, :, 1]), 0, None
    )
    return np.where(area[:, None] > 0, iw * ih / np.where(area > 0, area, 1.0)[:, None], 0.0)


def voc_average_precision(scores: np.ndarray, is_tp: np.ndarray, num_gt: int) -> float:
    """Area under the monotone precision/recall curve (all points).

    Args:
        scores: D detection scores.
        is_tp: D booleans (true positive or false positive).
        num_gt: number of positives; 0 gives NaN.

    Returns:
        AP in [0, 1], or NaN when ``num_gt == 0``.
    """
    if num_gt == 0:
        return float("nan")
    if len(scores) == 0:
        return 0.0
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    tp = np.asarray(is_tp, dtype=np.float64)[order]
    ctp, cfp = np.cumsum(tp), np.cumsum(1.0 - tp)
    precision = ctp / (ctp + cfp)
    recall = ctp / num_gt
    p = np.concatenate([[0.0], precision, [0.0]])
    r = np.concatenate([[0.0], recall, [1.0]])
    p = np.maximum.accumulate(p[::-1])[::-1]
    steps = np.nonzero(r[1:] != r[:-1])[0] + 1
    return float(np.sum((r[steps] - r[steps - 1]) * p[steps]))


def _match_image_class(
    dets: list[Instance], gts: list[Instance], iou_type: str, thr: float
) -> tuple[list[float], list[bool]]:
    """Scores and TP flags for one image and class (after group-of merging)."""
    dets = sorted(dets, key=lambda d: -float(d.score))
    scores = [float(d.score) for d in dets]
    normal = [g for g in gts if not g.is_crowd]
    group = [g for g in gts if g.is_crowd]
    if not dets:
        return [], []
    tp = np.zeros(len(dets), dtype=bool)
    done = np.zeros(len(dets), dtype=bool)  # TP or duplicate FP decided by step 2
    if normal:
        if iou_type == "bbox":
            iou = box_iou(np.array([d.box for d in dets]), np.array([g.box for g in normal]))
        else:
            iou = rle_iou([d.mask for d in dets], [g.mask for g in normal])
        taken = np.zeros(len(normal), dtype=bool)
        best = iou.argmax(axis=1)
        for i in range(len(dets)):
            g = best[i]
            if iou[i, g] >= thr:
                done[i] = True
                if not taken[g]:
                    taken[g] = tp[i] = True
    out_scores = [s for s, d in zip(scores, done) if d]
    out_tp = [bool(t) for t, d in zip(tp, done) if d]
    rest = np.nonzero(~done)[0]
    group_best: dict[int, float] = {}
    in_group = np.zeros(len(dets), dtype=bool)
    if group and len(rest):
        if iou_type == "bbox":
            ioa = box_ioa(np.array([dets[i].box for i in rest]), np.array([g.box for g in group]))
        else:
            ioa = rle_iou([dets[i].mask for i in rest], [g.mask for g in group], crowd=[True] * len(group))
        for k, i in enumerate(rest):
            g = int(ioa[k].argmax())
            if ioa[k, g] >= thr:
                in_group[i] = True
                group_best[g] = max(group_best.get(g, -np.inf), scores[i])
    for i in rest:
        if not in_group[i]:
            out_scores.append(scores[i])
            out_tp.append(False)
    for s in group_best.values():
        out_scores.append(s)
        out_tp.append(True)
    return out_scores, out_tp


def openimages_ap50(
    gt: RecordSet,
    pred: RecordSet,
    max_dets: int = 100,
    iou_type: Literal["bbox", "segm"] = "bbox",
    iou_threshold: float = 0.5,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Open Images AP at IoU 0.5 per class and its mean (see module doc for the protocol).

    Args:
        gt: ground truth; ``is_crowd`` marks group-of boxes. Instances without a category id
            or without the needed geometry are not evaluated.
        pred: detections over the same image ids, each with ``score`` and ``category_id``.
        max_dets: detections kept per image (highest scores).
        iou_type: "bbox" or "segm".
        iou_threshold: 0.5 for AP50.
        progress: tqdm bar over images; None = only when stderr is a TTY.

    Returns:
        ``{"AP50": mean over classes with ground truth, "per_class": {category_id: AP},
        "num_classes": number averaged}``.
    """
    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
    attr = "box" if iou_type == "bbox" else "mask"
    gt_ids = {r.image_id for r in gt.records}
    scores: dict[int, list[float]] = defaultdict(list)
    flags: dict[int, list[bool]] = defaultdict(list)
    num_pos: dict[int, int] = defaultdict(int)
    preds = {r.image_id: r for r in pred.records}
    extra = set(preds) - gt_ids
    if extra:
        raise ValueError(f"predictions for image ids not in the ground truth: {sorted(map(str, extra))[:5]}")
    disable = None if progress is None else not progress
    for rec in tqdm(gt.records, desc="Open Images AP", disable=disable, leave=False):
        gts = [g for g in rec.instances if g.category_id is not None and getattr(g, attr) is not None]
        dets: list[Instance] = []
        if rec.image_id in preds:
            for j, d in enumerate(preds[rec.image_id].instances):
                if d.score is None or d.category_id is None or getattr(d, attr) is None:
                    raise ValueError(
                        f"image {rec.image_id}: prediction {j} needs score, category_id and {attr}"
                    )
                dets.append(d)
        dets = sorted(dets, key=lambda d: -float(d.score))[:max_dets]
        by_cat_gt: dict[int, list[Instance]] = defaultdict(list)
        by_cat_det: dict[int, list[Instance]] = defaultdict(list)
        for g in gts:
            by_cat_gt[g.category_id].append(g)
            num_pos[g.category_id] += 1
        for d in dets:
            by_cat_det[d.category_id].append(d)
        for cid in set(by_cat_gt) | set(by_cat_det):
            s, t = _match_image_class(by_cat_det[cid], by_cat_gt[cid], iou_type, iou_threshold)
            scores[cid] += s
            flags[cid] += t
    cat_ids = sorted({c.id for c in gt.categories} | set(num_pos) | set(scores))
    per_class = {
        cid: voc_average_precision(np.array(scores[cid]), np.array(flags[cid], dtype=bool), num_pos[cid])
        for cid in cat_ids
    }
    valid = [v for v in per_class.values() if not np.isnan(v)]
    return {
        "AP50": float(np.mean(valid)) if valid else float("nan"),
        "per_class": per_class,
        "num_classes": len(valid),
    }
