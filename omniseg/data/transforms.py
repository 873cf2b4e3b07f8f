"""Augmentations applied consistently to a :class:`Sample`'s image, boxes and masks.

Every transform is a small dataclass called as ``t(sample, rng) -> sample`` with a
``np.random.Generator``: the same generator state gives the same result. Functional forms
(:func:`resize`, :func:`crop`, :func:`hflip`, :func:`quantize_box`) do the geometry.

Box conventions: XYXY pixels with the pixel-edge convention (a mask's tight box has
``x1 = last column + 1``, like :func:`omniseg.ops.rle.rle_to_box`). Rows without a box
(``has_box`` False) stay all-zero through every transform.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from omniseg.data.batch import Sample
from omniseg.ops.masks import masks_to_boxes


def _resize_masks(masks: Tensor, h: int, w: int) -> Tensor:
    if masks.shape[0] == 0:
        return torch.zeros(0, h, w, dtype=torch.uint8)
    return F.interpolate(masks[None].float(), size=(h, w), mode="nearest-exact")[0].to(torch.uint8)


def resize(sample: Sample, height: int, width: int) -> Sample:
    """Resize image (bilinear, antialiased when shrinking), masks (nearest) and boxes to H x W.

    A masked instance whose mask loses every pixel is dropped and counted in ``num_dropped``.
    """
    h, w = sample.size
    if (height, width) == (h, w):
        return sample
    if height < 1 or width < 1:
        raise ValueError(f"resize of image {sample.image_id!r} to {height}x{width}: size must be >= 1")
    img = F.interpolate(sample.image[None].float(), size=(height, width), mode="bilinear",
                        align_corners=False, antialias=True)[0]
    t = sample.targets
    scale = torch.tensor([width / w, height / h, width / w, height / h])
    boxes = torch.where(t.has_box[:, None], t.boxes * scale, torch.zeros_like(t.boxes))
    masks = _resize_masks(t.masks, height, width)
    # a masked instance shrunk to no pixel is gone, like one cropped out (counted, not kept empty)
    vanished = t.has_mask.clone()
    if len(t):
        vanished &= (t.masks.flatten(1) != 0).any(dim=1) & ~(masks.flatten(1) != 0).any(dim=1)
    targets = replace(t, boxes=boxes, masks=masks).select(~vanished)
    return replace(sample, image=img.round().clamp(0, 255).to(torch.uint8), targets=targets,
                   num_dropped=sample.num_dropped + int(vanished.sum()))


def hflip(sample: Sample) -> Sample:
    """Mirror left-right: x -> W - x for boxes (x0 and x1 swap roles)."""
    w = sample.size[1]
    t = sample.targets
    flipped = torch.stack([w - t.boxes[:, 2], t.boxes[:, 1], w - t.boxes[:, 0], t.boxes[:, 3]], dim=1)
    boxes = torch.where(t.has_box[:, None], flipped, torch.zeros_like(t.boxes))
    return replace(sample, image=sample.image.flip(-1), targets=replace(t, boxes=boxes, masks=t.masks.flip(-1)))


def crop(sample: Sample, top: int, left: int, height: int, width: int) -> Sample:
    """Crop the window [top, top+height) x [left, left+width) (clamped to the image).

    Instances cut out completely are dropped and counted in ``sample.num_dropped``: a
    masked instance whose (previously non-empty) mask leaves no pixel, a mask-less boxed
    instance whose clipped box has no area. Instances with neither box nor mask are kept.
    A box that the window cuts is recomputed as the tight box of the cropped mask when a
    mask exists, else clipped to the window; boxes fully inside are only translated.
    """
    h, w = sample.size
    y0, x0 = max(0, int(top)), max(0, int(left))
    y1, x1 = min(h, int(top) + int(height)), min(w, int(left) + int(width))
    if y1 <= y0 or x1 <= x0:
        raise ValueError(f"crop of image {sample.image_id!r}: empty window {top, left, height, width} in {h}x{w}")
    t = sample.targets
    masks = t.masks[:, y0:y1, x0:x1]
    ch, cw = y1 - y0, x1 - x0
    shifted = t.boxes - torch.tensor([x0, y0, x0, y0], dtype=torch.float32)
    clipped = torch.stack([shifted[:, 0].clamp(0, cw), shifted[:, 1].clamp(0, ch),
                           shifted[:, 2].clamp(0, cw), shifted[:, 3].clamp(0, ch)], dim=1)
    inside = (shifted == clipped).all(dim=1)
    area_before = t.masks.flatten(1).sum(dim=1) if len(t) else torch.zeros(0)
    area_after = masks.flatten(1).sum(dim=1) if len(t) else torch.zeros(0)
    from_mask = masks_to_boxes(masks)
    boxes = torch.where((t.has_mask & ~inside & (area_after > 0))[:, None], from_mask, clipped)
    boxes = torch.where(t.has_box[:, None], boxes, torch.zeros_like(boxes))
    box_area = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
    lost_mask = t.has_mask & (area_before > 0) & (area_after == 0)
    lost_box = ~t.has_mask & t.has_box & (box_area <= 0)
    keep = ~(lost_mask | lost_box)
    targets = replace(t, boxes=boxes, masks=masks).select(keep)
    return replace(sample, image=sample.image[:, y0:y1, x0:x1].contiguous(), targets=targets,
                   num_dropped=sample.num_dropped + int((~keep).sum()))


def quantize_box(box: Sequence[float], grid: float, width: int, height: int) -> tuple[float, float, float, float]:
    """Snap a box outwards to a grid of ``grid``-pixel square cells, clipped to the image.

    ALP paper (alp-fcos-mo, Sec. 3.3, "Box quantization"): x0, y0 floor and x1, y1 ceil to the
    grid, so the box only grows; clipping to [0, W] x [0, H] keeps that true for boxes inside
    the image.
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    if grid <= 0:
        raise ValueError(f"quantize_box: grid must be > 0, got {grid}")
    return (max(0.0, math.floor(x0 / grid) * grid), max(0.0, math.floor(y0 / grid) * grid),
            max(x1, min(float(width), math.ceil(x1 / grid) * grid)),
            max(y1, min(float(height), math.ceil(y1 / grid) * grid)))


