"""RoIAlign (He et al., Mask R-CNN) in plain PyTorch, plus FPN multi-level pooling.

Semantics follow torchvision / detectron2 ``ROIAlign`` exactly:

* ``aligned=True`` shifts box corners by -0.5 pixel so that a box [x1, x2) maps onto the pixel
  centers it covers (aligned=False keeps the legacy Detectron behaviour, with roi size >= 1);
* each of the oh x ow bins averages gh x gw bilinear samples at the sub-bin centers, where
  gh = sampling_ratio if > 0, else ceil(roi_h / oh) chosen per RoI (adaptive);
* a sample with y < -1 or y > H (or x < -1 or x > W) is 0; otherwise coordinates are clamped
  into the map.

Implementation: bilinear sampling is separable, so for one RoI the output is
``Ay @ F_crop @ Ax^T`` where Ay (oh x h) / Ax (ow x w) hold the summed interpolation weights of
the samples over the rows / columns of the crop of the feature map that the RoI touches. RoIs are
sorted by crop size and processed in chunks whose gathered crops stay under a memory budget.
The op is differentiable w.r.t. the features (not the boxes, like torchvision).

NaN note: a NaN anywhere in a RoI's crop (the rows/columns its samples touch) makes that RoI's
output NaN in that channel, which is stricter than a per-sample gather. A box with a NaN or inf
coordinate gives an all-NaN output for that RoI (other RoIs are unaffected).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from types import ModuleType

import torch
from torch import Tensor

from omniseg.ops.boxes import box_area

_CHUNK_ELEMENTS = 1 << 23  # budget for gathered crops per chunk (elements)


@functools.lru_cache(maxsize=1)
def torchvision_ops() -> ModuleType | None:
    """``torchvision.ops`` when torchvision and its compiled ops load, else None."""
    try:
        import torchvision.ops as tv_ops

        _ = torch.ops.torchvision.roi_align  # raises if the compiled library is missing
        return tv_ops
    except (ImportError, RuntimeError, AttributeError, OSError):
        return None


def resolve_impl(impl: str) -> str:
    """Map "auto" | "torch" | "torchvision" to the implementation that will run."""
    if impl not in ("auto", "torch", "torchvision"):
        raise ValueError(f"impl must be 'auto', 'torch' or 'torchvision', got {impl!r}")
    if impl == "auto":
        return "torchvision" if torchvision_ops() is not None else "torch"
    if impl == "torchvision" and torchvision_ops() is None:
        raise ImportError("impl='torchvision' requested but torchvision's compiled ops are not importable")
    return impl


def boxes_to_rois(boxes: Sequence[Tensor] | Tensor) -> Tensor:
    """Per-image box lists -> one K x 5 tensor (batch index, x1, y1, x2, y2).

    Args:
        boxes: list of Ki x 4 XYXY tensors (one per image), or an already K x 5 tensor.

    Returns:
        K x 5 tensor.
    """
    if isinstance(boxes, Tensor):
        if boxes.dim() != 2 or boxes.shape[1] != 5:
            raise ValueError(f"rois must be K x 5 (batch index, x1, y1, x2, y2), got {tuple(boxes.shape)}")
        return boxes
    if len(boxes) == 0:
        return torch.zeros(0, 5)
    idx = [torch.full((b.shape[0], 1), i, dtype=b.dtype, device=b.device) for i, b in enumerate(boxes)]
    return torch.cat([torch.cat([i, b], dim=1) for i, b in zip(idx, boxes)], dim=0)


def _pair(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _axis_samples(
    start: Tensor, length: Tensor, bins: int, grid: Tensor, size: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Bilinear samples along one axis for K RoIs.

    Returns low (K x bins x G long), high, w_low, w_high (K x bins x G, already divided by grid and
    zeroed for samples that do not exist or fall outside [-1, size]).
    """
    k = start.shape[0]
    g_max = max(int(grid.max()) if k else 1, 1)
    binsz = (length / bins)[:, None, None]
    g = torch.arange(g_max, device=start.device, dtype=start.dtype)
    b = torch.arange(bins, device=start.device, dtype=start.dtype)
    gridf = grid.clamp_min(1).to(start.dtype)[:, None, None]
    pos = start[:, None, None] + b[None, :, None] * binsz + (g[None, None, :] + 0.5) * binsz / gridf
    ok = (g[None, None, :] < grid[:, None, None]) & (pos >= -1.0) & (pos <= size)
    p = pos.clamp(min=0)
    low = p.floor().long()
    edge = low >= size - 1
    low = torch.where(edge, torch.full_like(low, size - 1), low)
    high = torch.where(edge, low, low + 1)
    frac = torch.where(edge, torch.zeros_like(p), p - low.to(p.dtype))
    scale = ok.to(p.dtype) / gridf
    return low, high, (1 - frac) * scale, frac * scale


