"""Feature Pyramid Network over a ResNet trunk, with the P6/P7 top blocks of RetinaNet / FCOS.

Levels: each requested trunk feature ``c{k}`` gives ``p{k}`` (lateral 1x1 conv, top-down
nearest-neighbour upsampling and sum, 3x3 output conv). Extra coarser levels come from a
top block:

* ``"maxpool"``: P6 = max-pool(P5, stride 2) (Mask R-CNN / Faster R-CNN FPN);
* ``"p6p7"``: P6 = conv3x3/2(source), P7 = conv3x3/2(relu(P6)), where the source is C5
  (RetinaNet) or P5 (FCOS), chosen by ``top_block_in``;
* ``"none"``: no extra level.

The ALP paper's FCOS-MO uses P3..P7 (alp-fcos-mo, Sec. 3.4: "five FPN levels (named P3~P7)").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from omniseg.modeling.backbones.resnet import STAGE_NAMES, ResNet, build_resnet18, build_resnet50
from omniseg.modeling.norm import NormKind, build_norm

TopBlock = Literal["maxpool", "p6p7", "none"]


class ConvNorm(nn.Sequential):
    """Conv2d followed by a norm layer (bias only when the norm is "none")."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, norm: NormKind):
        conv = nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, bias=norm == "none")
        nn.init.kaiming_uniform_(conv.weight, a=1)  # "caffe2 xavier" fill used by FPN
        if conv.bias is not None:
            nn.init.zeros_(conv.bias)
        super().__init__(conv, build_norm(norm, out_channels))


class LastLevelP6P7(nn.Module):
    """P6 = conv3x3 stride 2 of the source, P7 = conv3x3 stride 2 of relu(P6)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.p6 = nn.Conv2d(in_channels, out_channels, 3, 2, 1)
        self.p7 = nn.Conv2d(out_channels, out_channels, 3, 2, 1)
        for conv in (self.p6, self.p7):
            nn.init.kaiming_uniform_(conv.weight, a=1)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        p6 = self.p6(x)
        return [p6, self.p7(F.relu(p6))]


class FPN(nn.Module):
    """Feature pyramid over a bottom-up network that returns a dict of C-features.

    Args:
        bottom_up: module returning ``{"c2": ..., "c5": ...}`` with ``out_channels`` and
            ``strides`` dict attributes (e.g. :class:`ResNet`).
        in_features: trunk features to build P-levels from, fine to coarse and consecutive
            (e.g. ("c3", "c4", "c5") for FCOS).
        out_channels: channels of every P-level (256 in the papers).
        norm: norm after each lateral / output conv ("none" as in the original FPN, "GN" ...).
        top_block: "maxpool", "p6p7" or "none" (see module docstring).
        top_block_in: source of P6 for "p6p7": "c5" (RetinaNet: last trunk feature) or "p5"
            (FCOS: last P-level).

    Attributes:
        out_features: names of the returned levels, fine to coarse ("p2", ..., "p7").
        out_channels: dict level -> channels (all equal ``out_channels``).
        strides: dict level -> stride w.r.t. the input.
    """

    def __init__(
        self,
        *,
        bottom_up: nn.Module,
        in_features: Sequence[str],
        out_channels: int = 256,
        norm: NormKind = "none",
        top_block: TopBlock = "none",
        top_block_in: Literal["c5", "p5"] = "p5",
    ):
        super().__init__()
        in_features = tuple(in_features)
        idx = [STAGE_NAMES.index(f) if f in STAGE_NAMES else -1 for f in in_features]
        if not in_features or -1 in idx or idx != list(range(idx[0], idx[0] + len(idx))):
            raise ValueError(f"in_features must be consecutive names from {STAGE_NAMES}, got {in_features}")
        missing = [f for f in in_features if f not in bottom_up.out_channels]
        if missing:
            raise ValueError(
                f"bottom_up does not return {missing}; it returns {list(bottom_up.out_channels)}"
            )
        if top_block not in ("maxpool", "p6p7", "none"):
            raise ValueError(f"top_block must be 'maxpool', 'p6p7' or 'none', got {top_block!r}")
        if top_block_in not in ("c5", "p5"):
            raise ValueError(f"top_block_in must be 'c5' or 'p5', got {top_block_in!r}")
        self.bottom_up = bottom_up
        self.in_features = in_features
        self.top_block_kind = top_block
        self.top_block_in = top_block_in

        self.lateral_convs = nn.ModuleList(
            ConvNorm(bottom_up.out_channels[f], out_channels, 1, 1, norm) for f in in_features
        )
        self.output_convs = nn.ModuleList(
            ConvNorm(out_channels, out_channels, 3, 1, norm) for _ in in_features
        )

        levels = [int(f[1:]) for f in in_features]
        self.out_features = [f"p{k}" for k in levels]
        self.strides = {f"p{k}": bottom_up.strides[f"c{k}"] for k in levels}
        last, last_stride = levels[-1], self.strides[f"p{levels[-1]}"]
        self.top_block: nn.Module | None = None
        if top_block == "p6p7":
            src_channels = bottom_up.out_channels[in_features[-1]] if top_block_in == "c5" else out_channels
            self.top_block = LastLevelP6P7(src_channels, out_channels)
            extra = 2
        else:
            extra = 1 if top_block == "maxpool" else 0
        for j in range(1, extra + 1):
            self.out_features.append(f"p{last + j}")
            self.strides[f"p{last + j}"] = last_stride * 2**j
        self.out_channels = {f: out_channels for f in self.out_features}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Compute the pyramid.

        Args:
            x: B x 3 x H x W images.

        Returns:
            dict "p{k}" -> B x out_channels x ceil(H / stride_k) x ceil(W / stride_k) (sizes follow
            the trunk's rounding), fine to coarse.
        """
        feats = self.bottom_up(x)
        inputs = [feats[f] for f in self.in_features]
        prev = self.lateral_convs[-1](inputs[-1])
        outs = [self.output_convs[-1](prev)]
        for i in range(len(inputs) - 2, -1, -1):
            lateral = self.lateral_convs[i](inputs[i])
            prev = lateral + F.interpolate(prev, size=lateral.shape[-2:], mode="nearest")
            outs.insert(0, self.output_convs[i](prev))
        if self.top_block_kind == "maxpool":
            outs.append(F.max_pool2d(outs[-1], kernel_size=1, stride=2))
        elif self.top_block is not None:
            src = inputs[-1] if self.top_block_in == "c5" else outs[-1]
            outs.extend(self.top_block(src))
        return dict(zip(self.out_features, outs))


