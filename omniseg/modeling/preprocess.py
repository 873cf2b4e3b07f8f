"""Image normalization shared by every model: uint8 batches in, ImageNet-normalized floats out."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

#: ImageNet statistics in 0-255 units (what torchvision-style checkpoints expect)
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


def normalize_images(
    images: Tensor, mean: Tensor, std: Tensor, image_sizes: Sequence[tuple[int, int]] | None = None
) -> Tensor:
    """B x 3 x H x W uint8 (0-255) -> float32 ``(x - mean) / std`` on ``mean``'s device.

    Args:
        mean, std: 1 x 3 x 1 x 1.
        image_sizes: B valid (h, w); the zero padding of a collated batch is kept exactly 0 after
            normalization, so padding looks the same as in a padded feature map.
    """
    x = (images.to(mean.device, torch.float32) - mean) / std
    h, w = x.shape[-2:]
    if image_sizes is not None and any((ih, iw) != (h, w) for ih, iw in image_sizes):
        valid = torch.zeros(x.shape[0], 1, h, w, dtype=torch.bool, device=x.device)
        for i, (ih, iw) in enumerate(image_sizes):
            valid[i, :, :ih, :iw] = True
        x = x * valid
    return x
