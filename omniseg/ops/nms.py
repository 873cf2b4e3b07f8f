"""Greedy non-maximum suppression, single-class and class-wise (batched).

Order is deterministic: boxes are visited by decreasing score, equal scores by increasing index
(a stable sort), and the returned indices follow that order. A box is suppressed when its IoU
with an already kept box is strictly greater than the threshold (torchvision's rule).

The torch path computes IoUs in float64 on the CPU, block by block (memory O(block x kept)),
so results are exact and reproducible; ``impl="auto"`` uses torchvision's compiled op when it
is importable (much faster on CUDA; its order for exactly tied scores may differ).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from omniseg.ops.roi_align import resolve_impl, torchvision_ops

_BLOCK = 256


def _iou_np(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of A x 4 and B x 4 float64 arrays (same formula as ops.boxes.box_iou)."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def _check(boxes: Tensor, scores: Tensor) -> None:
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"nms: boxes must be N x 4, got {tuple(boxes.shape)}")
    if scores.shape != (boxes.shape[0],):
        raise ValueError(f"nms: scores must have shape ({boxes.shape[0]},), got {tuple(scores.shape)}")
    if scores.is_floating_point() and bool(torch.isnan(scores).any()):
        raise ValueError("nms: scores contain NaN; filter or fix them before NMS")


def _nms_torch(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
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
            alive &= ~(_iou_np(blk, kept_boxes) > iou_threshold).any(axis=1)
        over = _iou_np(blk, blk) > iou_threshold
        new: list[int] = []
        for i in range(len(blk)):
            if not alive[i]:
                continue
            new.append(i)
            alive[i + 1 :] &= ~over[i, i + 1 :]
        kept_pos.extend(start + i for i in new)
        kept_boxes = np.concatenate([kept_boxes, blk[new]], axis=0)
    return torch.as_tensor(order[kept_pos], dtype=torch.long, device=boxes.device)


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float, impl: str = "auto") -> Tensor:
    """Greedy NMS.

    Args:
        boxes: N x 4 XYXY.
        scores: N scores (NaN raises ValueError).
        iou_threshold: suppress boxes with IoU > threshold with a kept, higher-ranked box.
        impl: "auto" | "torch" | "torchvision".

    Returns:
        K long indices of kept boxes, by decreasing score (ties: increasing index).
    """
    _check(boxes, scores)
    if resolve_impl(impl) == "torchvision" and boxes.shape[0] > 0:
        tv = torchvision_ops()
        assert tv is not None
        return tv.nms(boxes, scores.to(boxes.dtype), float(iou_threshold))
    return _nms_torch(boxes, scores, iou_threshold)


def batched_nms(
    boxes: Tensor, scores: Tensor, class_ids: Tensor, iou_threshold: float, impl: str = "auto"
) -> Tensor:
    """Class-wise NMS: boxes of different classes never suppress each other.

    Args:
        boxes: N x 4 XYXY.
        scores: N.
        class_ids: N integer class (or image x class) ids.
        iou_threshold: as in :func:`nms`.
        impl: "auto" | "torch" | "torchvision".

    Returns:
        K long indices of kept boxes, by decreasing score (ties: increasing index).
    """
    _check(boxes, scores)
    if class_ids.shape != scores.shape:
        raise ValueError(f"batched_nms: class_ids must have shape {tuple(scores.shape)}")
    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    if resolve_impl(impl) == "torchvision":
        tv = torchvision_ops()
        assert tv is not None
        return tv.batched_nms(boxes, scores.to(boxes.dtype), class_ids, float(iou_threshold))
    kept = []
    for cls in torch.unique(class_ids):
        idx = torch.nonzero(class_ids == cls).flatten()
        kept.append(idx[_nms_torch(boxes[idx], scores[idx], iou_threshold)])
    keep = torch.cat(kept)
    # Merge the per-class lists back into one stable (score desc, index asc) order.
    keep = keep[torch.argsort(keep, stable=True)]
    return keep[torch.sort(scores[keep], descending=True, stable=True).indices]