@dataclass
class QuantizeApproxBoxes:
    """Box quantization for APPROXIMATE boxes only (ALPs), alp-fcos-mo Sec. 3.3, "Box quantization".

    The grid has square cells of ``Q * L / 256`` pixels, L the image's shorter edge (at the
    time the transform runs: put it after resizing/cropping), Q drawn per instance from
    ``choices`` where None means no quantization (the paper's phi). Exact boxes are untouched.
    """

    choices: tuple[int | None, ...] = (None, 8, 16, 32)

    def cell(self, rng: np.random.Generator, width: int, height: int) -> float | None:
        """One draw of Q: the grid's cell side in pixels for a ``width`` x ``height`` image, None for phi."""
        q = self.choices[int(rng.integers(len(self.choices)))]
        return None if q is None else q * min(height, width) / 256.0

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        t = sample.targets
        h, w = sample.size
        boxes = t.boxes.clone()
        for i in range(len(t)):
            cell = self.cell(rng, w, h)  # drawn for every instance (the random stream does not depend on the labels)
            if cell is None or not bool(t.has_box[i]) or bool(t.box_exact[i]):
                continue
            boxes[i] = torch.tensor(quantize_box(boxes[i].tolist(), cell, w, h))
        return replace(sample, targets=replace(t, boxes=boxes))


def _short_edge_size(h: int, w: int, short: int, max_size: int) -> tuple[int, int]:
    scale = short / min(h, w)
    if max_size > 0 and max(h, w) * scale > max_size:
        scale = max_size / max(h, w)
    return max(1, int(round(h * scale))), max(1, int(round(w * scale)))


@dataclass
class ResizeShortestEdge:
    """Resize so the shorter side is one of ``short_sizes`` (random) and the longer <= ``max_size``."""

    short_sizes: tuple[int, ...] = (800,)
    max_size: int = 1333

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        short = self.short_sizes[int(rng.integers(len(self.short_sizes)))] if len(self.short_sizes) > 1 \
            else self.short_sizes[0]
        return resize(sample, *_short_edge_size(*sample.size, short, self.max_size))


@dataclass
class LargeScaleJitter:
    """Large-scale jitter (LSJ; the ALP paper, Sec. 3.4, uses scales (0.5, 2.0) and a 1024 crop; the
    Mask2Former recipe that VLOSS builds on uses (0.1, 2.0)): rescale so the image fits ``s * output_size`` (s uniform in
    [min_scale, max_scale]), then take a random ``output_size`` crop where the image is larger.
    Smaller results are padded by :func:`omniseg.data.batch.collate` (``pad_size``).
    """

    output_size: int = 1024
    min_scale: float = 0.1
    max_scale: float = 2.0

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        h, w = sample.size
        s = float(rng.uniform(self.min_scale, self.max_scale))
        f = s * self.output_size / max(h, w)
        nh, nw = max(1, int(round(h * f))), max(1, int(round(w * f)))
        ch, cw = min(nh, self.output_size), min(nw, self.output_size)
        top = int(rng.integers(nh - ch + 1))
        left = int(rng.integers(nw - cw + 1))
        if (ch, cw) == (nh, nw):
            return resize(sample, nh, nw)
        # Crop the window's preimage first, then resize only it: the same geometry up to
        # sub-pixel rounding of the window edges, without resizing the whole (up to 2x) image.
        y0, x0 = min(h - 1, int(math.floor(top / f))), min(w - 1, int(math.floor(left / f)))
        y1, x1 = max(y0 + 1, min(h, int(math.ceil((top + ch) / f)))), max(x0 + 1, min(w, int(math.ceil((left + cw) / f))))
        return resize(crop(sample, y0, x0, y1 - y0, x1 - x0), ch, cw)


@dataclass
class RandomHFlip:
    p: float = 0.5

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        return hflip(sample) if rng.random() < self.p else sample


@dataclass
class ColorJitter:
    """Brightness, contrast and saturation factors drawn uniformly from [1 - x, 1 + x] (image only)."""

    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        b, c, s = (float(rng.uniform(1 - x, 1 + x)) for x in (self.brightness, self.contrast, self.saturation))
        img = sample.image.float() * b
        gray = (0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2])[None]
        img = (img - gray.mean()) * c + gray.mean()
        gray = 0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2]
        img = (img - gray[None]) * s + gray[None]
        return replace(sample, image=img.round().clamp(0, 255).to(torch.uint8))


@dataclass
class Compose:
    """Apply transforms in order with one shared generator."""

    transforms: Sequence[object]

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        for t in self.transforms:
            sample = t(sample, rng)  # type: ignore[operator]
        return sample


def build_train_transforms(
    output_size: int = 1024, min_scale: float = 0.1, max_scale: float = 2.0, flip: bool = True,
    color: bool = False, quantize: bool = True,
) -> Compose:
    """LSJ -> flip -> (color jitter) -> box quantization of approximate boxes."""
    ts: list[object] = [LargeScaleJitter(output_size, min_scale, max_scale)]
    if flip:
        ts.append(RandomHFlip())
    if color:
        ts.append(ColorJitter())
    if quantize:
        ts.append(QuantizeApproxBoxes())
    return Compose(ts)


def build_test_transforms(short: int = 800, max_size: int = 1333) -> Compose:
    return Compose([ResizeShortestEdge((short,), max_size)])
