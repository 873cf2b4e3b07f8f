"""OpenSeg's losses (Ghiasi et al., "Scaling Open-Vocabulary Image Segmentation with Image-Level Labels"),
as pure-tensor functions, plus the LSeg+ per-pixel baseline loss.

- :func:`max_dice_segmentation_loss` -- L_S, Eq. 1 (Sec. 3.1): every labeled mask is matched to its best proposal.
- :func:`grounding_scores` -- G(I, C), Eq. 2-3 (Sec. 3.2): word-region grounding of every image x caption pair.
- :func:`grounding_loss` -- L_G, Eq. 4 (Sec. 3.2): contrastive over the batch in both directions.
- :func:`pixel_text_loss` -- LSeg+ (Sec. 4.3 "LSeg baseline"): per-pixel cross-entropy against class texts.

Masked entries (pixels outside the image, padded regions / words, ignored pixels) are replaced by constants *before*
any arithmetic, so NaN/garbage there changes neither the result nor the gradient of the other entries.
Similarities are computed in >= fp32 with autocast off (1 / temperature amplifies bf16 rounding).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from omniseg.ops.losses import info_nce_loss


def _fp32(t: Tensor) -> Tensor:
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _zero(t: Tensor) -> Tensor:
    """A zero scalar (>= fp32) in ``t``'s graph, even if ``t`` holds NaN in masked-out entries."""
    return _fp32(t).nan_to_num().sum() * 0


def pairwise_squared_dice(probs: Tensor, targets: Tensor, smooth: float = 1.0) -> Tensor:
    """V-Net Dice coefficient (Milletari et al. 2016, OpenSeg's [34]) of every prediction against every target:
    (2 sum p t + s) / (sum p^2 + sum t^2 + s) -- the pairwise form of ``1 - losses.squared_dice_loss``.

    Args:
        probs: N x P probabilities.
        targets: M x P in [0, 1].
        smooth: additive smoothing s (as ``squared_dice_loss``); a prediction equal to a binary target gives 1.

    Returns:
        N x M Dice coefficients (>= fp32).
    """
    p = _fp32(probs)
    t = targets.to(p.dtype)
    with torch.autocast(device_type=p.device.type, enabled=False):
        inter = p @ t.t()
    denom = (p * p).sum(1)[:, None] + (t * t).sum(1)[None, :]
    return (2 * inter + smooth) / (denom + smooth)


def max_dice_segmentation_loss(
    mask_logits: Tensor, gt_masks: Tensor, valid: Tensor | None = None, smooth: float = 1.0
) -> Tensor:
    """L_S of one image (OpenSeg Eq. 1, Sec. 3.1): L_S = 1/M sum_j (1 - max_i Dice(s_i, s^l_j)).

    No matching and no "no-object" term: each labeled mask pulls only its best proposal (the gradient of the max
    reaches the arg-max proposal only); proposals that match no labeled mask are not penalised.

    The paper cites V-Net [34] for the Dice coefficient without writing it out; we use V-Net's form with squared
    denominators (as ``losses.squared_dice_loss``) and, where the paper is silent, add smoothing s = 1 (a labeled
    mask with no pixels then still has a finite loss).

    Args:
        mask_logits: N x H x W proposal mask logits (s = sigmoid(mask_logits)).
        gt_masks: M x H x W class-agnostic labeled masks in {0, 1} (bool / int / float).
        valid: H x W bool, pixels inside the image (padding is left out of all sums; its logits are never read).
            None: all pixels.
        smooth: Dice smoothing.

    Returns:
        Scalar (>= fp32). M = 0: zero, still in the graph. N = 0 and M > 0: 1 (no proposal covers any mask).
    """
    if mask_logits.shape[1:] != gt_masks.shape[1:]:
        raise ValueError(
            f"mask_logits {tuple(mask_logits.shape)} and gt_masks {tuple(gt_masks.shape)} differ in H x W"
        )
    if gt_masks.shape[0] == 0:
        return _zero(mask_logits)
    logits = _fp32(mask_logits).flatten(1)
    targets = gt_masks.flatten(1).to(logits.dtype)
    if valid is not None:  # masked before the sigmoid, so NaN padding gets a zero (not NaN) gradient
        keep = valid.reshape(1, -1).bool()
        logits = torch.where(keep, logits, torch.zeros_like(logits))
        targets = torch.where(keep, targets, torch.zeros_like(targets))
    probs = torch.sigmoid(logits)
    if valid is not None:
        probs = torch.where(keep, probs, torch.zeros_like(probs))
    if probs.shape[0] == 0:
        return probs.sum() * 0 + 1
    dice = pairwise_squared_dice(probs, targets, smooth)  # N x M
    return (1 - dice.max(dim=0).values).mean()


