"""VLOSS's training losses as pure-tensor functions (vloss paper Sec. 3.5; Mask2Former [7] for the mask terms).

* :func:`uncertain_point_coords` + :func:`point_mask_losses`: sigmoid BCE and dice on sampled points of matched
  (query, mask) pairs ("following [2, 7]", Sec. 3.5 "Segmentation Loss"); the points are Mask2Former's
  importance sampling (oversample 3x, 75 % most uncertain, 25 % uniform).
* :func:`query_classification_loss`: per-query cross-entropy with per-query weights: matched queries 1, unmatched
  queries (no-object target) ``no_object_weight`` on panoptic images and 0 on detection images with the positive
  classification loss (Sec. 3.5 "Classification Loss", Eq. 3).
* :func:`box_projection_loss`: for box-only targets (no mask, no pseudo mask): the max-projections of the mask onto
  the two axes must match the box's (BoxInst [42]); computed by MAL's row / column bag loss
  (:func:`omniseg.ops.mil_loss.mil_loss`), which is this projection term.
* :func:`filip_contrastive_loss`: FILIP's [52] token-wise image-text loss (the Table-6 alternative to the CLIP loss
  of Eq. 4-5, which is :func:`omniseg.ops.losses.clip_contrastive_loss`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from omniseg.ops.losses import dice_loss, sigmoid_bce_loss
from omniseg.ops.masks import point_sample
from omniseg.ops.mil_loss import mil_loss


@torch.no_grad()
def uncertain_point_coords(
    logits: Tensor,
    num_points: int,
    oversample_ratio: float = 3.0,
    importance_ratio: float = 0.75,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Mask2Former's training points: ``oversample_ratio * num_points`` uniform candidates, the
    ``importance_ratio * num_points`` most uncertain ones (logit closest to 0) kept, the rest drawn uniformly.

    Args:
        logits: N x h x w mask logits.
        num_points: P points per mask.
        oversample_ratio: candidates per point (>= 1).
        importance_ratio: share of the P points chosen by uncertainty.
        generator: RNG (CPU) for reproducible points.

    Returns:
        N x P x 2 points (x, y) in [0, 1] (the map's extent, as :func:`point_sample`).
    """
    n = logits.shape[0]
    k = max(int(num_points * oversample_ratio), num_points)
    n_imp = int(importance_ratio * num_points)
    cand = torch.rand(n, k, 2, generator=generator).to(logits.device)
    if n == 0:
        return cand[:, :num_points]
    uncertainty = -point_sample(logits[:, None].float(), cand)[:, 0].abs()  # N x k
    idx = uncertainty.topk(n_imp, dim=1).indices
    important = cand.gather(1, idx[..., None].expand(-1, -1, 2))
    rand = torch.rand(n, num_points - n_imp, 2, generator=generator).to(logits.device)
    return torch.cat([important, rand], dim=1)


def point_mask_losses(pred_masks: Tensor, target_masks: Tensor, coords: Tensor) -> tuple[Tensor, Tensor]:
    """Sigmoid BCE and dice of matched pairs at sampled points (Sec. 3.5 "Segmentation Loss").

    Args:
        pred_masks: P x h x w mask logits (matched queries).
        target_masks: P x H x W targets in [0, 1] (any resolution: points are read in normalized coordinates).
        coords: P x K x 2 points in [0, 1] (e.g. :func:`uncertain_point_coords`).

    Returns:
        (bce, dice): each the mean over the P pairs of the per-pair loss (BCE averaged over the K points; dice
        1 - (2 sum p t + 1) / (sum p + sum t + 1) over the points); 0 with a grad path when P == 0.
    """
    if pred_masks.shape[0] == 0:
        zero = pred_masks.sum() * 0.0
        return zero, zero.clone()
    logits = point_sample(pred_masks[:, None].float(), coords)[:, 0]
    with torch.no_grad():
        targets = point_sample(target_masks[:, None].float(), coords.to(target_masks.device))[:, 0]
    return sigmoid_bce_loss(logits, targets), dice_loss(logits, targets)


