"""ResNet-18/34/50/101 backbones returning C2..C5, with torchvision state-dict names.

Module names follow torchvision's ``resnet*`` (``conv1``, ``bn1``, ``layer1.0.conv1``,
``layer2.0.downsample.0`` / ``.1`` ...) so an ImageNet ``.pth`` saved from torchvision loads
after :func:`omniseg.modeling.weights.resnet_filter_fn` drops the ``fc`` classifier. As in
torchvision (ResNet v1.5) the stride of a bottleneck block sits on its 3x3 conv. The norm
layers keep the ``bn`` names whatever their kind (BN / FrozenBN / GN / SyncBN).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from omniseg.modeling.norm import NormKind, build_norm, freeze_batchnorm

STAGE_NAMES: tuple[str, ...] = ("c2", "c3", "c4", "c5")


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection (ResNet-18/34)."""

    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int, norm: NormKind):
        super().__init__()
        out = channels * self.expansion
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn1 = build_norm(norm, channels)
        self.conv2 = nn.Conv2d(channels, out, 3, 1, 1, bias=False)
        self.bn2 = build_norm(norm, out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_channels, out, stride, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        y += identity  # in place: the norm's backward needs its input, not its output
        return self.relu(y)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand with a residual connection (ResNet-50/101)."""

    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int, norm: NormKind):
        super().__init__()
        out = channels * self.expansion
        self.conv1 = nn.Conv2d(in_channels, channels, 1, bias=False)
        self.bn1 = build_norm(norm, channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride, 1, bias=False)
        self.bn2 = build_norm(norm, channels)
        self.conv3 = nn.Conv2d(channels, out, 1, bias=False)
        self.bn3 = build_norm(norm, out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_channels, out, stride, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        y += identity  # in place: the norm's backward needs its input, not its output
        return self.relu(y)


def _shortcut(in_channels: int, out_channels: int, stride: int, norm: NormKind) -> nn.Sequential | None:
    if stride == 1 and in_channels == out_channels:
        return None
    # torchvision names: downsample.0 (1x1 conv), downsample.1 (norm).
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), build_norm(norm, out_channels)
    )


class ResNet(nn.Module):
    """ResNet trunk (no classifier) returning a dict of stage outputs.

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        layers: blocks per stage, e.g. (2, 2, 2, 2) for ResNet-18.
        norm: normalization kind for every conv (see :func:`build_norm`).
        freeze_at: 0 trains everything; 1 freezes the stem (conv1, bn1); k >= 2 also freezes
            stages layer1 .. layer{k-1} (detectron2's convention; 2 is the usual fine-tuning
            choice). Frozen parts get ``requires_grad=False`` and their BatchNorm layers
            become :class:`FrozenBatchNorm2d`.
        out_features: which of "c2".."c5" to return; stages after the last requested one
            are not built.
        width: channels of the stem and first stage (64 in the paper; small for tests).
        in_channels: image channels.

    Attributes:
        out_channels: dict name -> channels of each returned feature.
        strides: dict name -> stride w.r.t. the input (c2: 4 ... c5: 32).
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: Sequence[int],
        *,
        norm: NormKind = "FrozenBN",
        freeze_at: int = 0,
        out_features: Sequence[str] = STAGE_NAMES,
        width: int = 64,
        in_channels: int = 3,
    ):
        super().__init__()
        if len(layers) != 4:
            raise ValueError(f"layers must list 4 stages, got {list(layers)}")
        unknown = [f for f in out_features if f not in STAGE_NAMES]
        if unknown or not out_features:
            raise ValueError(f"out_features must be a non-empty subset of {STAGE_NAMES}, got {out_features}")
        if not 0 <= freeze_at <= 5:
            raise ValueError(f"freeze_at must be in 0..5, got {freeze_at}")
        self.out_features = tuple(f for f in STAGE_NAMES if f in out_features)
        num_stages = max(STAGE_NAMES.index(f) for f in self.out_features) + 1

        self.conv1 = nn.Conv2d(in_channels, width, 7, 2, 3, bias=False)
        self.bn1 = build_norm(norm, width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)

        self.out_channels: dict[str, int] = {}
        self.strides: dict[str, int] = {}
        channels_in = width
        for i in range(num_stages):
            channels = width * 2**i
            stride = 1 if i == 0 else 2
            blocks = [block(channels_in, channels, stride, norm)]
            channels_in = channels * block.expansion
            blocks += [block(channels_in, channels, 1, norm) for _ in range(layers[i] - 1)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            self.out_channels[STAGE_NAMES[i]] = channels_in
            self.strides[STAGE_NAMES[i]] = 4 * 2**i
        self.num_stages = num_stages
        self.out_channels = {k: v for k, v in self.out_channels.items() if k in self.out_features}
        self.strides = {k: v for k, v in self.strides.items() if k in self.out_features}
        self._init_weights()
        self.freeze(freeze_at)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def freeze(self, freeze_at: int) -> None:
        """Freeze the stem (freeze_at >= 1) and stages layer1..layer{freeze_at - 1}."""
        self.freeze_at = freeze_at
        parts: list[str] = []
        if freeze_at >= 1:
            parts += ["conv1", "bn1"]
        parts += [f"layer{i}" for i in range(1, min(freeze_at, self.num_stages + 1))]
        for name in parts:
            module = getattr(self, name)
            for p in module.parameters():
                p.requires_grad_(False)
            setattr(self, name, freeze_batchnorm(module))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run the trunk.

        Args:
            x: B x 3 x H x W images (normalized).

        Returns:
            dict of requested features, e.g. "c2": B x C2 x H/4 x W/4 ... "c5": B x C5 x H/32 x W/32
            (sizes rounded up at each stride-2 step).
        """
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        out: dict[str, torch.Tensor] = {}
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
            if STAGE_NAMES[i] in self.out_features:
                out[STAGE_NAMES[i]] = x
        return out


def build_resnet18(**kwargs) -> ResNet:
    """ResNet-18 trunk; keyword arguments as for :class:`ResNet`."""
    return ResNet(BasicBlock, (2, 2, 2, 2), **kwargs)


def build_resnet34(**kwargs) -> ResNet:
    """ResNet-34 trunk; keyword arguments as for :class:`ResNet`."""
    return ResNet(BasicBlock, (3, 4, 6, 3), **kwargs)


def build_resnet50(**kwargs) -> ResNet:
    """ResNet-50 trunk; keyword arguments as for :class:`ResNet`."""
    return ResNet(Bottleneck, (3, 4, 6, 3), **kwargs)


def build_resnet101(**kwargs) -> ResNet:
    """ResNet-101 trunk; keyword arguments as for :class:`ResNet`."""
    return ResNet(Bottleneck, (3, 4, 23, 3), **kwargs)