def _axis_window(low: Tensor, high: Tensor, w_low: Tensor, w_high: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """First touched index and span per RoI (K long each)."""
    used = (w_low > 0) | (w_high > 0)
    big = torch.full_like(low, size)
    first = torch.where(used, low, big).flatten(1).amin(dim=1) if low.numel() else low.new_zeros(low.shape[0])
    last = torch.where(used, high, -1).flatten(1).amax(dim=1) if low.numel() else low.new_zeros(low.shape[0])
    first = first.clamp(max=size - 1)
    span = (last - first + 1).clamp(min=1)
    return first, span


def _weight_matrix(low: Tensor, high: Tensor, w_low: Tensor, w_high: Tensor, first: Tensor, span: int) -> Tensor:
    """K x bins x span interpolation matrix from per-sample corner weights."""
    k, bins, g = low.shape
    a = w_low.new_zeros(k, bins, span)
    il = (low - first[:, None, None]).clamp(0, span - 1)
    ih = (high - first[:, None, None]).clamp(0, span - 1)
    a.scatter_add_(2, il, w_low)
    a.scatter_add_(2, ih, w_high)
    return a


def _roi_align_torch(
    input: Tensor, rois: Tensor, out_h: int, out_w: int, spatial_scale: float, sampling_ratio: int, aligned: bool
) -> Tensor:
    n_img, c, h, w = input.shape
    k = rois.shape[0]
    if k == 0 or h == 0 or w == 0:
        return input.new_zeros(k, c, out_h, out_w) + input.sum() * 0
    coord_dtype = torch.float64 if input.dtype == torch.float64 else torch.float32
    r = rois.detach().to(coord_dtype)
    bidx = r[:, 0].long()
    if bool(((bidx < 0) | (bidx >= n_img)).any()):
        raise ValueError(f"roi batch indices must lie in [0, {n_img}), got {r[:, 0].unique().tolist()}")
    offset = 0.5 if aligned else 0.0
    x1 = r[:, 1] * spatial_scale - offset
    y1 = r[:, 2] * spatial_scale - offset
    rw = r[:, 3] * spatial_scale - offset - x1
    rh = r[:, 4] * spatial_scale - offset - y1
    if not aligned:
        rw = rw.clamp(min=1.0)
        rh = rh.clamp(min=1.0)
    if sampling_ratio > 0:
        gh = torch.full((k,), sampling_ratio, dtype=torch.long, device=r.device)
        gw = gh
    else:  # adaptive: ceil(roi / out) samples per bin, per RoI (NaN boxes get no samples)
        gh = torch.nan_to_num(torch.ceil(rh / out_h), nan=0.0).clamp(min=0).long()
        gw = torch.nan_to_num(torch.ceil(rw / out_w), nan=0.0).clamp(min=0).long()
    ys = _axis_samples(y1, rh, out_h, gh, h)
    xs = _axis_samples(x1, rw, out_w, gw, w)
    fy, sy = _axis_window(*ys, h)
    fx, sx = _axis_window(*xs, w)

    # Process RoIs in order of crop size, in chunks that keep the gathered crops under budget.
    order = torch.argsort(sy * sx, stable=True)
    sy_l, sx_l = sy[order].tolist(), sx[order].tolist()
    plan: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []
    start = 0
    while start < k:
        end, my, mx = start, 0, 0
        while end < k:
            ny, nx = max(my, sy_l[end]), max(mx, sx_l[end])
            if end > start and (end - start + 1) * ny * nx * c > _CHUNK_ELEMENTS:
                break
            my, mx, end = ny, nx, end + 1
        sel = order[start:end]
        ay = _weight_matrix(*(t[sel] for t in ys), fy[sel], my)
        ax = _weight_matrix(*(t[sel] for t in xs), fx[sel], mx)
        rows = (fy[sel][:, None] + torch.arange(my, device=r.device)).clamp(max=h - 1)
        cols = (fx[sel][:, None] + torch.arange(mx, device=r.device)).clamp(max=w - 1)
        flat = (bidx[sel][:, None, None] * h + rows[:, :, None]) * w + cols[:, None, :]  # k x my x mx
        plan.append((sel, ay, ax, flat))
        start = end
    return _RoIAlignFunction.apply(input, plan, out_h, out_w)


class _RoIAlignFunction(torch.autograd.Function):
    """Runs a precomputed plan of chunks; backward accumulates into one gradient buffer (a plain
    autograd graph would allocate a full-size gradient per chunk)."""

    @staticmethod
    def forward(ctx, input: Tensor, plan: list, out_h: int, out_w: int) -> Tensor:  # type: ignore[override]
        n_img, c, h, w = input.shape
        dev = input.device.type
        cdtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else input.dtype
        # (N H W) x C rows, so that a gather copies whole C-vectors (no copy if input is channels_last)
        feat = input.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1).reshape(n_img * h * w, c)
        k = sum(p[0].shape[0] for p in plan)
        out = input.new_empty(k, c, out_h, out_w, dtype=cdtype)
        with torch.autocast(dev, enabled=False):
            for sel, ay, ax, flat in plan:
                kk, my, mx = flat.shape
                crop = feat.index_select(0, flat.reshape(-1)).to(cdtype)  # (k my mx) x C
                tmp = torch.bmm(ay.to(cdtype), crop.reshape(kk, my, mx * c)).reshape(kk, out_h, mx, c)
                tmp = tmp.permute(0, 2, 1, 3).reshape(kk, mx, out_h * c)
                res = torch.bmm(ax.to(cdtype), tmp).reshape(kk, out_w, out_h, c)
                out[sel] = res.permute(0, 3, 2, 1)
        ctx.plan = plan
        ctx.shape = (n_img, c, h, w)
        ctx.dtype = input.dtype
        ctx.layout_cl = input.is_contiguous(memory_format=torch.channels_last) and not input.is_contiguous()
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        n_img, c, h, w = ctx.shape
        out_h, out_w = grad_out.shape[2], grad_out.shape[3]
        gdtype = grad_out.dtype
        grad = torch.zeros(n_img * h * w, c, dtype=torch.promote_types(gdtype, ctx.dtype), device=grad_out.device)
        for sel, ay, ax, flat in ctx.plan:
            kk, my, mx = flat.shape
            g = grad_out[sel].permute(0, 3, 2, 1).reshape(kk, out_w, out_h * c)
            tmp = torch.bmm(ax.to(gdtype).transpose(1, 2), g)  # k x mx x (oh C)
            tmp = tmp.reshape(kk, mx, out_h, c).permute(0, 2, 1, 3).reshape(kk, out_h, mx * c)
            crop = torch.bmm(ay.to(gdtype).transpose(1, 2), tmp)  # k x my x (mx C)
            grad.index_add_(0, flat.reshape(-1), crop.reshape(kk * my * mx, c).to(grad.dtype))
        grad_input = grad.reshape(n_img, h, w, c).permute(0, 3, 1, 2).to(ctx.dtype)
        if not ctx.layout_cl:
            grad_input = grad_input.contiguous()
        return grad_input, None, None, None