def resnet_fpn(
    trunk_builder: Callable[..., ResNet],
    *,
    in_features: Sequence[str] = ("c2", "c3", "c4", "c5"),
    out_channels: int = 256,
    norm: NormKind = "FrozenBN",
    fpn_norm: NormKind = "none",
    freeze_at: int = 2,
    top_block: TopBlock = "maxpool",
    top_block_in: Literal["c5", "p5"] = "p5",
    width: int = 64,
) -> FPN:
    """A ResNet trunk + FPN; defaults give P2..P6 as in Mask R-CNN. ``norm`` is the trunk's norm."""
    trunk = trunk_builder(norm=norm, freeze_at=freeze_at, out_features=in_features, width=width)
    return FPN(
        bottom_up=trunk,
        in_features=in_features,
        out_channels=out_channels,
        norm=fpn_norm,
        top_block=top_block,
        top_block_in=top_block_in,
    )


def build_resnet18_fpn(**kwargs) -> FPN:
    """ResNet-18 + FPN (keyword arguments as :func:`resnet_fpn`)."""
    return resnet_fpn(build_resnet18, **kwargs)


def build_resnet50_fpn(**kwargs) -> FPN:
    """ResNet-50 + FPN (keyword arguments as :func:`resnet_fpn`)."""
    return resnet_fpn(build_resnet50, **kwargs)


def build_resnet50_fpn_p3p7(**kwargs) -> FPN:
    """ResNet-50 + FPN with P3..P7 (P6 from P5), the FCOS / FCOS-MO layout (alp-fcos-mo, Sec. 3.4)."""
    kwargs = {"in_features": ("c3", "c4", "c5"), "top_block": "p6p7", "top_block_in": "p5", **kwargs}
    return build_resnet50_fpn(**kwargs)


def build_resnet18_fpn_p3p7(**kwargs) -> FPN:
    """ResNet-18 + FPN with P3..P7 (P6 from P5), the FCOS layout at ResNet-18 cost."""
    kwargs = {"in_features": ("c3", "c4", "c5"), "top_block": "p6p7", "top_block_in": "p5", **kwargs}
    return build_resnet18_fpn(**kwargs)


BACKBONE_BUILDERS: dict[str, Callable[..., FPN]] = {
    "resnet18_fpn": build_resnet18_fpn,
    "resnet50_fpn": build_resnet50_fpn,
    "resnet18_fpn_p3p7": build_resnet18_fpn_p3p7,
    "resnet50_fpn_p3p7": build_resnet50_fpn_p3p7,
}
