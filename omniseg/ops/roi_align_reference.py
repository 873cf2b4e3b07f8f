"""The earlier RoIAlign formulation, kept as an independent cross-check of the fast path.

Per RoI ``Ay @ F_crop @ Ax^T`` on gathered crops (separable bilinear weights as dense
matrices), with a custom backward that collects all gradients in one buffer. Selected with
``roi_align(..., impl="torch_reference")``; see :mod:`omniseg.ops.roi_align` for semantics.
"""

from __future__ import annotations

import torch
from torch import Tensor

from omniseg.ops.roi_align import _axis_samples, _geometry

_REF_CHUNK_ELEMENTS = 1 << 23  # gathered crop elements per chunk


def _axis_window(low: Tensor, high: Tensor, w_low: Tensor, w_high: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """Reference path: first touched index and span per RoI (K long each)."""
    used = (w_low > 0) | (w_high > 0)
    big = torch.full_like(low, size)
    first = torch.where(used, low, big).flatten(1).amin(dim=1) if low.numel() else low.new_zeros(low.shape[0])
    last = torch.where(used, high, -1).flatten(1).amax(dim=1) if low.numel() else low.new_zeros(low.shape[0])
    first = first.clamp(max=size - 1)
    span = (last - first + 1).clamp(min=1)
    return first, span


def _weight_matrix(low: Tensor, high: Tensor, w_low: Tensor, w_high: Tensor, first: Tensor, span: int) -> Tensor:
    """Reference path: K x bins x span interpolation matrix from per-sample corner weights."""
    k, bins, g = low.shape
    a = w_low.new_zeros(k, bins, span)
    il = (low - first[:, None, None]).clamp(0, span - 1)
    ih = (high - first[:, None, None]).clamp(0, span - 1)
    a.scatter_add_(2, il, w_low)
    a.scatter_add_(2, ih, w_high)
    return a


def _roi_align_reference(
    input: Tensor, rois: Tensor, out_h: int, out_w: int, spatial_scale: float, sampling_ratio: int, aligned: bool
) -> Tensor:
    """The crop formulation: per RoI ``Ay @ F_crop @ Ax^T`` (Ay: oh x crop rows, Ax: ow x crop cols)."""
    n_img, c, h, w = input.shape
    k = rois.shape[0]
    if k == 0 or h == 0 or w == 0:
        return input.new_zeros(k, c, out_h, out_w) + input.sum() * 0
    coord_dtype = torch.float64 if input.dtype == torch.float64 else torch.float32
    scale = torch.full((k,), spatial_scale, dtype=coord_dtype, device=input.device)
    bidx, y1, rh, x1, rw, gh, gw, bad = _geometry(rois, scale, n_img, out_h, out_w, sampling_ratio, aligned,
                                                  coord_dtype)
    ys = _axis_samples(y1, rh, out_h, gh, torch.full_like(bidx, h))[:4]
    xs = _axis_samples(x1, rw, out_w, gw, torch.full_like(bidx, w))[:4]
    fy, sy = _axis_window(*ys, h)
    fx, sx = _axis_window(*xs, w)
    order = torch.argsort(sy * sx, stable=True)
    sy_l, sx_l = sy[order].tolist(), sx[order].tolist()
    plan: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []
    start = 0
    while start < k:
        end, my, mx = start, 0, 0
        while end < k:
            ny, nx = max(my, sy_l[end]), max(mx, sx_l[end])
            if end > start and (end - start + 1) * ny * nx * c > _REF_CHUNK_ELEMENTS:
                break
            my, mx, end = ny, nx, end + 1
        sel = order[start:end]
        ay = _weight_matrix(*(t[sel] for t in ys), fy[sel], my)
        ax = _weight_matrix(*(t[sel] for t in xs), fx[sel], mx)
        rows = (fy[sel][:, None] + torch.arange(my, device=input.device)).clamp(max=h - 1)
        cols = (fx[sel][:, None] + torch.arange(mx, device=input.device)).clamp(max=w - 1)
        flat = (bidx[sel][:, None, None] * h + rows[:, :, None]) * w + cols[:, None, :]  # k x my x mx
        plan.append((sel, ay, ax, flat))
        start = end
    out = _RoIAlignCrop.apply(input, plan, out_h, out_w)
    return out.masked_fill(bad[:, None, None, None], float("nan")) if bool(bad.any()) else out


class _RoIAlignCrop(torch.autograd.Function):
    """Reference path: runs the chunks; backward accumulates into one gradient buffer."""

    @staticmethod
    def forward(ctx, input: Tensor, plan: list, out_h: int, out_w: int) -> Tensor:  # type: ignore[override]
        n_img, c, h, w = input.shape
        dev = input.device.type
        cdtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else input.dtype
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
