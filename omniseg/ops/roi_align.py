"""RoIAlign (He et al., Mask R-CNN, Sec. 3) in plain PyTorch, plus FPN multi-level pooling.

(Over 400 lines on purpose: the sparse forward, its hand-written backward and the dispatch share
the sampling-rule helpers; split apart they would have to re-derive the same bin geometry.)

Semantics follow torchvision / detectron2 ``ROIAlign`` exactly:

* ``aligned=True`` shifts box corners by -0.5 pixel so that a box [x1, x2) maps onto the pixel
  centers it covers (aligned=False keeps the legacy Detectron behaviour, with roi size >= 1);
* each of the oh x ow bins averages gh x gw bilinear samples at the sub-bin centers, where
  gh = sampling_ratio if > 0, else ceil(roi_h / oh) chosen per RoI (adaptive);
* a sample with y < -1 or y > H (or x < -1 or x > W) is 0; otherwise coordinates are clamped
  into the map.

Implementation (``impl="torch"``): an output bin is a weighted sum of feature pixels, i.e. one row
of a sparse matrix. Bilinear sampling is separable and a bin's samples form a gh x gw grid, so the
pixels a bin touches are (rows touched) x (columns touched) with weight wy * wx. Per axis we merge
the samples' corners into unique pixels with summed weights, expand the products into a CSR-like
list (pixel index, weight, one bag per bin) and let ``F.embedding_bag(mode="sum")`` gather the
C-vectors from the (N H W) x C feature rows; the backward pass runs the transposed list through
``embedding_bag`` again. All FPN levels go through one call (their rows are stacked). Samples that
cannot land inside [-1, size] are skipped analytically, so huge RoIs cost what they overlap, and
RoIs are planned in chunks under a memory budget. Differentiable w.r.t. the features (not the
boxes, like torchvision).

``impl="torch_reference"`` is the earlier formulation (per RoI ``Ay @ F_crop @ Ax^T`` on gathered
crops), kept as an independent cross-check and for benchmarks.

NaN note: a NaN feature makes a bin NaN when one of the bin's valid samples has it as a bilinear
corner (even with weight 0), as in torchvision; the reference path is stricter (any NaN in the
RoI's crop). A box with a NaN or inf coordinate gives an all-NaN output for that RoI and no
gradient (other RoIs are unaffected).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import Tensor

from omniseg.ops.boxes import box_area

_CHUNK_ELEMENTS = 1 << 22  # budget per chunk: bound on the (pixel, weight) entries (~70 bytes each while planned)
_MAX_GRID = 1 << 30  # adaptive samples per bin are capped here (only ~2 * size of them can be valid)


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


def roi_align_impl(impl: str, device: torch.device) -> str:
    """The RoIAlign implementation that runs for ``impl`` on ``device``.

    "auto" picks the sparse torch path on the CPU even where torchvision loads: torchvision's
    compiled CPU kernel measured 2.7x slower forward and 8.7x slower forward + backward than the
    embedding_bag path (512 RoIs from P2-P5 of 4 x 256 px, 256 channels, 1 thread:
    ``bench/ops_speed.py --threads 1 --ops roi_align --num-images 4 --image 256 --num-rois 512``
    in the peer venv), which made it most of the gap between OmniSeg's and torchvision's Mask
    R-CNN training step (bench/peer_speed.py). Elsewhere (CUDA) "auto" takes torchvision's op
    when importable. Other values as :func:`resolve_impl`; "torch_reference" passes through.
    """
    if impl == "torch_reference":
        return impl
    if impl == "auto" and torch.device(device).type == "cpu":
        return "torch"
    return resolve_impl(impl)


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


def _geometry(
    rois: Tensor, scale: Tensor, n_img: int, out_h: int, out_w: int, sampling_ratio: int, aligned: bool, dtype
) -> tuple[Tensor, ...]:
    """Per-RoI start/extent/grid on the feature map. Non-finite boxes are flagged ``bad`` and get no samples.

    Returns:
        batch index (K long), y1, rh, x1, rw (K), gh, gw (K long), bad (K bool).
    """
    r = rois.detach().to(dtype)
    bidx = r[:, 0].long()
    if bool(((bidx < 0) | (bidx >= n_img)).any()):
        raise ValueError(f"roi batch indices must lie in [0, {n_img}), got {r[:, 0].unique().tolist()}")
    bad = ~torch.isfinite(r[:, 1:]).all(dim=1)
    r = torch.where(bad[:, None], torch.zeros_like(r), r)
    offset = 0.5 if aligned else 0.0
    x1 = r[:, 1] * scale - offset
    y1 = r[:, 2] * scale - offset
    rw = r[:, 3] * scale - offset - x1
    rh = r[:, 4] * scale - offset - y1
    if not aligned:
        rw = rw.clamp(min=1.0)
        rh = rh.clamp(min=1.0)
    if sampling_ratio > 0:
        gh = torch.full_like(bidx, sampling_ratio)
        gw = gh
    else:  # adaptive: ceil(roi / out) samples per bin, per RoI
        gh = torch.ceil(rh / out_h).clamp(0, _MAX_GRID).long()
        gw = torch.ceil(rw / out_w).clamp(0, _MAX_GRID).long()
    gh = gh.masked_fill(bad, 0)
    gw = gw.masked_fill(bad, 0)
    return bidx, y1, rh, x1, rw, gh, gw, bad


def _sample_window(start: Tensor, length: Tensor, bins: int, grid: Tensor, size: Tensor) -> tuple[Tensor, Tensor]:
    """First sample index per RoI and bin that may land in [-1, size] (K x bins), and per-RoI count (K).

    Samples of one bin are ``length / bins / grid`` apart, so at most (size + 1) / step + 1 of them
    are valid; the window keeps a margin of 2 samples on each side against rounding (the exact test
    is redone on the samples).
    """
    dt = start.dtype
    binsz = length / bins
    gridf = grid.clamp(min=1).to(dt)
    step = (binsz / gridf)[:, None]
    b0 = start[:, None] + torch.arange(bins, device=start.device, dtype=dt)[None] * binsz[:, None]
    entry = torch.where(step >= 0, torch.full_like(b0, -1.0), size.to(dt)[:, None].expand_as(b0))
    first = torch.where(step != 0, torch.ceil((entry - b0) / step - 0.5) - 2, torch.zeros_like(b0))
    first = torch.minimum(first.clamp(min=0), gridf[:, None])
    room = torch.floor((size.to(dt)[:, None] + 1) / step.abs()) + 5
    count = torch.minimum(grid.to(dt)[:, None] - first, torch.where(step != 0, room, gridf[:, None]))
    return first, count.amax(dim=1).clamp(min=0) if count.numel() else count.new_zeros(start.shape[0])


def _touched_bound(start: Tensor, length: Tensor, bins: int, grid: Tensor, size: Tensor) -> Tensor:
    """Upper bound (K) on the pixels one bin touches along an axis (sizes the chunks).

    A bin's samples span less than its size d, so they touch at most ceil(d) + 2 pixels; also at most
    2 per sample in the window, and at most the map's extent.
    """
    t = _sample_window(start, length, bins, grid, size)[1]
    return torch.minimum(torch.minimum(2 * t, (length / bins).abs().ceil() + 2), size.to(t.dtype))


def _axis_samples(
    start: Tensor, length: Tensor, bins: int, grid: Tensor, size: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Bilinear samples along one axis for K RoIs (only the window that can be valid).

    Args:
        start, length: K RoI start and extent in feature pixels; grid: K samples per bin (long);
        size: K map extents (long).

    Returns:
        low, high (K x bins x T long), w_low, w_high (K x bins x T, divided by grid and zero for
        samples that do not exist or fall outside [-1, size]), ok (K x bins x T bool).
    """
    first, count = _sample_window(start, length, bins, grid, size)
    t = max(int(count.max()) if count.numel() else 1, 1)
    dt = start.dtype
    g = first[:, :, None] + torch.arange(t, device=start.device, dtype=dt)
    binsz = (length / bins)[:, None, None]
    b = torch.arange(bins, device=start.device, dtype=dt)[None, :, None]
    gridf = grid.clamp(min=1).to(dt)[:, None, None]
    # same expression and rounding as torchvision: start + bin * bin_size + (g + .5) * bin_size / grid
    pos = start[:, None, None] + b * binsz + (g + 0.5) * binsz / gridf
    sz = size[:, None, None]
    ok = (g < grid[:, None, None]) & (pos >= -1.0) & (pos <= sz) & (sz > 0)
    p = pos.clamp(min=0)
    low = p.floor()
    edge = low >= sz - 1
    low = torch.where(edge, (sz - 1).to(dt), low)
    frac = torch.where(edge, torch.zeros_like(p), p - low)
    low = low.long()
    high = torch.where(edge, low, low + 1)
    scale = ok.to(dt) / gridf
    return low, high, (1 - frac) * scale, frac * scale, ok