def batched_max_dice_segmentation_loss(
    mask_logits: list[Tensor],
    gt_masks: list[Tensor],
    valid: list[Tensor | None] | None = None,
    smooth: float = 1.0,
) -> Tensor:
    """Batch L_S: mean of per-image :func:`max_dice_segmentation_loss` over the images with >= 1 labeled mask.

    Each such image weighs the same (Eq. 1 is a per-image mean over its M masks; the paper does not say how images
    are combined -- we average the per-example losses, not the masks of the whole batch). Images with M = 0
    (caption-only images, Sec. 3.3) contribute nothing and are not counted.

    Args:
        mask_logits: B tensors N_b x H_b x W_b.
        gt_masks: B tensors M_b x H_b x W_b.
        valid: None, or B entries (H_b x W_b bool or None).
        smooth: Dice smoothing.

    Returns:
        Scalar; zero (in the graph) when no image has a labeled mask.
    """
    if len(mask_logits) != len(gt_masks) or (valid is not None and len(valid) != len(mask_logits)):
        raise ValueError("mask_logits, gt_masks (and valid) must have one entry per image")
    if not mask_logits:
        raise ValueError("empty batch")
    terms = [
        max_dice_segmentation_loss(s, m, None if valid is None else valid[b], smooth)
        for b, (s, m) in enumerate(zip(mask_logits, gt_masks))
        if m.shape[0] > 0
    ]
    if not terms:
        return torch.stack([_zero(s) for s in mask_logits]).sum()
    return torch.stack(terms).mean()


def grounding_scores(
    region_emb: Tensor,
    region_valid: Tensor,
    word_emb: Tensor,
    word_valid: Tensor,
    temperature: float | Tensor,
) -> Tensor:
    """Word-region grounding G(I_b, C_c) / tau for every image b and caption c (OpenSeg Eq. 2-3, Sec. 3.2):

        G(I, C) = 1/K sum_{j=1..K} sum_{i=1..N} softmax_i(<z_i, w_j> / tau) * <z_i, w_j>        (Eq. 3)

    with <z, w> the cosine similarity, N the image's valid regions and K the caption's valid words: each word's
    score is the softmax(/tau)-weighted mean of its cosine to the regions (a soft max over regions), and regions
    no word picks are not penalised.

    Returned divided by tau: Eq. 4 applies the same softmax sigma of Eq. 2 (with the same learnable tau) to G, so
    these are the logits :func:`grounding_loss` expects; multiply by tau to get G in [-1, 1].

    The paper calls tau "a learnable scalar" and gives no parameterisation or initial value; pass tau itself
    (a positive scalar, e.g. ``log_tau.exp()`` of a learnable log-temperature, CLIP-style, so it stays > 0).

    Args:
        region_emb: B x N x D region features z (normalised here).
        region_valid: B x N bool; invalid regions are left out of the softmax (their values are never read).
        word_emb: B' x W x D word features w (normalised here).
        word_valid: B' x W bool (padding / dropped words, Sec. 3.2 keep probability kp, are False).
        temperature: tau, scalar (float or 0-dim tensor; gradients flow to it).

    Returns:
        B x B' logits G / tau (>= fp32). An image without valid regions or a caption without valid words gets
        G = 0; drop such pairs with ``grounding_loss(..., valid=)``.
    """
    if region_emb.shape[-1] != word_emb.shape[-1]:
        raise ValueError(
            f"region_emb {tuple(region_emb.shape)} and word_emb {tuple(word_emb.shape)} differ in D"
        )
    rv, wv = region_valid.bool(), word_valid.bool()
    z = _fp32(region_emb)
    w = _fp32(word_emb).to(z.dtype)
    z = F.normalize(torch.where(rv[..., None], z, torch.zeros_like(z)), dim=-1)  # zero vector stays zero
    w = F.normalize(torch.where(wv[..., None], w, torch.zeros_like(w)), dim=-1)
    with torch.autocast(device_type=z.device.type, enabled=False):
        cos = torch.einsum("bnd,cwd->bcwn", z, w)  # B x B' x W x N, <z_i, w_j>
    logits = cos / temperature
    # Invalid regions: the lowest finite logit -> exp underflows to exactly 0 beside any valid region, and a row
    # with no valid region stays finite (uniform weights on cos = 0, so G = 0).
    logits = torch.where(rv[:, None, None, :], logits, torch.full_like(logits, torch.finfo(logits.dtype).min))
    per_word = (logits.softmax(dim=-1) * cos).sum(dim=-1)  # B x B' x W
    per_word = torch.where(wv[None], per_word, torch.zeros_like(per_word))
    k = wv.sum(dim=1).clamp(min=1).to(per_word.dtype)  # B'
    g = per_word.sum(dim=-1) / k[None, :]
    return g / temperature