def roi_align(
    input: Tensor,
    rois: Tensor | Sequence[Tensor],
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = 0,
    aligned: bool = True,
    impl: str = "auto",
) -> Tensor:
    """RoIAlign on one feature map.

    Args:
        input: N x C x H x W features.
        rois: K x 5 (batch index, x1, y1, x2, y2) in image pixels, or a list of Ki x 4 per image.
        output_size: oh (= ow) or (oh, ow).
        spatial_scale: feature pixels per image pixel (1 / stride).
        sampling_ratio: samples per bin and axis; <= 0 means adaptive ceil(roi_size / output_size).
        aligned: half-pixel correction (see module docstring).
        impl: "auto" (torchvision's compiled op when importable, else torch), "torch", "torchvision".

    Returns:
        K x C x oh x ow pooled features, in the order of ``rois``.
    """
    out_h, out_w = _pair(output_size)
    rois = boxes_to_rois(rois).to(device=input.device)
    if resolve_impl(impl) == "torchvision" and rois.shape[0] > 0:
        tv = torchvision_ops()
        assert tv is not None
        return tv.roi_align(
            input, rois.to(input.dtype), (out_h, out_w), spatial_scale, sampling_ratio, aligned
        )
    return _roi_align_torch(input, rois, out_h, out_w, spatial_scale, sampling_ratio, aligned)