def _axis_pixels(
    start: Tensor, length: Tensor, bins: int, grid: Tensor, size: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Unique pixels each bin touches along one axis, with the summed weights of its samples.

    Returns:
        idx (K x bins x J long; the first ``n`` valid), weight (K x bins x J), n (K x bins long).
    """
    low, high, w_low, w_high, ok = _axis_samples(start, length, bins, grid, size)
    k = low.shape[0]
    sentinel = int(size.max()) if k else 0  # >= every valid pixel index, so invalid corners sort last
    cand = torch.cat([low, high], dim=2).masked_fill(~torch.cat([ok, ok], dim=2), sentinel)
    cand, perm = cand.sort(dim=2)
    wc = torch.cat([w_low, w_high], dim=2).gather(2, perm)
    valid = cand < sentinel
    new = valid.clone()
    new[:, :, 1:] &= cand[:, :, 1:] != cand[:, :, :-1]
    n = new.sum(dim=2)
    j = max(int(n.max()) if n.numel() else 1, 1)
    seg = torch.where(valid, new.cumsum(dim=2) - 1, j)  # slot j collects the invalid corners
    w = wc.new_zeros(k, bins, j + 1).scatter_add_(2, seg, wc)[:, :, :j]
    idx = cand.new_zeros(k, bins, j + 1).scatter_(2, seg, cand)[:, :, :j]  # duplicates carry one value
    return idx, w, n


def _bag_entries(
    row0: Tensor, width: Tensor, iy: Tensor, wy: Tensor, ny: Tensor, ix: Tensor, wx: Tensor, nx: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Expand per-axis pixel lists into the sparse rows of the bins (bags ordered RoI, bin row, bin col).

    Args:
        row0: K first feature row of each RoI's image (level base + batch * H * W); width: K map widths.
        iy, wy, ny: from :func:`_axis_pixels` for y (K x oh x Jy, K x oh); ix, wx, nx: same for x.

    Returns:
        flat feature-row indices (E long), weights (E), bag offsets (K * oh * ow long); a bag lists
        its entries row by row: (y0, x0), (y0, x1), ..., (y1, x0), ...
    """
    k, oh, jy = iy.shape
    ow, jx = ix.shape[1], ix.shape[2]
    dev = iy.device
    ar = functools.partial(torch.arange, device=dev)
    ny_b = ny[:, :, None].expand(k, oh, ow).flatten()
    nx_b = nx[:, None, :].expand(k, oh, ow).flatten()
    cnt = ny_b * nx_b
    offsets = cnt.cumsum(0) - cnt
    # stage 1: one item per (bag, touched row) -> feature row offset, y weight, where the bag's x list starts
    n1 = int(ny_b.sum())
    bag = torch.repeat_interleave(ar(k * oh * ow), ny_b, output_size=n1)
    ry = ar(n1) - (ny_b.cumsum(0) - ny_b)[bag]
    ybase = ((ar(k)[:, None] * oh + ar(oh)) * jy)[:, :, None].expand(k, oh, ow).flatten()
    yi = ybase[bag] + ry
    rows = (row0[:, None, None] + iy * width[:, None, None]).flatten()[yi]
    wrow = wy.flatten()[yi]
    xbase = ((ar(k)[:, None] * ow + ar(ow)) * jx)[:, None, :].expand(k, oh, ow).flatten()[bag]
    nx_i = nx_b[bag]
    # stage 2: expand every item over the bag's touched columns
    total = int(cnt.sum())
    item = torch.repeat_interleave(ar(n1), nx_i, output_size=total)
    xi = ar(total) - (nx_i.cumsum(0) - nx_i - xbase)[item]
    flat = rows[item] + ix.flatten()[xi]
    weight = wrow[item] * wx.flatten()[xi]
    return flat, weight, offsets


def _chunks(cost: Tensor, budget: int) -> list[Tensor | None]:
    """Group RoIs so that (RoIs in group) x (largest cost in group) stays under budget; None = all, in order."""
    k = cost.shape[0]
    if k == 0 or float(cost.sum()) <= budget:
        return [None]
    order = torch.argsort(cost, stable=True)
    c = cost[order].tolist()
    out, start = [], 0
    while start < k:
        end = start + 1
        while end < k and (end - start + 1) * c[end] <= budget:
            end += 1
        out.append(order[start:end])
        start = end
    return out


def _feature_rows(features: Sequence[Tensor], used: list[bool], dtype: torch.dtype) -> Tensor:
    """(N H W) x C rows of the used maps, stacked in level order (a view for one channels_last map)."""
    maps = [f for f, u in zip(features, used) if u]
    p = maps[0].permute(0, 2, 3, 1)
    if len(maps) == 1 and p.is_contiguous() and maps[0].dtype == dtype:
        return p.reshape(-1, p.shape[3])
    sizes = [f.shape[0] * f.shape[2] * f.shape[3] for f in maps]
    rows = maps[0].new_empty(sum(sizes), p.shape[3], dtype=dtype)
    for f, r in zip(maps, rows.split(sizes)):
        r.view(f.shape[0], f.shape[2], f.shape[3], f.shape[1]).copy_(f.permute(0, 2, 3, 1))
    return rows


class _RoIAlignBags(torch.autograd.Function):
    """Forward: embedding_bag over the planned sparse rows; backward: the transposed rows.

    ``plan`` holds (sel, flat, weight, offsets) per chunk: ``sel`` the RoIs of the chunk (None: all K
    in order), ``flat`` rows of the stacked used maps (level base + batch * H * W + y * W + x).
    """

    @staticmethod
    def forward(ctx, plan: list, meta: tuple, *features: Tensor) -> Tensor:  # type: ignore[override]
        k, out_h, out_w, cdtype, out_dtype, used = meta
        c = features[0].shape[1]
        with torch.autocast(features[0].device.type, enabled=False):
            feat = _feature_rows(features, used, cdtype)
            rows = None  # K x (oh ow C): every RoI is in exactly one chunk
            for sel, flat, weight, offsets in plan:
                res = F.embedding_bag(flat, feat, offsets, mode="sum", per_sample_weights=weight)
                if sel is None:
                    rows = res
                else:
                    rows = res.new_empty(k, out_h * out_w * c) if rows is None else rows
                    rows.index_copy_(0, sel, res.view(-1, out_h * out_w * c))
        assert rows is not None
        ctx.plan, ctx.meta = plan, meta
        ctx.shapes = [(f.shape, f.dtype, f.is_contiguous(memory_format=torch.channels_last) and not f.is_contiguous())
                      for f in features]
        return rows.view(k, out_h, out_w, c).permute(0, 3, 1, 2).to(out_dtype, memory_format=torch.contiguous_format)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        k, out_h, out_w, cdtype, _, used = ctx.meta
        ohw = out_h * out_w
        dev = grad_out.device
        g = grad_out.permute(0, 2, 3, 1).to(cdtype).contiguous().view(k * ohw, -1)  # output bins as rows
        bags = []
        for sel, flat, _, offsets in ctx.plan:
            rows = torch.arange(offsets.numel(), device=dev)  # bag -> row of g
            if sel is not None:
                rows = (sel[:, None] * ohw + torch.arange(ohw, device=dev)).flatten()
            cnt = torch.diff(offsets, append=offsets.new_tensor([flat.numel()]))
            bags.append(torch.repeat_interleave(rows, cnt, output_size=flat.numel()))
        # transposed sparse rows: one bag per feature pixel (untouched pixels get zero rows)
        sizes = [s[0] * s[2] * s[3] for (s, _, _), u in zip(ctx.shapes, used) if u]
        flat = torch.cat([p[1] for p in ctx.plan])
        pix, perm = (flat.int() if sum(sizes) < 2**31 else flat).sort()  # int32 keys sort ~2x faster
        cnt = torch.bincount(pix, minlength=sum(sizes))
        weight = torch.cat([p[2] for p in ctx.plan])[perm]
        grad = F.embedding_bag(torch.cat(bags)[perm], g, cnt.cumsum(0) - cnt, mode="sum", per_sample_weights=weight)
        level_grads = iter(grad.split(sizes))
        grads: list[Tensor | None] = []
        for ((n, c, h, w), dtype, channels_last), u, need in zip(ctx.shapes, used, ctx.needs_input_grad[2:]):
            gl = next(level_grads) if u else None
            if not need:
                grads.append(None)
            elif gl is None:
                grads.append(torch.zeros(n, c, h, w, dtype=dtype, device=dev))
            else:
                gl = gl.view(n, h, w, c).permute(0, 3, 1, 2)
                grads.append(gl.to(dtype) if channels_last else gl.to(dtype, memory_format=torch.contiguous_format))
        return (None, None, *grads)


def _roi_align_levels(
    features: Sequence[Tensor], rois: Tensor, level: Tensor | None, scales: Sequence[float],
    out_h: int, out_w: int, sampling_ratio: int, aligned: bool,
) -> Tensor:
    """RoIAlign of each RoI on ``features[level[k]]`` (all levels share N and C) as one sparse product."""
    f0 = features[0]
    n_img, c = f0.shape[:2]
    k = rois.shape[0]
    dev = f0.device
    out_dtype = torch.get_autocast_dtype(dev.type) if torch.is_autocast_enabled(dev.type) else f0.dtype
    if k == 0:
        return f0.new_zeros(k, c, out_h, out_w, dtype=out_dtype) + sum(f.sum() * 0 for f in features)
    cdtype = torch.float64 if f0.dtype == torch.float64 else torch.float32
    lv = torch.zeros(k, dtype=torch.long, device=dev) if level is None else level.to(dev)
    used = [True] if level is None else torch.bincount(lv, minlength=len(features)).gt(0).tolist()
    sizes = [n_img * f.shape[2] * f.shape[3] if u else 0 for f, u in zip(features, used)]
    hs = torch.tensor([f.shape[2] for f in features], device=dev)[lv]
    ws = torch.tensor([f.shape[3] for f in features], device=dev)[lv]
    base = torch.tensor([0] + sizes[:-1], device=dev).cumsum(0)[lv]  # first row of the RoI's map
    scale = torch.tensor(list(scales), dtype=cdtype, device=dev)[lv]
    bidx, y1, rh, x1, rw, gh, gw, bad = _geometry(rois, scale, n_img, out_h, out_w, sampling_ratio, aligned, cdtype)
    cost = out_h * out_w * _touched_bound(y1, rh, out_h, gh, hs) * _touched_bound(x1, rw, out_w, gw, ws)
    per_roi = (y1, rh, gh, hs, x1, rw, gw, ws, base + bidx * hs * ws)
    plan = []
    for sel in _chunks(cost, _CHUNK_ELEMENTS):
        cy1, crh, cgh, chs, cx1, crw, cgw, cws, row0 = per_roi if sel is None else (t[sel] for t in per_roi)
        iy, wy, ny = _axis_pixels(cy1, crh, out_h, cgh, chs)
        ix, wx, nx = _axis_pixels(cx1, crw, out_w, cgw, cws)
        plan.append((sel, *_bag_entries(row0, cws, iy, wy, ny, ix, wx, nx)))
    out = _RoIAlignBags.apply(plan, (k, out_h, out_w, cdtype, out_dtype, used), *features)
    return out.masked_fill(bad[:, None, None, None], float("nan")) if bool(bad.any()) else out


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
        impl: "auto" (see :func:`roi_align_impl`: torch on the CPU, else torchvision's compiled op when
            importable, else torch), "torch", "torchvision",
            or "torch_reference" (the slower crop formulation, for cross-checks).

    Returns:
        K x C x oh x ow pooled features, in the order of ``rois``.
    """
    out_h, out_w = _pair(output_size)
    rois = boxes_to_rois(rois).to(device=input.device)
    impl = roi_align_impl(impl, input.device)
    if impl == "torch_reference":
        from omniseg.ops.roi_align_reference import _roi_align_reference

        return _roi_align_reference(input, rois, out_h, out_w, spatial_scale, sampling_ratio, aligned)
    if impl == "torchvision" and rois.shape[0] > 0:
        tv = torchvision_ops()
        assert tv is not None
        return tv.roi_align(
            input, rois.to(input.dtype), (out_h, out_w), spatial_scale, sampling_ratio, aligned
        )
    return _roi_align_levels([input], rois, None, [spatial_scale], out_h, out_w, sampling_ratio, aligned)


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
    impl = roi_align_impl(impl, features[0].device)
    if impl == "torch":
        if any(f.shape[:2] != features[0].shape[:2] for f in features):
            raise ValueError(f"FPN maps must share N and C, got {[tuple(f.shape) for f in features]}")
        return _roi_align_levels(features, rois, lvl, [1.0 / s for s in strides], out_h, out_w, sampling_ratio,
                                 aligned)
    # one pass per used level, then one gather back into RoI order (no per-level copy of the output)
    order = torch.argsort(lvl, stable=True)
    counts = torch.bincount(lvl, minlength=len(features)).tolist()
    pooled, start = [], 0
    for feat, stride, n in zip(features, strides, counts):
        if n:
            idx = order[start:start + n]
            pooled.append(roi_align(feat, rois[idx], (out_h, out_w), 1.0 / stride, sampling_ratio, aligned, impl))
            start += n
    if not pooled:
        return features[0].new_zeros(0, c, out_h, out_w) + sum(f.sum() * 0 for f in features)
    return torch.cat([p.to(features[0].dtype) for p in pooled])[torch.argsort(order)]
