"""FCOS training-target assignment: which ground-truth box every feature location regresses to.

FCOS-MO trains on "center-based matches with GT boxes" (alp-fcos-mo, Sec. 3.2 and Fig. 3):
a location is positive for a box when it lies close to the box CENTER, which is what makes
the detector tolerant of the imprecise edges of ALP boxes. The rules are the ones of FCOS
(Tian et al., 2019) with its later "center sampling" improvement:

* locations: the center of every cell of level l, ``(j * s + s // 2, i * s + s // 2)`` for
  stride s (the image pixel the cell's receptive field is centered on);
* center sampling: a location is a candidate for a box when it lies inside the square of
  half-side ``radius * s`` around the box center, clipped to the box (radius = 1.5);
* scale ranges: level l only regresses boxes whose largest distance max(l, t, r, b) from the
  location lies in ``[lo_l, hi_l]`` ((0, 64), (64, 128), (128, 256), (256, 512), (512, inf) for
  P3..P7, both ends inclusive as in AdelaiDet's FCOS);
* ambiguity: a location that is a candidate for several boxes takes the one of smallest area
  (ties: the lower box index).

Everything is a pure tensor function; the model decides which boxes enter (e.g. exact and
approximate, but not crowd regions) and which losses a match feeds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from omniseg.ops.boxes import box_area, points_to_box_distances

#: FCOS scale ranges of P3..P7 (pixels of max(l, t, r, b))
DEFAULT_SCALE_RANGES: tuple[tuple[float, float], ...] = (
    (0.0, 64.0), (64.0, 128.0), (128.0, 256.0), (256.0, 512.0), (512.0, math.inf),
)


@dataclass
class FCOSTargetConfig:
    """Assignment hyper-parameters.

    Attributes:
        center_sampling_radius: half-side of the center region in strides (1.5); <= 0 turns
            center sampling off (every location inside the box is a candidate, the original FCOS).
        scale_ranges: per level (lo, hi) of max(l, t, r, b), fine to coarse.
    """

    center_sampling_radius: float = 1.5
    scale_ranges: tuple[tuple[float, float], ...] = DEFAULT_SCALE_RANGES


def level_locations(height: int, width: int, stride: int, device: torch.device | str | None = None) -> Tensor:
    """Image-pixel coordinates of the cells of one H x W feature map, row-major.

    Args:
        height, width: feature-map size.
        stride: the level's stride s.

    Returns:
        (H * W) x 2 float (x, y) = (j * s + s // 2, i * s + s // 2), in the order of
        ``feature.flatten(2)`` (row i, column j).
    """
    xs = torch.arange(width, dtype=torch.float32, device=device) * stride + stride // 2
    ys = torch.arange(height, dtype=torch.float32, device=device) * stride + stride // 2
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1)


def all_level_locations(
    sizes: Sequence[tuple[int, int]],
    strides: Sequence[int],
    scale_ranges: Sequence[tuple[float, float]],
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor, Tensor, list[int]]:
    """Locations of every level, concatenated fine to coarse.

    Args:
        sizes: L feature sizes (H_l, W_l).
        strides: L strides.
        scale_ranges: L (lo, hi) ranges.

    Returns:
        points P x 2, point_strides P, point_ranges P x 2, and the L counts H_l * W_l
        (P = their sum).
    """
    if not len(sizes) == len(strides) == len(scale_ranges):
        raise ValueError(f"got {len(sizes)} sizes, {len(strides)} strides and {len(scale_ranges)} scale ranges")
    pts, st, rg, counts = [], [], [], []
    for (h, w), s, (lo, hi) in zip(sizes, strides, scale_ranges):
        p = level_locations(h, w, s, device)
        pts.append(p)
        st.append(torch.full((p.shape[0],), float(s), device=device))
        rg.append(torch.tensor([[lo, hi]], dtype=torch.float32, device=device).expand(p.shape[0], 2))
        counts.append(int(p.shape[0]))
    return torch.cat(pts), torch.cat(st), torch.cat(rg), counts


def assign_fcos_targets(
    points: Tensor,
    point_strides: Tensor,
    point_ranges: Tensor,
    boxes: Tensor,
    center_sampling_radius: float = 1.5,
) -> tuple[Tensor, Tensor]:
    """Match every location to at most one box (see the module docstring for the rules).

    Args:
        points: P x 2 (x, y) image pixels.
        point_strides: P strides of the locations' levels.
        point_ranges: P x 2 (lo, hi) scale range of the locations' levels.
        boxes: M x 4 XYXY boxes that may receive locations.
        center_sampling_radius: radius in strides; <= 0: the whole box.

    Returns:
        matched: P long box index in [0, M), or -1 for background.
        ltrb: P x 4 distances (l, t, r, b) to the matched box; 0 for background.
    """
    p = points.shape[0]
    m = boxes.shape[0]
    if m == 0 or p == 0:
        return (torch.full((p,), -1, dtype=torch.long, device=points.device),
                points.new_zeros(p, 4))
    boxes = boxes.to(points.dtype)
    ltrb = points_to_box_distances(points, boxes)  # P x M x 4
    if center_sampling_radius > 0:
        cx = (boxes[:, 0] + boxes[:, 2]) / 2
        cy = (boxes[:, 1] + boxes[:, 3]) / 2
        r = point_strides[:, None].to(points.dtype) * center_sampling_radius  # P x 1
        # the center square, clipped to the box
        region = torch.stack([
            torch.maximum(cx[None] - r, boxes[None, :, 0]), torch.maximum(cy[None] - r, boxes[None, :, 1]),
            torch.minimum(cx[None] + r, boxes[None, :, 2]), torch.minimum(cy[None] + r, boxes[None, :, 3]),
        ], dim=-1)  # P x M x 4
        x, y = points[:, 0][:, None], points[:, 1][:, None]
        inside = torch.stack([x - region[..., 0], y - region[..., 1], region[..., 2] - x, region[..., 3] - y],
                             dim=-1).min(dim=-1).values > 0
    else:
        inside = ltrb.min(dim=-1).values > 0
    reach = ltrb.max(dim=-1).values
    in_range = (reach >= point_ranges[:, 0:1]) & (reach <= point_ranges[:, 1:2])
    area = box_area(boxes)[None].expand(p, m)
    area = torch.where(inside & in_range, area, torch.full_like(area, math.inf))
    best_area, matched = area.min(dim=1)  # min returns the first index on ties
    matched = torch.where(torch.isfinite(best_area), matched, torch.full_like(matched, -1))
    pos = matched >= 0
    out = torch.where(pos[:, None], ltrb[torch.arange(p, device=points.device), matched.clamp(min=0)],
                      torch.zeros_like(ltrb[:, 0]))
    return matched, out