def grounding_loss(scores: Tensor, valid: Tensor | None = None) -> Tensor:
    """L_G (OpenSeg Eq. 4, Sec. 3.2): cross-entropy of the matched pair (the diagonal) among all captions of each
    image (rows) and among all images of each caption (columns); returns the mean of the two.

    Eq. 4 as printed sums the two terms (-1/|B| sum_b (log sigma_col + log sigma_row)), i.e. twice this value; the
    paper does not give alpha in L = L_G + alpha L_S, so the factor only rescales alpha (use 2x this and alpha, or
    this and alpha / 2, for the printed balance). Like CLIP's loss (``losses.clip_contrastive_loss``), which this
    equals on cosine / tau logits.

    Args:
        scores: B x B logits, row b = image b, column c = caption c (e.g. :func:`grounding_scores`, already / tau).
        valid: B bool; pairs with False (no regions / no words) are removed from rows and columns entirely.

    Returns:
        Scalar (>= fp32); zero (in the graph) when no pair is valid. log(B) for equal scores.
    """
    if scores.dim() != 2 or scores.shape[0] != scores.shape[1]:
        raise ValueError(f"scores must be B x B, got {tuple(scores.shape)}")
    logits = _fp32(scores)
    if valid is not None:
        keep = valid.bool()
        logits = logits[keep][:, keep]
    b = logits.shape[0]
    if b == 0:
        return _zero(scores)
    target = torch.arange(b, device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


def pixel_text_loss(
    pixel_emb: Tensor, text_emb: Tensor, labels: Tensor, temperature: float | Tensor, ignore_index: int = -1
) -> Tensor:
    """LSeg+ baseline (OpenSeg Sec. 4.3 "LSeg baseline"; issue 14 "Baselines"): per-pixel cross-entropy of the
    softmax over K classes of cos(pixel embedding, class text embedding) / tau, averaged over labeled pixels.

    The paper says only "a per-pixel cross-entropy loss to align pixel embeddings with text embeddings"; cosine
    similarity and a temperature (as LSeg / CLIP) are our choice. It is ``losses.info_nce_loss`` with the pixels as
    queries and the K class texts as keys.

    Args:
        pixel_emb: B x D x H x W pixel embeddings (at the label resolution; resizing is the caller's).
        text_emb: K x D class text embeddings.
        labels: B x H x W long class indices in [0, K), or ``ignore_index``.
        temperature: tau (float or 0-dim tensor; gradients flow to it).
        ignore_index: label of pixels left out (their embeddings are never read).

    Returns:
        Scalar (>= fp32); zero (in the graph) when every pixel is ignored.
    """
    b, d, h, w = pixel_emb.shape
    if labels.shape != (b, h, w):
        raise ValueError(f"labels {tuple(labels.shape)} do not match pixel_emb {tuple(pixel_emb.shape)}")
    q = _fp32(pixel_emb).permute(0, 2, 3, 1).reshape(-1, d)
    lab = labels.reshape(-1).long()
    keep = lab != ignore_index
    q = torch.where(keep[:, None], q, torch.zeros_like(q))  # ignored pixels: never read, zero gradient
    return info_nce_loss(q, _fp32(text_emb), torch.where(keep, lab, 0), valid=keep, temperature=temperature)
