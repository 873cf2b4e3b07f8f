"""Class-agnostic proposal recall at IoU thresholds for the top-N proposals (box or mask).

OpenSeg Sec. 4.2 / Table 1 reports mask-proposal recall at IoU 50 %, 70 % and 90 % for a
fixed number of proposals. The paper does not spell out the matching, so this module
implements both common readings and documents them:

    * ``one_to_one=False`` (default, "best overlap", Hosang et al.): a ground-truth object
      is recalled at threshold t when *some* proposal among the N highest-scoring ones has
      IoU >= t with it; one proposal may cover several objects.
    * ``one_to_one=True`` (COCO AR style): proposals, in score order, are greedily matched to
      the unmatched ground truth of highest IoU >= t; each proposal recalls at most one object.

Categories are ignored (class-agnostic). Crowd ground truth is left out. Ground truth that
lacks the geometry being evaluated (no box for "bbox", no mask for "segm") cannot be scored:
it is skipped and counted in ``"num_gt_skipped"``; the same for proposals (``"num_proposals_skipped"``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from tqdm import tqdm

from omniseg.data.records import Instance, RecordSet
from omniseg.ops.rle import rle_iou


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of XYXY boxes (continuous coordinates, area = w * h as in COCO).

    Args:
        a: N x 4 boxes.
        b: M x 4 boxes.

    Returns:
        N x M IoU matrix (0 where the union is empty).
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    iw = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = iw * ih
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def _pairwise_iou(gts: list[Instance], props: list[Instance], iou_type: str) -> np.ndarray:
    if iou_type == "bbox":
        return box_iou(np.array([g.box for g in gts]), np.array([p.box for p in props]))
    return rle_iou([g.mask for g in gts], [p.mask for p in props])


def _recalled(iou: np.ndarray, thr: float, one_to_one: bool) -> int:
    """Number of GT rows (iou: G x P, proposals in score order) recalled at threshold thr."""
    if iou.size == 0:
        return 0
    if not one_to_one:
        return int(np.sum(iou.max(axis=1) >= thr))
    taken = np.zeros(iou.shape[0], dtype=bool)
    for j in range(iou.shape[1]):
        col = np.where(taken, -1.0, iou[:, j])
        g = int(np.argmax(col))
        if col[g] >= thr:
            taken[g] = True
    return int(taken.sum())


def proposal_recall(
    gt: RecordSet,
    proposals: RecordSet,
    num_proposals: Sequence[int] = (10, 100, 1000),
    ious: Sequence[float] = (0.5, 0.7, 0.9),
    iou_type: Literal["bbox", "segm"] = "bbox",
    one_to_one: bool = False,
    progress: bool | None = None,
) -> dict[str, float]:
    """Class-agnostic recall of ground-truth objects by the top-N proposals of each image.

    Args:
        gt: ground truth; non-crowd instances with the needed geometry are the objects.
        proposals: proposals over the same image ids; ``score`` ranks them (higher first;
            proposals without a score keep their order after all scored ones).
        num_proposals: the N values.
        ious: IoU thresholds t (recall counts IoU >= t).
        iou_type: "bbox" (XYXY boxes) or "segm" (RLE masks).
        one_to_one: COCO-AR-style greedy matching instead of best overlap (see module doc).
        progress: tqdm bar; None = only when stderr is a TTY.

    Returns:
        ``"R{100t}@{N}"`` (e.g. "R50@100") recall in [0, 1], ``"AR@{N}"`` mean over the
        thresholds, plus ``"num_gt"``, ``"num_gt_skipped"``, ``"num_proposals_skipped"``.
        Recalls are NaN when there is no ground-truth object.
    """
    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
    attr = "box" if iou_type == "bbox" else "mask"
    ns = sorted({int(n) for n in num_proposals})
    if not ns or ns[0] <= 0:
        raise ValueError(f"num_proposals must be positive integers, got {num_proposals}")
    by_id = {r.image_id: r for r in proposals.records}
    unknown = set(by_id) - {r.image_id for r in gt.records}
    if unknown:
        raise ValueError(f"proposals for image ids not in the ground truth: {sorted(map(str, unknown))[:5]}")
    hits = np.zeros((len(ns), len(ious)), dtype=np.int64)
    num_gt = gt_skipped = prop_skipped = 0
    disable = None if progress is None else not progress
    for rec in tqdm(gt.records, desc=f"proposal recall ({iou_type})", disable=disable, leave=False):
        gts = [g for g in rec.instances if not g.is_crowd]
        usable = [g for g in gts if getattr(g, attr) is not None]
        gt_skipped += len(gts) - len(usable)
        num_gt += len(usable)
        prec = by_id.get(rec.image_id)
        props = [p for p in (prec.instances if prec else []) if getattr(p, attr) is not None]
        prop_skipped += (len(prec.instances) if prec else 0) - len(props)
        if not usable or not props:
            continue
        order = sorted(range(len(props)), key=lambda i: (props[i].score is None, -(props[i].score or 0.0), i))
        props = [props[i] for i in order[: ns[-1]]]
        iou = _pairwise_iou(usable, props, iou_type)
        for a, n in enumerate(ns):
            for b, t in enumerate(ious):
                hits[a, b] += _recalled(iou[:, :n], float(t), one_to_one)
    out: dict[str, float] = {}
    for a, n in enumerate(ns):
        rec_n = hits[a] / num_gt if num_gt else np.full(len(ious), np.nan)
        for b, t in enumerate(ious):
            out[f"R{round(100 * t)}@{n}"] = float(rec_n[b])
        out[f"AR@{n}"] = float(np.mean(rec_n)) if len(ious) else float("nan")
    out["num_gt"] = float(num_gt)
    out["num_gt_skipped"] = float(gt_skipped)
    out["num_proposals_skipped"] = float(prop_skipped)
    return out