def query_classification_loss(logits: Tensor, targets: Tensor, weights: Tensor) -> Tensor:
    """Weighted cross-entropy over queries: sum_q w_q H(c_q, y_q) / sum_q w_q (Eq. 3 with Mask2Former's no-object
    weight; weight 0 = the query is left out, as unmatched queries of detection images in the positive
    classification loss, Sec. 3.5).

    Args:
        logits: Q x (K + 1) class logits (no-object last).
        targets: Q long in [0, K] (K = no-object).
        weights: Q float weights (>= 0).

    Returns:
        Scalar; 0 with a grad path when every weight is 0 (or Q == 0).
    """
    keep = weights > 0
    # left-out rows are replaced by zeros first: nothing (not even NaN) leaks from them, zero gradient
    safe = torch.where(keep[:, None], logits.float(), torch.zeros_like(logits, dtype=torch.float32))
    if not bool(keep.any()):
        return safe.sum() * 0.0
    ce = F.cross_entropy(safe, targets.long(), reduction="none")
    w = weights.float() * keep
    return (ce * w).sum() / w.sum()


def box_masks(boxes: Tensor, size: tuple[int, int], stride: int = 1) -> Tensor:
    """Filled boxes on a grid of ``stride``-pixel cells: a cell is inside when it overlaps the box.

    Args:
        boxes: M x 4 XYXY pixels.
        size: (h, w) of the grid.
        stride: pixels per cell.

    Returns:
        M x h x w float {0, 1}.
    """
    h, w = size
    x0 = torch.arange(w, device=boxes.device, dtype=torch.float32) * stride
    y0 = torch.arange(h, device=boxes.device, dtype=torch.float32) * stride
    b = boxes.float()
    inx = (x0[None] < b[:, 2:3]) & (x0[None] + stride > b[:, 0:1])  # M x w
    iny = (y0[None] < b[:, 3:4]) & (y0[None] + stride > b[:, 1:2])  # M x h
    return (iny[:, :, None] & inx[:, None, :]).float()


def box_projection_loss(pred_masks: Tensor, boxes: Tensor, stride: int) -> Tensor:
    """Box-projection loss for box-only targets: the mask's max over each row and each column must equal the
    box's (BoxInst [42]), as one dice over rows and columns (:func:`mil_loss`: rows / columns are MAL's bags).

    Args:
        pred_masks: P x h x w mask logits of the matched queries (``stride`` pixels per cell).
        boxes: P x 4 XYXY pixels of the padded input.
        stride: input pixels per mask cell (4 for VLOSS's masks).

    Returns:
        Scalar mean over the P pairs (0 with a grad path when P == 0).
    """
    if pred_masks.shape[0] == 0:
        return pred_masks.sum() * 0.0
    target = box_masks(boxes.to(pred_masks.device), tuple(pred_masks.shape[-2:]), stride)
    return mil_loss(pred_masks.float().sigmoid(), target)


def filip_contrastive_loss(
    image_tokens: Tensor,
    text_tokens: Tensor,
    text_valid: Tensor,
    temperature: Tensor | float,
    image_valid: Tensor | None = None,
) -> Tensor:
    """FILIP's token-wise contrastive loss [52] (vloss paper Table 6): with c(n, t) the cosine of image token n
    and text token t, the image-to-text similarity of pair (i, j) is the mean over i's tokens of their max over
    j's tokens, the text-to-image one the mean over j's tokens of their max over i's tokens; the loss is the mean
    of the two directions' softmax cross-entropies (logits = similarity / tau), the matched pair positive.

    Args:
        image_tokens: B x N x E (VLOSS: the object queries in the text space).
        text_tokens: B x T x E word-token embeddings, padded.
        text_valid: B x T bool, False on padding; a row without a valid token leaves the pair out.
        temperature: tau (float or scalar tensor).
        image_valid: B bool pairs to use (None: all rows with text).

    Returns:
        Scalar; 0 with a grad path when no pair is left.
    """
    keep = text_valid.bool().any(1)
    if image_valid is not None:
        keep = keep & image_valid.bool()
    img = F.normalize(image_tokens[keep].float(), dim=-1)
    txt = F.normalize(text_tokens[keep].float(), dim=-1)
    tv = text_valid[keep].bool()
    b = img.shape[0]
    if b == 0:
        return image_tokens.sum() * 0.0 + text_tokens.sum() * 0.0
    sim = torch.einsum("ine,jte->ijnt", img, txt)  # B x B x N x T
    neg = torch.finfo(sim.dtype).min
    s_i2t = sim.masked_fill(~tv[None, :, None, :], neg).amax(3).mean(2)  # B x B: image i vs text j
    s_t2i = sim.amax(2)  # B x B x T: each token of text j, best token of image i
    s_t2i = (s_t2i * tv[None]).sum(2) / tv.sum(1)[None].float()
    labels = torch.arange(b, device=img.device)
    return 0.5 * (F.cross_entropy(s_i2t / temperature, labels) + F.cross_entropy(s_t2i.t() / temperature, labels))
