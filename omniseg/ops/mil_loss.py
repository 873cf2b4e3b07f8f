"""MAL's multiple-instance-learning loss on row / column bags (Lan et al., MAL, Sec. 3.3, Eq. 2).

The crop holds the object's box plus a random margin (MAL Sec. 3.1, box expansion). Every row and every column
of the crop is a bag of pixels; a bag is positive when it crosses the ground-truth box, negative when it lies in
the margin. A bag's score is the max of its pixels' mask probabilities, so a positive bag asks for at least one
foreground pixel and a negative bag for none; the margin's negative bags keep the mask from filling the box.
"""

from __future__ import annotations

import torch
from torch import Tensor

from omniseg.ops.losses import reduce_instance_losses, squared_dice_loss


def mil_loss(
    mask_probs: Tensor, box_masks: Tensor, valid: Tensor | None = None, smooth: float = 1.0
) -> Tensor:
    """MIL loss (MAL Sec. 3.3, Eq. 2): every row and every column of the crop is a bag; a bag is positive when it
    crosses the ground-truth box (``box_masks``: 1 inside the object's box in crop coordinates), negative otherwise
    (the rows / columns of the expanded margin). A bag's score is the max of its pixels' mask probabilities; the
    loss is the dice loss between bag scores and bag labels, rows and columns in one dice (Eq. 2 sums over all
    bags B_i, each "a row or column"), averaged over the N instances.

    Choices where the paper is silent or inconsistent:
      - Dice form: 1 - (2 sum g s + smooth) / (sum s^2 + sum g^2 + smooth), s = bag score, g = bag label. Eq. 2
        prints the max squared in the numerator too; Eq. 5 (same section, same dice [55]) and the authors' released
        code use the product g * s, which we follow. Both vanish exactly when every bag score equals its label.
      - ``smooth`` = 1 as :func:`omniseg.ops.losses.dice_loss` (the paper gives none).
      - Padding (``valid`` False) is no part of any bag: its probabilities are ignored by the max, its box pixels
        make no bag positive, and a row / column with no valid pixel is no bag at all. An instance without any
        valid pixel gets weight 0 in the mean.

    Args:
        mask_probs: N x H x W mask probabilities in [0, 1] (sigmoid of the student's logits).
        box_masks: N x H x W {0, 1} (bool or float): 1 inside the object's ground-truth box.
        valid: N x H x W bool, True for pixels inside the image (not padding); None: all valid.
        smooth: dice smoothing.

    Returns:
        Scalar: mean over instances (0, still in the graph, when N == 0 or nothing is valid).
    """
    if mask_probs.shape != box_masks.shape or mask_probs.dim() != 3:
        raise ValueError(
            f"mask_probs {tuple(mask_probs.shape)} and box_masks {tuple(box_masks.shape)}: want N x H x W"
        )
    box = box_masks > 0
    if valid is not None:
        if valid.shape != mask_probs.shape:
            raise ValueError(f"valid has shape {tuple(valid.shape)}, expected {tuple(mask_probs.shape)}")
        valid = valid.bool()
        # torch.where, not a product: NaN / inf in padding must not reach the max or its gradient.
        mask_probs = torch.where(valid, mask_probs, torch.zeros_like(mask_probs))
        box = box & valid
        bag_valid = torch.cat([valid.any(2), valid.any(1)], dim=1)  # N x (H + W)
        instance_valid = valid.flatten(1).any(1)
    else:
        bag_valid, instance_valid = None, None
    # Bags (Sec. 3.3): rows (max over W) then columns (max over H). Max pooling as the reduction.
    scores = torch.cat([mask_probs.amax(2), mask_probs.amax(1)], dim=1)  # N x (H + W)
    labels = torch.cat([box.any(2), box.any(1)], dim=1).to(mask_probs.dtype)
    per_instance = squared_dice_loss(scores, labels, bag_valid, smooth)
    return reduce_instance_losses(per_instance, instance_valid)
