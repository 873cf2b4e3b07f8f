"""RoI mask heads: Mask R-CNN's 4-conv FCN, a deep Hourglass, and Mask^X R-CNN's MLP branch.

All heads take RoI-aligned features R x C x S x S and return mask logits R x K x M x M
(K = 1 for class-agnostic heads, else one channel per class).

* :class:`FCNMaskHead` - Mask R-CNN: 4 x (conv3x3, 256) + 2x deconv + 1x1 predictor
  (14 x 14 in, 28 x 28 out).
* :class:`HourglassMaskHead` - deep class-agnostic head. FCOS-MO uses "a 20-layer Hourglass
  mask head" on 16 x 16 RoI features cropped with ground-truth boxes, after Deep-MARC's finding
  that deep mask heads generalize to novel classes (alp-fcos-mo, Sec. 3.2 "Mask head"; Sec. 5
  / Tab. 5 ablates it against the 4-conv head). The paper gives only the depth and the input
  size, so the layout here is ours: a stem conv, an hourglass of residual blocks (two 3x3 convs
  each; per level a skip block, a stride-2 down block and an up block around the inner part;
  bottom blocks at the coarsest level) and a 1x1 predictor. ``num_layers`` counts the 3x3 / 1x1
  convs on the main path: 2 + 2 * (3 * levels + bottom blocks), so 20 = 2 levels + 3 bottom
  blocks. Output resolution = input resolution (x2 with ``upsample=True``).
* :class:`MLPMaskBranch` - Mask^X R-CNN's class-agnostic MLP mask predictor whose 1 x M x M
  scores are added to the FCN head's class scores before the sigmoid (maskx-rcnn, Sec. 3.4
  "Fused FCN+MLP Mask Heads"); the fusion itself lives in
  :class:`omniseg.modeling.roi_mask_head.RoIMaskHead`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from omniseg.modeling.norm import NormKind, build_norm


def _conv_norm_relu(in_channels: int, out_channels: int, norm: NormKind, stride: int = 1) -> nn.Sequential:
    conv = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=norm == "none")
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return nn.Sequential(conv, build_norm(norm, out_channels), nn.ReLU(inplace=True))


def _predictor(in_channels: int, num_classes: int) -> nn.Conv2d:
    conv = nn.Conv2d(in_channels, num_classes, 1)
    nn.init.normal_(conv.weight, std=0.001)  # Mask R-CNN predictor init
    nn.init.zeros_(conv.bias)
    return conv


def select_class_logits(logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Pick each RoI's class channel (class-agnostic logits pass through).

    Args:
        logits: R x K x M x M.
        classes: R int64 class indices in [0, K) (ignored when K == 1).

    Returns:
        R x M x M.
    """
    if logits.shape[1] == 1:
        return logits[:, 0]
    if classes.shape != (logits.shape[0],):
        raise ValueError(f"classes must have shape ({logits.shape[0]},), got {tuple(classes.shape)}")
    return logits[torch.arange(logits.shape[0], device=logits.device), classes.long()]


