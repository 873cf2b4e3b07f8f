"""Anchor boxes for a region proposal network on FPN levels (Ren et al., Faster R-CNN; Lin et al., FPN).

One size per level (32, 64, 128, 256, 512 pixels on P2..P6 with strides 4..64, FPN Sec. 4.1) and
three aspect ratios (0.5, 1, 2, ratio = height / width). A cell anchor of size s and ratio r has
area s^2, width sqrt(s^2 / r) and height r * width, centred on the origin; it is shifted to every
feature-map location ``(x * stride + offset * stride, y * stride + offset * stride)``.

Anchor order inside a level is (y, x, a): location-major, anchor-minor, which is the order of an
RPN head output ``B x A x H x W`` permuted to ``B x H x W x A`` and flattened.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn


def cell_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float]) -> Tensor:
    """Anchors of one level centred on (0, 0).

    Args:
        sizes: S anchor sizes (sqrt of the area) in pixels.
        aspect_ratios: R ratios height / width.

    Returns:
        (S * R) x 4 XYXY float32, size-major (all ratios of sizes[0] first).
    """
    out = []
    for size in sizes:
        area = float(size) ** 2
        for ratio in aspect_ratios:
            if size <= 0 or ratio <= 0:
                raise ValueError(f"anchor sizes and aspect ratios must be > 0, got {size}, {ratio}")
            w = math.sqrt(area / ratio)
            h = ratio * w
            out.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
    return torch.tensor(out, dtype=torch.float32).reshape(-1, 4)


def grid_anchors(cell: Tensor, stride: int, height: int, width: int, offset: float = 0.0) -> Tensor:
    """Shift cell anchors to every location of an H x W feature map.

    Args:
        cell: A x 4 cell anchors (see :func:`cell_anchors`).
        stride: feature-map stride in pixels.
        height, width: feature-map size.
        offset: location of the anchor centre inside a cell, in units of the stride (0: top-left
            corner, detectron2's default; 0.5: cell centre).

    Returns:
        (H * W * A) x 4 XYXY anchors in (y, x, a) order.
    """
    dev = cell.device
    xs = (torch.arange(width, dtype=torch.float32, device=dev) + offset) * stride
    ys = (torch.arange(height, dtype=torch.float32, device=dev) + offset) * stride
    sy, sx = torch.meshgrid(ys, xs, indexing="ij")
    shifts = torch.stack([sx, sy, sx, sy], dim=-1).reshape(-1, 1, 4)
    return (shifts + cell.to(torch.float32)[None]).reshape(-1, 4)


@dataclass
class AnchorConfig:
    """Anchor layout.

    Attributes:
        sizes: one tuple of sizes per level (P2..P6: 32..512, FPN Sec. 4.1).
        aspect_ratios: ratios height / width shared by all levels.
        strides: stride of each level.
        offset: anchor centre inside a cell, in strides (see :func:`grid_anchors`).
    """

    sizes: tuple[tuple[float, ...], ...] = ((32.0,), (64.0,), (128.0,), (256.0,), (512.0,))
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    strides: tuple[int, ...] = (4, 8, 16, 32, 64)
    offset: float = 0.0


class AnchorGenerator(nn.Module):
    """Anchors for every FPN level of a batch (all images share the padded size).

    Args:
        cfg: :class:`AnchorConfig`.
    """

    def __init__(self, cfg: AnchorConfig | None = None):
        super().__init__()
        cfg = cfg or AnchorConfig()
        if len(cfg.sizes) != len(cfg.strides):
            raise ValueError(f"got {len(cfg.sizes)} size tuples for {len(cfg.strides)} strides")
        counts = {len(s) for s in cfg.sizes}
        if len(counts) != 1:
            raise ValueError(f"every level needs the same number of sizes (one shared RPN head), got {cfg.sizes}")
        self.cfg = cfg
        self.strides = tuple(int(s) for s in cfg.strides)
        for i, sizes in enumerate(cfg.sizes):
            self.register_buffer(f"cell_{i}", cell_anchors(sizes, cfg.aspect_ratios), persistent=False)
        self._cache: dict[tuple, list[Tensor]] = {}

    @property
    def num_anchors_per_location(self) -> int:
        return len(self.cfg.sizes[0]) * len(self.cfg.aspect_ratios)

    def cell(self, level: int) -> Tensor:
        """A x 4 cell anchors of level index ``level`` (0 = finest)."""
        return getattr(self, f"cell_{level}")

    def forward(self, feature_sizes: Sequence[tuple[int, int]]) -> list[Tensor]:
        """Anchors of each level.

        Args:
            feature_sizes: L (height, width) of the feature maps, finest first.

        Returns:
            L tensors, (H_l * W_l * A) x 4 XYXY in image pixels, (y, x, a) order.
        """
        if len(feature_sizes) != len(self.strides):
            raise ValueError(f"got {len(feature_sizes)} feature maps for {len(self.strides)} anchor levels")
        key = (tuple((int(h), int(w)) for h, w in feature_sizes), str(self.cell(0).device))
        if key not in self._cache:
            if len(self._cache) > 16:
                self._cache.clear()
            self._cache[key] = [
                grid_anchors(self.cell(i), s, int(h), int(w), self.cfg.offset)
                for i, ((h, w), s) in enumerate(zip(feature_sizes, self.strides))
            ]
        return self._cache[key]
