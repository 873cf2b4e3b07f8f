"""Hungarian matching of query predictions to targets with Mask2Former's costs.

VLOSS (Sec. 3.5, "Segmentation Loss" / "Classification Loss") matches queries to ground truth
with Hungarian matching [DETR] on top of Mask2Former [7]: cost = w_cls * (-p(class)) +
w_mask * sigmoid-BCE + w_dice * dice, the mask terms computed on K points sampled uniformly at
random (shared by predictions and targets of one image), with (w_cls, w_mask, w_dice) = (2, 5, 5)
(VLOSS Sec. 4.2).

Per-instance supervision: a target whose ``mask_valid`` is False (box-only / phrase-only)
is matched on the class cost alone -- its mask cost columns are zero, never a fake mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from omniseg.ops.masks import point_sample


@dataclass
class MatcherConfig:
    """Weights of the matching cost terms and the number of sampled points."""

    cost_class: float = 2.0
    cost_mask: float = 5.0
    cost_dice: float = 5.0
    num_points: int = 112 * 112


def batch_sigmoid_ce_cost(inputs: Tensor, targets: Tensor) -> Tensor:
    """Mean sigmoid binary cross-entropy of every prediction against every target.

    Args:
        inputs: N x P mask logits at P points.
        targets: M x P targets in [0, 1] at the same points.

    Returns:
        N x M cost: mean_p BCE(sigmoid(inputs[n, p]), targets[m, p]).
    """
    p = inputs.shape[1]
    pos = F.softplus(-inputs)  # -log sigmoid(x): the cost where the target is 1
    neg = F.softplus(inputs)  # -log(1 - sigmoid(x)): the cost where the target is 0
    cost = pos @ targets.t() + neg @ (1 - targets).t()
    return cost / max(p, 1)


def batch_dice_cost(inputs: Tensor, targets: Tensor, smooth: float = 1.0) -> Tensor:
    """Dice cost of every prediction against every target.

    Args:
        inputs: N x P mask logits.
        targets: M x P targets in [0, 1].
        smooth: additive smoothing (1, as Mask2Former).

    Returns:
        N x M cost: 1 - (2 sum_p s t + smooth) / (sum_p s + sum_p t + smooth), s = sigmoid(inputs).
    """
    s = inputs.sigmoid()
    numerator = 2 * (s @ targets.t())
    denominator = s.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + smooth) / (denominator + smooth)


def batch_class_cost(logits: Tensor, labels: Tensor, use_sigmoid: bool = False) -> Tensor:
    """Class cost -p(label) of every prediction for every target.

    Args:
        logits: N x C class logits (softmax over C, which may include a "no object" column).
        labels: M long target classes in [0, C).
        use_sigmoid: per-class sigmoid probabilities instead of a softmax.

    Returns:
        N x M cost.
    """
    prob = logits.sigmoid() if use_sigmoid else logits.softmax(-1)
    return -prob[:, labels.long()]


def hungarian_match(cost: Tensor) -> tuple[Tensor, Tensor]:
    """Minimum-cost one-to-one assignment (scipy ``linear_sum_assignment``).

    Args:
        cost: N x M finite cost matrix.

    Returns:
        (rows, cols): two K = min(N, M) long tensors, rows increasing.
    """
    c = cost.detach().cpu().double().numpy()
    if not np.isfinite(c).all():
        raise ValueError("hungarian_match: cost matrix contains NaN or inf (check the predictions)")
    rows, cols = linear_sum_assignment(c)
    return torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)


@torch.no_grad()
def match_queries(
    pred_logits: Tensor,
    pred_masks: Tensor,
    targets: list[dict[str, Tensor]],
    cfg: MatcherConfig | None = None,
    generator: torch.Generator | None = None,
) -> list[tuple[Tensor, Tensor]]:
    """Match queries to targets image by image.

    Args:
        pred_logits: B x Q x C class logits.
        pred_masks: B x Q x H x W mask logits.
        targets: B dicts with "labels" (M long), "masks" (M x H' x W' in [0, 1], any resolution)
            and optionally "mask_valid" (M bool; False = no mask supervision for that target).
        cfg: cost weights and number of points.
        generator: RNG for the point sampling (reproducible matching).

    Returns:
        B pairs (query indices, target indices), each K = min(Q, M) long tensors.
    """
    cfg = cfg or MatcherConfig()
    if len(targets) != pred_logits.shape[0]:
        raise ValueError(f"{pred_logits.shape[0]} predictions but {len(targets)} target dicts")
    out = []
    with torch.autocast(device_type=pred_logits.device.type, enabled=False):
        for b, tgt in enumerate(targets):
            labels = tgt["labels"].to(pred_logits.device)
            m = labels.shape[0]
            q = pred_logits.shape[1]
            if m == 0 or q == 0:
                empty = torch.zeros(0, dtype=torch.long)
                out.append((empty, empty.clone()))
                continue
            cost = cfg.cost_class * batch_class_cost(pred_logits[b].float(), labels)
            tmasks = tgt["masks"].to(pred_masks.device).float()
            valid = tgt.get("mask_valid")
            valid = torch.ones(m, dtype=torch.bool) if valid is None else valid.bool()
            valid = valid.to(pred_masks.device)
            if bool(valid.any()) and (cfg.cost_mask or cfg.cost_dice):
                coords = torch.rand(1, cfg.num_points, 2, generator=generator, device="cpu").to(pred_masks.device)
                pts_pred = point_sample(pred_masks[b][:, None].float(), coords.expand(q, -1, -1))[:, 0]
                pts_tgt = point_sample(tmasks[:, None], coords.expand(m, -1, -1))[:, 0]
                mask_cost = cfg.cost_mask * batch_sigmoid_ce_cost(pts_pred, pts_tgt)
                mask_cost = mask_cost + cfg.cost_dice * batch_dice_cost(pts_pred, pts_tgt)
                cost = cost + torch.where(valid[None, :], mask_cost, torch.zeros_like(mask_cost))
            out.append(hungarian_match(cost))
    return out
