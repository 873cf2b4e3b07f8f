"""Box utilities on XYXY absolute-pixel boxes (the convention of :mod:`omniseg.data.records`).

Widths are ``x2 - x1`` (no "+1"), as in detectron2 and torchvision. Every function is a
pure tensor op, differentiable where it makes sense, and works on empty inputs.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from omniseg.ops.losses import reduce_instance_losses

# Faster R-CNN clamp on predicted log-scale deltas: exp(dw) never exceeds 1000/16 (detectron2 default).
DEFAULT_SCALE_CLAMP = math.log(1000.0 / 16)


def _tiny(t: Tensor) -> float:
    return torch.finfo(t.dtype).tiny if t.is_floating_point() else 1e-38


def box_area(boxes: Tensor) -> Tensor:
    """Area of boxes.

    Args:
        boxes: ... x 4 XYXY.

    Returns:
        ... areas; degenerate boxes (x2 < x1) give a negative or zero product, never clamped, so
        callers can detect them. Use :func:`box_iou` for overlap, which clamps intersections.
    """
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def _inter_union(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return inter, union


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise IoU.

    Args:
        a: N x 4 XYXY.
        b: M x 4 XYXY.

    Returns:
        N x M IoU. Two zero-area boxes have IoU 0 (not NaN); NaN coordinates give NaN.
    """
    inter, union = _inter_union(a, b)
    # clamp_min propagates NaN, so a NaN coordinate still yields NaN.
    return inter / union.clamp_min(_tiny(union))


def generalized_box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise generalized IoU (Rezatofighi et al., 2019): IoU - (|C| - |A u B|) / |C|.

    Args:
        a: N x 4 XYXY.
        b: M x 4 XYXY.

    Returns:
        N x M GIoU in [-1, 1].
    """
    inter, union = _inter_union(a, b)
    iou = inter / union.clamp_min(_tiny(union))
    lt = torch.minimum(a[:, None, :2], b[None, :, :2])
    rb = torch.maximum(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    hull = wh[..., 0] * wh[..., 1]
    return iou - (hull - union) / hull.clamp_min(_tiny(hull))


def paired_generalized_box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Element-wise GIoU of a[i] with b[i].

    Args:
        a: N x 4 XYXY.
        b: N x 4 XYXY.

    Returns:
        N GIoU values.
    """
    lt = torch.maximum(a[:, :2], b[:, :2])
    rb = torch.minimum(a[:, 2:], b[:, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    union = box_area(a) + box_area(b) - inter
    iou = inter / union.clamp_min(_tiny(union))
    hull_wh = (torch.maximum(a[:, 2:], b[:, 2:]) - torch.minimum(a[:, :2], b[:, :2])).clamp(min=0)
    hull = hull_wh[:, 0] * hull_wh[:, 1]
    return iou - (hull - union) / hull.clamp_min(_tiny(hull))


def generalized_box_iou_loss(
    pred: Tensor,
    target: Tensor,
    valid: Tensor | None = None,
    reduction: str = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor:
    """GIoU loss ``1 - GIoU(pred_i, target_i)``, as used by FCOS-MO for box regression
    (alp-fcos-mo paper, Sec. 3.3 "Training": "box regression (GIoU)").

    Args:
        pred: N x 4 XYXY predicted boxes.
        target: N x 4 XYXY target boxes.
        valid: N bool (or float weights); an instance with False/0 (e.g. an approximate ALP box,
            whose regression is disabled) contributes no loss and exactly zero gradient.
        reduction: "mean" (over valid instances, or by ``normalizer``), "sum" or "none" (N).
        normalizer: overrides the denominator of "mean" (e.g. the number of positive locations).

    Returns:
        Scalar (or N for reduction="none"); 0 with a grad path when nothing is valid.
    """
    if valid is not None:
        keep = (valid > 0)[:, None]
        safe = pred.new_tensor([0.0, 0.0, 1.0, 1.0])
        pred = torch.where(keep, pred, safe)
        target = torch.where(keep, target, safe.to(target.dtype))
    per_instance = 1.0 - paired_generalized_box_iou(pred, target)
    return reduce_instance_losses(per_instance, valid, reduction=reduction, normalizer=normalizer)


def encode_boxes(
    reference: Tensor, target: Tensor, weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)
) -> Tensor:
    """Faster R-CNN box deltas that turn ``reference`` (anchors/proposals) into ``target``.

    dx = wx (tx - rx) / rw, dy = wy (ty - ry) / rh, dw = ww log(tw / rw), dh = wh log(th / rh)
    with centers (x1 + w / 2) and sizes (x2 - x1).

    Args:
        reference: N x 4 XYXY, positive widths/heights.
        target: N x 4 XYXY.
        weights: (wx, wy, ww, wh); (10, 10, 5, 5) is the R-CNN box-head default, (1, 1, 1, 1) the RPN's.

    Returns:
        N x 4 deltas.
    """
    wx, wy, ww, wh = weights
    rw = reference[:, 2] - reference[:, 0]
    rh = reference[:, 3] - reference[:, 1]
    rx = reference[:, 0] + 0.5 * rw
    ry = reference[:, 1] + 0.5 * rh
    tw = target[:, 2] - target[:, 0]
    th = target[:, 3] - target[:, 1]
    tx = target[:, 0] + 0.5 * tw
    ty = target[:, 1] + 0.5 * th
    return torch.stack(
        [wx * (tx - rx) / rw, wy * (ty - ry) / rh, ww * torch.log(tw / rw), wh * torch.log(th / rh)], dim=1
    )


def decode_boxes(
    deltas: Tensor,
    reference: Tensor,
    weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0),
    scale_clamp: float = DEFAULT_SCALE_CLAMP,
) -> Tensor:
    """Inverse of :func:`encode_boxes`; dw, dh are clamped to ``scale_clamp`` (log(1000/16)).

    Args:
        deltas: N x 4k (k boxes per reference, e.g. class-specific regression).
        reference: N x 4 XYXY.
        weights: as in :func:`encode_boxes`.
        scale_clamp: upper bound on dw / ww and dh / wh before exponentiation.

    Returns:
        N x 4k XYXY boxes.
    """
    deltas = deltas.to(reference.dtype) if deltas.is_floating_point() else deltas.float()
    wx, wy, ww, wh = weights
    rw = (reference[:, 2] - reference[:, 0])[:, None]
    rh = (reference[:, 3] - reference[:, 1])[:, None]
    rx = reference[:, 0][:, None] + 0.5 * rw
    ry = reference[:, 1][:, None] + 0.5 * rh
    dx = deltas[:, 0::4] / wx
    dy = deltas[:, 1::4] / wy
    dw = (deltas[:, 2::4] / ww).clamp(max=scale_clamp)
    dh = (deltas[:, 3::4] / wh).clamp(max=scale_clamp)
    cx = dx * rw + rx
    cy = dy * rh + ry
    w = torch.exp(dw) * rw
    h = torch.exp(dh) * rh
    out = torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=2)
    return out.reshape(deltas.shape)


