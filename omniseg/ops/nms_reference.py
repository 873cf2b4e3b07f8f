"""The earlier greedy NMS, kept as the slow, obvious cross-check of :mod:`omniseg.ops.nms`.

Boxes are visited by decreasing score (a stable sort: equal scores by increasing index); each
block of 256 boxes is compared in float64 numpy with the boxes kept so far, then resolved with a
Python loop over the block. The fast path must return exactly the same indices in the same order.
It also serves thresholds below 0 and NaN (degenerate, but defined: every pair whose IoU is not
NaN suppresses, resp. nothing does), which the fast path hands over here.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

_BLOCK = 256


def iou_np(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of A x 4 and B x 4 float64 arrays (same formula as ops.boxes.box_iou).

    Non-finite inputs give NaN or 0 (quietly: inf - inf and overflow are expected here)."""
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        lt = np.maximum(a[:, None, :2], b[None, :, :2])
        rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
        wh = np.clip(rb - lt, 0, None)
        inter = wh[..., 0] * wh[..., 1]
        area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
        area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        union = area_a[:, None] + area_b[None, :] - inter
        return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def nms_reference(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS (N x 4 XYXY boxes, N scores) -> kept indices by decreasing score (ties: index)."""
    n = boxes.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = torch.sort(scores.detach().cpu(), descending=True, stable=True).indices.numpy()
    b = boxes.detach().cpu().to(torch.float64).numpy()[order]
    kept_pos: list[int] = []  # positions in sorted order
    kept_boxes = np.zeros((0, 4))
    for start in range(0, n, _BLOCK):
        blk = b[start : start + _BLOCK]
        alive = np.ones(len(blk), dtype=bool)
        if len(kept_boxes):
            # NaN IoU compares False: a box with NaN coordinates is never suppressed.
            alive &= ~(iou_np(blk, kept_boxes) > iou_threshold).any(axis=1)
        over = iou_np(blk, blk) > iou_threshold
        new: list[int] = []
        for i in range(len(blk)):
            if not alive[i]:
                continue
            new.append(i)
            alive[i + 1 :] &= ~over[i, i + 1 :]
        kept_pos.extend(start + i for i in new)
        kept_boxes = np.concatenate([kept_boxes, blk[new]], axis=0)
    return torch.as_tensor(order[kept_pos], dtype=torch.long, device=boxes.device)


def batched_nms_reference(boxes: Tensor, scores: Tensor, class_ids: Tensor, iou_threshold: float) -> Tensor:
    """Class-wise :func:`nms_reference`: one call per class, merged by (score desc, index asc)."""
    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    kept = []
    for cls in torch.unique(class_ids):
        idx = torch.nonzero(class_ids == cls).flatten()
        kept.append(idx[nms_reference(boxes[idx], scores[idx], iou_threshold)])
    keep = torch.cat(kept)
    # Merge the per-class lists back into one stable (score desc, index asc) order.
    keep = keep[torch.argsort(keep, stable=True)]
    return keep[torch.sort(scores[keep], descending=True, stable=True).indices]