class FCNMaskHead(nn.Module):
    """Mask R-CNN mask head: ``num_convs`` x (conv3x3 + norm + ReLU), deconv 2x + ReLU, 1x1 predictor.

    Args:
        in_channels: RoI feature channels C.
        conv_dim: channels of the convs (256 in Mask R-CNN).
        num_convs: number of 3x3 convs (4).
        num_classes: K; 1 for a class-agnostic head.
        norm: norm after each conv ("none" in Mask R-CNN, "GN" ...).
    """

    def __init__(
        self,
        in_channels: int = 256,
        *,
        conv_dim: int = 256,
        num_convs: int = 4,
        num_classes: int = 1,
        norm: NormKind = "none",
    ):
        super().__init__()
        self.num_classes = num_classes
        self.convs = nn.Sequential(
            *(_conv_norm_relu(in_channels if i == 0 else conv_dim, conv_dim, norm) for i in range(num_convs))
        )
        self.deconv = nn.ConvTranspose2d(conv_dim if num_convs else in_channels, conv_dim, 2, 2)
        nn.init.kaiming_normal_(self.deconv.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.deconv.bias)
        self.predictor = _predictor(conv_dim, num_classes)

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """R x C x S x S -> R x conv_dim x S x S (the conv stack, before upsampling)."""
        return self.convs(x)

    def head(self, trunk_features: torch.Tensor) -> torch.Tensor:
        """R x conv_dim x S x S -> R x K x 2S x 2S logits."""
        return self.predictor(F.relu(self.deconv(trunk_features)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """R x C x S x S RoI features -> R x K x 2S x 2S mask logits."""
        return self.head(self.trunk(x))


class ResidualBlock(nn.Module):
    """conv3x3(stride) + norm + ReLU, conv3x3 + norm, plus a (projected when needed) shortcut, ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, norm: NormKind):
        super().__init__()
        self.conv1 = _conv_norm_relu(in_channels, out_channels, norm, stride)
        conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=norm == "none")
        nn.init.kaiming_normal_(conv2.weight, mode="fan_out", nonlinearity="relu")
        if conv2.bias is not None:
            nn.init.zeros_(conv2.bias)
        self.conv2 = nn.Sequential(conv2, build_norm(norm, out_channels))
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), build_norm(norm, out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


class Hourglass(nn.Module):
    """One hourglass level: skip(x) + upsample(up(inner(down(x)))), inner recursive."""

    def __init__(self, levels: int, channels: int, bottom_blocks: int, norm: NormKind):
        super().__init__()
        self.skip = ResidualBlock(channels, channels, 1, norm)
        self.down = ResidualBlock(channels, channels, 2, norm)
        if levels > 1:
            self.inner: nn.Module = Hourglass(levels - 1, channels, bottom_blocks, norm)
        else:
            self.inner = nn.Sequential(
                *(ResidualBlock(channels, channels, 1, norm) for _ in range(bottom_blocks))
            )
        self.up = ResidualBlock(channels, channels, 1, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.skip(x)
        y = self.up(self.inner(self.down(x)))
        return skip + F.interpolate(y, size=skip.shape[-2:], mode="nearest")


class HourglassMaskHead(nn.Module):
    """Deep Hourglass mask head (see module docstring; alp-fcos-mo Sec. 3.2, Hourglass-20).

    Args:
        in_channels: RoI feature channels C.
        channels: width of the hourglass.
        num_layers: convs on the main path (20 by default); must equal
            2 + 2 * (3 * levels + bottom blocks) for some bottom-block count >= 1.
        levels: number of stride-2 levels (2: 16 x 16 -> 4 x 4 at the bottom).
        num_classes: K (1 = class-agnostic, as in FCOS-MO).
        norm: norm after each conv.
        upsample: add a 2x deconv before the predictor (output 2S x 2S).
    """

    def __init__(
        self,
        in_channels: int = 256,
        *,
        channels: int = 128,
        num_layers: int = 20,
        levels: int = 2,
        num_classes: int = 1,
        norm: NormKind = "GN",
        upsample: bool = False,
    ):
        super().__init__()
        blocks, rem = divmod(num_layers - 2, 2)
        bottom = blocks - 3 * levels
        if levels < 1 or rem or bottom < 1:
            raise ValueError(
                f"num_layers={num_layers} with levels={levels} does not fit 2 + 2 * (3 * levels + bottom), "
                f"bottom >= 1; e.g. num_layers={2 + 2 * (3 * max(levels, 1) + 1)} is the smallest"
            )
        self.num_layers, self.levels, self.bottom_blocks = num_layers, levels, bottom
        self.num_classes = num_classes
        self.stem = _conv_norm_relu(in_channels, channels, norm)
        self.hourglass = Hourglass(levels, channels, bottom, norm)
        self.deconv: nn.Module | None = None
        if upsample:
            self.deconv = nn.Sequential(nn.ConvTranspose2d(channels, channels, 2, 2), nn.ReLU(inplace=True))
        self.predictor = _predictor(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """R x C x S x S RoI features -> R x K x S x S mask logits (2S x 2S with ``upsample``)."""
        y = self.hourglass(self.stem(x))
        if self.deconv is not None:
            y = self.deconv(y)
        return self.predictor(y)


class MLPMaskBranch(nn.Module):
    """Class-agnostic fully connected mask predictor (maskx-rcnn, Sec. 3.4).

    Flattens R x C x S x S features (optionally reduced to ``reduce_channels`` by a 1x1 conv
    first, to keep the first fc small), applies ``num_fc`` hidden fc + ReLU layers of width
    ``hidden_dim`` and a final fc to M * M scores.

    Args:
        in_channels: C.
        in_size: S.
        out_size: M (28 in Mask^X R-CNN, maskx-rcnn Sec. 4.1 "Implementation details").
        hidden_dim: width of the hidden fc layers.
        num_fc: number of hidden fc layers (0 = a single fc to M * M).
        reduce_channels: optional 1x1 conv width before flattening.
    """

    def __init__(
        self,
        in_channels: int,
        in_size: int,
        *,
        out_size: int = 28,
        hidden_dim: int = 1024,
        num_fc: int = 2,
        reduce_channels: int | None = None,
    ):
        super().__init__()
        self.out_size = out_size
        self.reduce: nn.Module = nn.Identity()
        if reduce_channels is not None:
            self.reduce = nn.Sequential(nn.Conv2d(in_channels, reduce_channels, 1), nn.ReLU(inplace=True))
            in_channels = reduce_channels
        dims = [in_channels * in_size * in_size] + [hidden_dim] * num_fc
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.ReLU(inplace=True)]
        self.fcs = nn.Sequential(*layers)
        self.predictor = nn.Linear(dims[-1], out_size * out_size)
        nn.init.normal_(self.predictor.weight, std=0.001)
        nn.init.zeros_(self.predictor.bias)
        self.in_features = dims[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """R x C x S x S -> R x 1 x M x M class-agnostic mask logits."""
        y = self.reduce(x).flatten(1)
        if y.shape[1] != self.in_features:
            raise ValueError(f"MLP mask branch expects {self.in_features} inputs per RoI, got {y.shape[1]}")
        return self.predictor(self.fcs(y)).view(-1, 1, self.out_size, self.out_size)


def build_fcn_mask_head(
    in_channels: int = 256, *, num_classes: int = 1, conv_dim: int = 256, norm: NormKind = "none"
) -> FCNMaskHead:
    """Mask R-CNN 4-conv head (class-agnostic by default)."""
    return FCNMaskHead(in_channels, conv_dim=conv_dim, num_convs=4, num_classes=num_classes, norm=norm)


def build_hourglass20_mask_head(
    in_channels: int = 256,
    *,
    channels: int = 128,
    num_classes: int = 1,
    norm: NormKind = "GN",
    upsample: bool = False,
) -> HourglassMaskHead:
    """Hourglass-20 class-agnostic head on 16 x 16 RoIs (alp-fcos-mo Sec. 3.2)."""
    return HourglassMaskHead(
        in_channels,
        channels=channels,
        num_layers=20,
        levels=2,
        num_classes=num_classes,
        norm=norm,
        upsample=upsample,
    )


MASK_HEAD_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "fcn4": build_fcn_mask_head,
    "hourglass20": build_hourglass20_mask_head,
}
