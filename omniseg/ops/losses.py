"""Pure-tensor losses that honour per-instance supervision flags.

Every loss takes ``valid``: an N bool tensor (or N float weights). An instance with
``valid == False`` (weight 0) -- e.g. a box-only instance for a mask loss -- contributes no
loss and receives exactly zero gradient: its inputs are replaced by safe constants *before*
the loss is computed, so even NaN/inf in an unsupervised row cannot leak into the result.

Normalization (one rule for all losses, see :func:`reduce_instance_losses`):
``"mean"`` = sum_i w_i * loss_i / sum_i w_i, where loss_i is the per-instance loss
(each function documents how it reduces over points/classes). When no instance is valid the
result is 0 and still has a grad path (so ``loss.backward()`` works in a mixed batch).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def reduce_instance_losses(
    per_instance: Tensor,
    valid: Tensor | None = None,
    reduction: str = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor:
    """Weighted reduction over instances.

    Args:
        per_instance: N per-instance losses.
        valid: N bool or float weights (None: all valid, weight 1).
        reduction: "mean" (weighted sum / ``normalizer``, default: sum of weights, or 1 if that is 0),
            "sum" (weighted sum) or "none" (N weighted losses; 0 where invalid).
        normalizer: explicit denominator for "mean" (e.g. number of positives over all GPUs);
            values <= 0 are replaced by 1.

    Returns:
        Scalar, or N for reduction="none".
    """
    if valid is None:
        w = torch.ones_like(per_instance)
    else:
        w = valid.to(per_instance.dtype)
        if w.shape != per_instance.shape:
            raise ValueError(f"valid has shape {tuple(valid.shape)}, expected {tuple(per_instance.shape)}")
    weighted = torch.where(w != 0, per_instance * w, torch.zeros_like(per_instance))
    if reduction == "none":
        return weighted
    total = weighted.sum()
    if reduction == "sum":
        return total
    if reduction != "mean":
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    if normalizer is None:
        denom = w.sum()
    else:
        denom = torch.as_tensor(normalizer, dtype=total.dtype, device=total.device)
    denom = torch.where(denom > 0, denom, torch.ones_like(denom))
    return total / denom


def _rows(t: Tensor) -> Tensor:
    """N x ... -> N x P (P >= 0), also for N == 0."""
    return t.flatten(1) if t.dim() > 1 else t[:, None]


def _mask_invalid(valid: Tensor | None, *tensors: Tensor, fill: float = 0.0) -> list[Tensor]:
    """Replace rows of invalid instances by ``fill`` (zero gradient flows back to those rows)."""
    if valid is None:
        return list(tensors)
    keep = valid > 0
    out = []
    for t in tensors:
        k = keep.reshape(keep.shape + (1,) * (t.dim() - 1))
        out.append(torch.where(k, t, torch.full_like(t, fill)))
    return out


def sigmoid_focal_loss(
    logits: Tensor,
    targets: Tensor,
    valid: Tensor | None = None,
    alpha: float = 0.25,
    gamma: float = 2.0,
    reduction: str = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor:
    """Sigmoid focal loss (Lin et al., 2017), summed over the trailing dims of each instance.

    loss = -alpha_t (1 - p_t)^gamma log(p_t), with p_t = p if y = 1 else 1 - p.

    Args:
        logits: N x D (e.g. N locations x C classes) raw scores.
        targets: N x D in [0, 1].
        valid: N bool / float weights per instance (row).
        alpha: weight of positives (negatives get 1 - alpha); alpha < 0 disables it.
        gamma: focusing exponent.
        reduction, normalizer: see :func:`reduce_instance_losses` (FCOS passes the number of
            positive locations as ``normalizer``).

    Returns:
        Scalar (N for reduction="none").
    """
    logits, targets = _mask_invalid(valid, logits, targets.to(logits.dtype))
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    per_instance = _rows(loss).sum(dim=1)
    return reduce_instance_losses(per_instance, valid, reduction, normalizer)


def sigmoid_bce_loss(
    logits: Tensor,
    targets: Tensor,
    valid: Tensor | None = None,
    reduction: str = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor:
    """Binary cross-entropy on logits, averaged over the trailing dims of each instance
    (the Mask R-CNN / Mask2Former mask loss; VLOSS Sec. 3.5 "Segmentation Loss").

    Args:
        logits: N x ... (e.g. N x M x M mask logits, or N x P point logits).
        targets: N x ... in [0, 1], same shape.
        valid: N bool (has a mask) or float per-instance weights.
        reduction, normalizer: see :func:`reduce_instance_losses`.

    Returns:
        Scalar (N for reduction="none").
    """
    logits, targets = _mask_invalid(valid, logits, targets.to(logits.dtype))
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    ce = _rows(ce)
    per_instance = ce.sum(dim=1) / max(ce.shape[1], 1)
    return reduce_instance_losses(per_instance, valid, reduction, normalizer)


def dice_loss(
    logits: Tensor,
    targets: Tensor,
    valid: Tensor | None = None,
    smooth: float = 1.0,
    reduction: str = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor:
    """Dice loss 1 - (2 sum(p t) + s) / (sum p + sum t + s) per instance, p = sigmoid(logits)
    (Mask2Former's form, smoothing s = 1; VLOSS Sec. 3.5, MAL Sec. 3.3).

    Args:
        logits: N x ... mask logits.
        targets: N x ... in [0, 1].
        valid: N bool / float weights.
        smooth: additive smoothing in numerator and denominator.
        reduction, normalizer: see :func:`reduce_instance_losses`.

    Returns:
        Scalar (N for reduction="none").
    """
    logits, targets = _mask_invalid(valid, logits, targets.to(logits.dtype))
    p = _rows(torch.sigmoid(logits))
    t = _rows(targets)
    per_instance = 1 - (2 * (p * t).sum(1) + smooth) / (p.sum(1) + t.sum(1) + smooth)
    return reduce_instance_losses(per_instance, valid, reduction, normalizer)


def squared_dice_loss(
    probs: Tensor, targets: Tensor, weights: Tensor | None = None, smooth: float = 1.0
) -> Tensor:
    """Dice loss with squared denominators on probabilities, per instance (MAL Eq. 2 and 5):
    1 - (2 sum(w p t) + s) / (sum(w p^2) + sum(w t^2) + s).

    Unlike :func:`dice_loss` (logits in, plain sums in the denominator) it takes
    probabilities, as MAL's bag scores (a max of probabilities) and refined labelings are.

    Args:
        probs: N x ... in [0, 1].
        targets: N x ... in [0, 1], same shape.
        weights: N x ... (bool or float) weight of each element; 0 leaves it out entirely (its value, even NaN,
            is never read). None: all 1.
        smooth: additive smoothing s in numerator and denominator (as ``dice_loss``); a prediction equal to a
            binary target gives exactly 0.

    Returns:
        N per-instance losses (float32 at least).
    """
    probs = probs.to(torch.promote_types(probs.dtype, torch.float32))  # sums over many pixels: not in half
    targets = targets.to(probs.dtype)
    if weights is not None:
        keep = weights > 0
        w = weights.to(probs.dtype)
        probs = torch.where(keep, probs, torch.zeros_like(probs))
        targets = torch.where(keep, targets, torch.zeros_like(targets))
    else:
        w = torch.ones_like(probs)
    p, t, w = probs.flatten(1), targets.flatten(1), w.flatten(1)
    inter = (w * p * t).sum(1)
    denom = (w * p * p).sum(1) + (w * t * t).sum(1)
    return 1 - (2 * inter + smooth) / (denom + smooth)


def info_nce_loss(
    queries: Tensor,
    keys: Tensor,
    positive: Tensor,
    valid: Tensor | None = None,
    temperature: float = 0.07,
    normalize: bool = True,
    reduction: str = "mean",
    normalizer: float | Tensor | None = None,
) -> Tensor:
    """InfoNCE: softmax cross-entropy of each query against all keys, the positive at ``positive``.

    FCOS-MO's region-phrase loss is this with tau = 0.01, phrase embeddings as keys and the other
    phrases in the batch as negatives (alp-fcos-mo paper, Sec. 3.2 "Open-vocabulary classifier").

    Args:
        queries: N x D (e.g. region features projected to the text dimension).
        keys: K x D (e.g. phrase embeddings of the batch).
        positive: N long, index in [0, K) of each query's positive key.
        valid: N bool / float weights per query.
        temperature: logits = cos(q, k) / temperature (dot product if ``normalize`` is False).
        normalize: L2-normalize queries and keys first (cosine similarity).
        reduction, normalizer: see :func:`reduce_instance_losses`.

    Returns:
        Scalar (N for reduction="none").
    """
    if normalize:
        queries = F.normalize(queries, dim=-1)
        keys = F.normalize(keys, dim=-1)
    (queries,) = _mask_invalid(valid, queries)
    positive = positive.long()
    if valid is not None:
        positive = torch.where(valid > 0, positive, torch.zeros_like(positive))
    if keys.shape[0] == 0:
        per_instance = queries.sum(dim=-1) * 0
    else:
        # Similarities / tau with tau ~ 0.01 amplify bf16 rounding: compute them in >= fp32, autocast off.
        dtype = torch.promote_types(queries.dtype, torch.float32)
        with torch.autocast(device_type=queries.device.type, enabled=False):
            logits = queries.to(dtype) @ keys.to(dtype).t() / temperature
        per_instance = F.cross_entropy(logits, positive, reduction="none").to(queries.dtype)
    return reduce_instance_losses(per_instance, valid, reduction, normalizer)


def clip_contrastive_loss(
    image_embeds: Tensor,
    text_embeds: Tensor,
    valid: Tensor | None = None,
    temperature: float = 0.07,
) -> Tensor:
    """Symmetric CLIP image-text contrastive loss (VLOSS Sec. 3.5, Eq. 4-5):
    -1/(2B) sum_i [log softmax_j(s_ij)[i] + log softmax_j(s_ji)[i]], s_ij = cos(img_i, txt_j) / tau.

    Pairs with ``valid`` False (e.g. an image without a caption) are removed entirely: they are
    neither anchors nor negatives, and get zero gradient.

    Args:
        image_embeds: B x D.
        text_embeds: B x D, row i is the caption of image i.
        valid: B bool (float weights are treated as bool here).
        temperature: tau.

    Returns:
        Scalar (>= fp32, even for bf16 embeddings: 1 / tau amplifies the rounding) mean over valid pairs; 0 (with a
        grad path) when fewer than one pair is valid.
    """
    if image_embeds.shape != text_embeds.shape:
        raise ValueError(f"image {tuple(image_embeds.shape)} and text {tuple(text_embeds.shape)} differ")
    if valid is not None:
        keep = valid > 0
        image_embeds = image_embeds[keep]
        text_embeds = text_embeds[keep]
    b = image_embeds.shape[0]
    if b == 0:
        return image_embeds.sum() * 0 + text_embeds.sum() * 0
    dtype = torch.promote_types(image_embeds.dtype, torch.float32)  # similarities in >= fp32
    img = F.normalize(image_embeds.to(dtype), dim=-1)
    txt = F.normalize(text_embeds.to(dtype), dim=-1)
    with torch.autocast(device_type=img.device.type, enabled=False):
        logits = img @ txt.t() / temperature
    labels = torch.arange(b, device=logits.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))


def image_label_loss(logits: Tensor, labels: list[Tensor]) -> Tensor:
    """Image-level label loss on one RoI per image (alp-fcos-mo Sec. 4, ALPs "as image-level labels";
    Detic's max-size loss): cross-entropy between the softmax over the C vocabulary columns and the
    K-hot target with values 1/K of the image's K labels.

    Args:
        logits: B x (C + 1) class logits of each image's RoI (the last column, background, is unused).
        labels: B long tensors of label indices in [0, C) (duplicates count once); images with none
            do not contribute.

    Returns:
        scalar, the mean over images with labels (0 without any, still in the graph).
    """
    c = logits.shape[1] - 1
    logp = torch.log_softmax(logits[:, :c].float(), dim=1)
    terms = []
    for i, lab in enumerate(labels):
        lab = lab.unique()
        if lab.numel():
            terms.append(-logp[i, lab].mean())
    if not terms:
        return logits.sum() * 0.0
    return torch.stack(terms).mean()