def clip_boxes(boxes: Tensor, image_size: tuple[int, int]) -> Tensor:
    """Clip boxes to the image.

    Args:
        boxes: ... x 4 XYXY.
        image_size: (height, width).

    Returns:
        ... x 4 with x in [0, width], y in [0, height] (NaN stays NaN).
    """
    h, w = image_size
    x = boxes[..., 0::2].clamp(0, w)
    y = boxes[..., 1::2].clamp(0, h)
    return torch.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], dim=-1)


def box_xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """... x 4 XYXY -> ... x 4 (center x, center y, width, height)."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], dim=-1)


def box_cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """... x 4 (center x, center y, width, height) -> ... x 4 XYXY."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def points_to_box_distances(points: Tensor, boxes: Tensor) -> Tensor:
    """FCOS regression targets: distances (l, t, r, b) from every point to every box's sides.

    Args:
        points: P x 2 (x, y) locations in image pixels.
        boxes: M x 4 XYXY.

    Returns:
        P x M x 4 with l = x - x1, t = y - y1, r = x2 - x, b = y2 - y. A point lies inside box m
        iff all four are > 0.
    """
    x = points[:, 0][:, None]
    y = points[:, 1][:, None]
    return torch.stack(
        [x - boxes[None, :, 0], y - boxes[None, :, 1], boxes[None, :, 2] - x, boxes[None, :, 3] - y], dim=-1
    )


def distances_to_boxes(points: Tensor, ltrb: Tensor) -> Tensor:
    """Inverse of :func:`points_to_box_distances` for paired inputs.

    Args:
        points: P x 2 (x, y).
        ltrb: P x 4 distances.

    Returns:
        P x 4 XYXY boxes.
    """
    x, y = points[:, 0], points[:, 1]
    return torch.stack([x - ltrb[:, 0], y - ltrb[:, 1], x + ltrb[:, 2], y + ltrb[:, 3]], dim=-1)


def centerness(ltrb: Tensor) -> Tensor:
    """FCOS centerness sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b)).

    (alp-fcos-mo paper, Sec. 3.2: "FCOS ... includes centerness regression as an auxiliary
    training objective"; Sec. 3.3: scores are calibrated by a geometric mean with it at inference.)

    Args:
        ltrb: ... x 4 distances from :func:`points_to_box_distances`.

    Returns:
        ... centerness in [0, 1]; 0 for points on or outside the box edge.
    """
    lr = ltrb[..., 0::2]
    tb = ltrb[..., 1::2]
    rx = lr.min(dim=-1).values / lr.max(dim=-1).values.clamp_min(_tiny(ltrb))
    ry = tb.min(dim=-1).values / tb.max(dim=-1).values.clamp_min(_tiny(ltrb))
    return torch.sqrt(rx.clamp(min=0) * ry.clamp(min=0))
