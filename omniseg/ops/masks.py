"""Mask utilities: paste RoI masks into the image, masks <-> boxes, bitmask <-> RLE batches,
RoI mask targets and point sampling.

Pasting follows Mask R-CNN (He et al.; Mask^X R-CNN Sec. 3.4 "resized to the actual bounding box
size"): an M x M soft mask covers its box exactly; the image pixel with center (x + 0.5, y + 0.5)
reads the mask bilinearly at continuous mask coordinate u = (x + 0.5 - x1) / (x2 - x1) * M - 0.5
(zero outside the mask), and the result is thresholded at 0.5.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from omniseg.ops.rle import RLE, rle_decode, rle_encode
from omniseg.ops.roi_align import roi_align


def paste_masks_in_image(
    masks: Tensor, boxes: Tensor, image_size: tuple[int, int], threshold: float | None = 0.5
) -> Tensor:
    """Paste per-box soft masks into full-image masks.

    Args:
        masks: N x M x M probabilities (or N x Mh x Mw).
        boxes: N x 4 XYXY in image pixels.
        image_size: (H, W).
        threshold: foreground where the pasted value is ``>= threshold`` (as detectron2); None keeps
            the soft values.

    Returns:
        N x H x W bool (or float when ``threshold`` is None).
    """
    h, w = image_size
    n = masks.shape[0]
    if boxes.shape != (n, 4):
        raise ValueError(f"paste_masks_in_image: {n} masks but boxes of shape {tuple(boxes.shape)}")
    dtype = torch.bool if threshold is not None else masks.dtype
    out = torch.zeros(n, h, w, dtype=dtype, device=masks.device)
    if n == 0 or h == 0 or w == 0:
        return out
    m = masks.float()[:, None]
    b = boxes.detach().float().cpu()
    for i in range(n):
        x1, y1, x2, y2 = b[i].tolist()
        if not (x2 > x1 and y2 > y1):  # empty or NaN box: nothing to paste
            continue
        # Only pixels whose centers can read a nonzero value: the box grown by one mask cell.
        gx0 = max(int(np.floor(x1 - (x2 - x1) / m.shape[-1])) - 1, 0)
        gy0 = max(int(np.floor(y1 - (y2 - y1) / m.shape[-2])) - 1, 0)
        gx1 = min(int(np.ceil(x2 + (x2 - x1) / m.shape[-1])) + 1, w)
        gy1 = min(int(np.ceil(y2 + (y2 - y1) / m.shape[-2])) + 1, h)
        if gx1 <= gx0 or gy1 <= gy0:
            continue
        xs = (torch.arange(gx0, gx1, device=m.device, dtype=torch.float32) + 0.5 - x1) / (x2 - x1) * 2 - 1
        ys = (torch.arange(gy0, gy1, device=m.device, dtype=torch.float32) + 0.5 - y1) / (y2 - y1) * 2 - 1
        grid = torch.stack(torch.broadcast_tensors(xs[None, :], ys[:, None]), dim=-1)[None]
        # align_corners=False: normalized -1..1 spans the mask's outer edges, i.e. the box edges.
        soft = F.grid_sample(m[i : i + 1], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0, 0]
        out[i, gy0:gy1, gx0:gx1] = soft >= threshold if threshold is not None else soft.to(dtype)
    return out


def masks_to_boxes(masks: Tensor) -> Tensor:
    """Tight XYXY boxes of binary masks (pixel-edge convention, like ``rle_to_box``: x2 = last col + 1).

    Args:
        masks: N x H x W (nonzero = foreground).

    Returns:
        N x 4 float boxes; an empty mask gives (0, 0, 0, 0).
    """
    n, h, w = masks.shape
    fg = masks != 0
    cols = fg.any(dim=1)  # N x W
    rows = fg.any(dim=2)  # N x H
    xr = torch.arange(w, device=masks.device)
    yr = torch.arange(h, device=masks.device)
    x1 = torch.where(cols, xr, w).amin(dim=1) if w else torch.zeros(n, dtype=torch.long, device=masks.device)
    x2 = torch.where(cols, xr + 1, 0).amax(dim=1) if w else torch.zeros_like(x1)
    y1 = torch.where(rows, yr, h).amin(dim=1) if h else torch.zeros_like(x1)
    y2 = torch.where(rows, yr + 1, 0).amax(dim=1) if h else torch.zeros_like(x1)
    empty = ~cols.any(dim=1) if w else torch.ones(n, dtype=torch.bool, device=masks.device)
    boxes = torch.stack([x1, y1, x2, y2], dim=1).float()
    return torch.where(empty[:, None], torch.zeros_like(boxes), boxes)


def bitmasks_to_rles(masks: Tensor | np.ndarray) -> list[RLE]:
    """N x H x W binary masks -> N compressed RLE dicts (text counts), via :func:`rle_encode`."""
    arr = masks.detach().cpu().numpy() if isinstance(masks, Tensor) else np.asarray(masks)
    if arr.ndim != 3:
        raise ValueError(f"bitmasks_to_rles expects N x H x W, got shape {arr.shape}")
    return [rle_encode(m) for m in arr]


def rles_to_bitmasks(rles: Sequence[RLE], image_size: tuple[int, int] | None = None) -> Tensor:
    """N RLE dicts (any form) -> N x H x W bool tensor.

    Args:
        rles: RLEs, all of the same size.
        image_size: (H, W); required when ``rles`` is empty, checked otherwise.

    Returns:
        N x H x W bool.
    """
    if len(rles) == 0:
        if image_size is None:
            raise ValueError("rles_to_bitmasks: image_size is needed for an empty list")
        return torch.zeros(0, *image_size, dtype=torch.bool)
    decoded = []
    for i, r in enumerate(rles):
        m = rle_decode(r)
        size = image_size if image_size is not None else decoded[0].shape if decoded else m.shape
        if tuple(m.shape) != tuple(size):
            raise ValueError(f"rles_to_bitmasks: RLE {i} has size {list(m.shape)}, expected {list(size)}")
        decoded.append(m)
    return torch.from_numpy(np.stack(decoded)).bool()


def roi_mask_targets(masks: Tensor, boxes: Tensor, size: int | tuple[int, int]) -> Tensor:
    """Crop-and-resize full-image masks into their boxes: the M x M Mask R-CNN training targets.

    Uses RoIAlign (aligned=True, adaptive sampling) on each instance's own mask, as detectron2's
    ``BitMasks.crop_and_resize`` does.

    Args:
        masks: N x H x W binary (or soft) masks.
        boxes: N x 4 XYXY (e.g. the matched proposals).
        size: M or (Mh, Mw).

    Returns:
        N x Mh x Mw float in [0, 1] (threshold at 0.5 for hard targets).
    """
    n = masks.shape[0]
    rois = torch.cat([torch.arange(n, device=masks.device, dtype=torch.float32)[:, None], boxes.float()], dim=1)
    return roi_align(masks[:, None].float(), rois, size, 1.0, 0, True, impl="torch")[:, 0]


def point_sample(input: Tensor, coords: Tensor, align_corners: bool = False) -> Tensor:
    """Bilinearly read maps at normalized points (Mask2Former / PointRend ``point_sample``).

    Args:
        input: N x C x H x W.
        coords: N x P x 2 points (x, y) in [0, 1] x [0, 1] of the map's extent.
        align_corners: as in ``grid_sample`` (False: 0 and 1 are the outer pixel edges).

    Returns:
        N x C x P.
    """
    grid = (2.0 * coords - 1.0).to(input.dtype)[:, :, None, :]
    return F.grid_sample(input, grid, mode="bilinear", padding_mode="zeros", align_corners=align_corners)[..., 0]
