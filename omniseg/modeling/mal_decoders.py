"""Mask decoders of the Mask Auto-Labeler (mal-mask-auto-labeler Sec. 3.2 and Sec. 4.5 / Table 3).

Each maps an encoder map N x D x h x w to mask logits N x 1 x h' x w' (resized to the crop size by
the model):

* :class:`AttentionDecoder` (the paper's choice, Sec. 3.2, after YOLACT): instance-aware head K =
  global max-pool + one FC layer to 256; pixel-wise head V = four 3x3 convs, each followed by ReLU,
  256 hidden / output channels, a bilinear x2 upsampling between the 2nd and the 3rd conv; mask =
  K . V (inner product over the 256 channels) at 2x the input resolution.
* :class:`FCNDecoder` (Sec. 4.5: "we adopt the pixel-wise head V"): V, then a 1x1 conv to one channel.
* :class:`FCDecoder` (Sec. 4.5): two fully connected layers, hidden 2048, the output reshaped to an
  ``out_size`` x ``out_size`` map. Its input is the flattened map, so it needs a fixed input grid
  (``in_grid``): the model does not resize features per object size for it.
"""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

DecoderKind = Literal["fc", "fcn", "attention"]


class PixelHead(nn.Module):
    """V: four 3x3 conv + ReLU layers with a bilinear x2 upsampling between the 2nd and the 3rd
    (Sec. 3.2; the authors' code upsamples before the 4th instead -- we follow the paper)."""

    def __init__(self, in_channels: int, dim: int = 256, num_convs: int = 4, upsample_after: int = 2):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(in_channels if i == 0 else dim, dim, 3, padding=1)
                                   for i in range(num_convs))
        self.upsample_after = upsample_after
        for c in self.convs:
            nn.init.kaiming_normal_(c.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(c.bias)

    def forward(self, x: Tensor) -> Tensor:
        """N x D x h x w -> N x dim x 2h x 2w."""
        for i, conv in enumerate(self.convs):
            if i == self.upsample_after:
                x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
            x = F.relu(conv(x))
        return x


class AttentionDecoder(nn.Module):
    """D(E(I)) = K(E(I)) . V(E(I)) (Sec. 3.2)."""

    def __init__(self, in_channels: int, dim: int = 256):
        super().__init__()
        self.key = nn.Linear(in_channels, dim)  # K: after a global max-pool
        self.value = PixelHead(in_channels, dim)
        # K . V sums `dim` products of O(1) terms: scale so the initial logits are O(1)
        self.scale = dim**-0.5

    def forward(self, x: Tensor) -> Tensor:
        k = self.key(x.amax(dim=(2, 3)))  # N x dim
        v = self.value(x)  # N x dim x 2h x 2w
        return (k[:, :, None, None] * v).sum(dim=1, keepdim=True) * self.scale


class FCNDecoder(nn.Module):
    """The fully convolutional decoder: V, then a 1x1 conv to the mask logit (Sec. 4.5)."""

    def __init__(self, in_channels: int, dim: int = 256):
        super().__init__()
        self.value = PixelHead(in_channels, dim)
        self.predictor = nn.Conv2d(dim, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.predictor(self.value(x))


class FCDecoder(nn.Module):
    """The fully connected decoder: flatten -> FC(hidden) -> ReLU -> FC(out_size^2) -> reshape (Sec. 4.5)."""

    def __init__(self, in_channels: int, in_grid: int, out_size: int, hidden: int = 2048):
        super().__init__()
        self.in_grid, self.out_size = in_grid, out_size
        self.fc1 = nn.Linear(in_channels * in_grid * in_grid, hidden)
        self.fc2 = nn.Linear(hidden, out_size * out_size)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-2:] != (self.in_grid, self.in_grid):
            raise ValueError(f"FC decoder built for a {self.in_grid}x{self.in_grid} map, got {tuple(x.shape[-2:])}")
        y = self.fc2(F.relu(self.fc1(x.flatten(1))))
        return y.view(-1, 1, self.out_size, self.out_size)


def build_decoder(kind: DecoderKind, in_channels: int, dim: int = 256, *, in_grid: int = 0, out_size: int = 0,
                  fc_hidden: int = 2048) -> nn.Module:
    """The decoder ``kind`` (``in_grid`` / ``out_size`` / ``fc_hidden``: the FC decoder only)."""
    if kind == "attention":
        return AttentionDecoder(in_channels, dim)
    if kind == "fcn":
        return FCNDecoder(in_channels, dim)
    if kind == "fc":
        return FCDecoder(in_channels, in_grid, out_size, fc_hidden)
    raise ValueError(f"unknown decoder {kind!r}; choose from fc, fcn, attention")
