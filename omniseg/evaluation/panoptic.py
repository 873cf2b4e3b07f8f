"""Panoptic Quality (PQ = SQ x RQ), things / stuff, following the COCO panoptic evaluation.

Definition (Kirillov et al., "Panoptic Segmentation"; the COCO panoptic evaluation):
    * per image, a predicted and a ground-truth segment of the same category match when
      their IoU > 0.5 (unique by construction since segments do not overlap);
    * the union leaves out predicted pixels that fall on VOID (pixels covered by no
      ground-truth segment);
    * crowd ground-truth segments are never matched; an unmatched prediction whose pixels lie
      more than half on VOID or on crowd regions of its own category is not a false positive;
    * unmatched non-crowd ground truth is a false negative;
    * per category ``PQ = sum IoU(TP) / (TP + FP/2 + FN/2)``, ``SQ = sum IoU(TP) / TP``,
      ``RQ = TP / (TP + FP/2 + FN/2)``; averages over categories that have any TP, FP or FN.

Segments come from ``ImageRecord.segments`` (RLE masks). Predicted segments must not
overlap (panoptic output assigns each pixel once); overlaps raise an error naming the image.
Where an image has several crowd segments of one category, their union is that category's
crowd region (the COCO PNG format can hold only one).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from tqdm import tqdm

from omniseg.data.records import Category, ImageRecord, RecordSet, Segment
from omniseg.ops.rle import rle_decode


def _label_map(segments: Sequence[Segment], h: int, w: int, what: str, image: Any) -> np.ndarray:
    """0 = VOID, i + 1 = segments[i]. Raises on overlaps or size mismatches."""
    out = np.zeros((h, w), dtype=np.int64)
    for i, seg in enumerate(segments):
        m = rle_decode(seg.mask).astype(bool)
        if m.shape != (h, w):
            raise ValueError(f"image {image}: {what} segment {i} mask is {m.shape}, image is {(h, w)}")
        if np.any(out[m] != 0):
            raise ValueError(f"image {image}: {what} segments {i} overlaps an earlier segment")
        out[m] = i + 1
    return out


def _records(x: RecordSet | Sequence[ImageRecord]) -> list[ImageRecord]:
    return list(x.records) if isinstance(x, RecordSet) else list(x)


def panoptic_quality(
    gt_records: RecordSet | Sequence[ImageRecord],
    pred_records: RecordSet | Sequence[ImageRecord],
    categories: Sequence[Category] | Mapping[int, bool],
    progress: bool | None = None,
) -> dict[str, Any]:
    """Panoptic Quality of predicted segments against ground-truth segments.

    Args:
        gt_records: ground-truth images with ``segments`` (things and stuff).
        pred_records: predictions over the same image ids with non-overlapping ``segments``.
        categories: the evaluated categories (``Category.isthing``) or a mapping
            category id -> is_thing.
        progress: tqdm bar over images; None = only when stderr is a TTY.

    Returns:
        ``{"PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st", "n", "n_th",
        "n_st", "per_class": {cat_id: {"PQ", "SQ", "RQ", "TP", "FP", "FN"}}}``; fractions in
        [0, 1], NaN where no category of the group is present.
    """
    isthing = (
        {int(k): bool(v) for k, v in categories.items()}
        if isinstance(categories, Mapping)
        else {c.id: c.isthing for c in categories}
    )
    preds = {r.image_id: r for r in _records(pred_records)}
    iou_sum: dict[int, float] = defaultdict(float)
    tp: dict[int, int] = defaultdict(int)
    fp: dict[int, int] = defaultdict(int)
    fn: dict[int, int] = defaultdict(int)

    gts = _records(gt_records)
    for gt in tqdm(
        gts, desc="panoptic quality", disable=None if progress is None else not progress, leave=False
    ):
        pred = preds.pop(gt.image_id, None)
        pred_segs = pred.segments if pred is not None else []
        h, w = gt.height, gt.width
        for what, segs in (("ground-truth", gt.segments), ("predicted", pred_segs)):
            for i, s in enumerate(segs):
                if s.category_id not in isthing:
                    raise ValueError(
                        f"image {gt.image_id}: {what} segment {i} has unknown category {s.category_id}"
                    )
        gmap = _label_map(gt.segments, h, w, "ground-truth", gt.image_id)
        pmap = _label_map(pred_segs, h, w, "predicted", gt.image_id)
        ng, npred = len(gt.segments), len(pred_segs)
        # joint histogram: inter[g, p] pixels with GT label g (0 = VOID) and prediction p
        inter = np.bincount((gmap * (npred + 1) + pmap).ravel(), minlength=(ng + 1) * (npred + 1))
        inter = inter.reshape(ng + 1, npred + 1)
        gt_area = inter.sum(axis=1)
        pred_area = inter.sum(axis=0)

        gt_matched: set[int] = set()
        pred_matched: set[int] = set()
        for gi in range(1, ng + 1):
            g = gt.segments[gi - 1]
            if g.is_crowd:
                continue
            for pi in np.nonzero(inter[gi])[0]:
                if pi == 0:
                    continue
                p = pred_segs[pi - 1]
                if p.category_id != g.category_id:
                    continue
                i_gp = inter[gi, pi]
                union = pred_area[pi] + gt_area[gi] - i_gp - inter[0, pi]
                iou = i_gp / union
                if iou > 0.5:
                    tp[g.category_id] += 1
                    iou_sum[g.category_id] += float(iou)
                    gt_matched.add(gi)
                    pred_matched.add(int(pi))
        for gi in range(1, ng + 1):
            g = gt.segments[gi - 1]
            if not g.is_crowd and gi not in gt_matched:
                fn[g.category_id] += 1
        crowd_rows: dict[int, list[int]] = defaultdict(list)
        for gi in range(1, ng + 1):
            if gt.segments[gi - 1].is_crowd:
                crowd_rows[gt.segments[gi - 1].category_id].append(gi)
        for pi in range(1, npred + 1):
            if pi in pred_matched:
                continue
            p = pred_segs[pi - 1]
            ignored = inter[0, pi] + sum(inter[gi, pi] for gi in crowd_rows.get(p.category_id, []))
            if ignored / max(pred_area[pi], 1) > 0.5:
                continue
            fp[p.category_id] += 1

    if preds:
        raise ValueError(f"predictions for image ids not in the ground truth: {sorted(map(str, preds))[:5]}")

    per_class: dict[int, dict[str, float]] = {}
    for cid in isthing:
        n_tp, n_fp, n_fn = tp[cid], fp[cid], fn[cid]
        if n_tp + n_fp + n_fn == 0:
            continue
        denom = n_tp + 0.5 * n_fp + 0.5 * n_fn
        sq = iou_sum[cid] / n_tp if n_tp else 0.0
        rq = n_tp / denom
        per_class[cid] = {"PQ": sq * rq, "SQ": sq, "RQ": rq, "TP": n_tp, "FP": n_fp, "FN": n_fn}

    out: dict[str, Any] = {}
    for suffix, keep in (
        ("", lambda c: True),
        ("_th", lambda c: isthing[c]),
        ("_st", lambda c: not isthing[c]),
    ):
        cats = [c for c in per_class if keep(c)]
        for k in ("PQ", "SQ", "RQ"):
            out[k + suffix] = float(np.mean([per_class[c][k] for c in cats])) if cats else float("nan")
        out["n" + suffix] = len(cats)
    out["per_class"] = per_class
    return out