def assign_fpn_levels(
    boxes: Tensor,
    min_level: int = 2,
    max_level: int = 5,
    canonical_box_size: float = 224.0,
    canonical_level: int = 4,
) -> Tensor:
    """FPN level of each box: floor(k0 + log2(sqrt(area) / 224)), clamped (Lin et al., FPN Eq. 1).

    Args:
        boxes: K x 4 XYXY in image pixels.
        min_level, max_level: the pyramid levels available (P2..P5 by default).
        canonical_box_size: 224, the ImageNet pre-training size.
        canonical_level: k0 = 4.

    Returns:
        K long levels in [min_level, max_level].
    """
    sizes = torch.sqrt(box_area(boxes.to(torch.float64)).clamp(min=0))
    levels = torch.floor(canonical_level + torch.log2(sizes / canonical_box_size + 1e-8))
    levels = torch.nan_to_num(levels, nan=float(min_level))
    return levels.clamp(min=min_level, max=max_level).long()


def multilevel_roi_align(
    features: Sequence[Tensor],
    rois: Tensor | Sequence[Tensor],
    output_size: int | tuple[int, int],
    strides: Sequence[int],
    sampling_ratio: int = 0,
    aligned: bool = True,
    canonical_box_size: float = 224.0,
    canonical_level: int = 4,
    impl: str = "auto",
) -> Tensor:
    """Pool each RoI from its FPN level (see :func:`assign_fpn_levels`).

    Args:
        features: L maps, Nimg x C x Hl x Wl, finest first (e.g. P2..P5).
        rois: K x 5 (batch index, x1, y1, x2, y2) or a list of Ki x 4 per image.
        output_size: oh or (oh, ow).
        strides: L strides, consecutive powers of two (e.g. 4, 8, 16, 32).
        sampling_ratio, aligned, impl: as in :func:`roi_align`.
        canonical_box_size, canonical_level: FPN assignment constants (224, 4).

    Returns:
        K x C x oh x ow, in the order of ``rois``.
    """
    if len(features) != len(strides) or not features:
        raise ValueError(f"got {len(features)} feature maps but {len(strides)} strides")
    levels = [math.log2(s) for s in strides]
    if any(abs(lv - round(lv)) > 1e-9 for lv in levels) or any(
        round(b) - round(a) != 1 for a, b in zip(levels, levels[1:])
    ):
        raise ValueError(f"strides must be consecutive powers of two, got {list(strides)}")
    min_level = round(levels[0])
    rois = boxes_to_rois(rois).to(device=features[0].device)
    out_h, out_w = _pair(output_size)
    c = features[0].shape[1]
    if len(features) == 1:
        return roi_align(features[0], rois, (out_h, out_w), 1.0 / strides[0], sampling_ratio, aligned, impl)
    lvl = assign_fpn_levels(rois[:, 1:], min_level, min_level + len(features) - 1, canonical_box_size,
                            canonical_level) - min_level
    out = features[0].new_zeros(rois.shape[0], c, out_h, out_w)
    for i, (feat, stride) in enumerate(zip(features, strides)):
        idx = torch.nonzero(lvl == i).flatten()
        pooled = roi_align(feat, rois[idx], (out_h, out_w), 1.0 / stride, sampling_ratio, aligned, impl)
        out = out.index_put((idx,), pooled.to(out.dtype))
    return out
