import math

import pytest
import torch

import omniseg.ops.roi_align as ra
import omniseg.ops.roi_align_reference as rar
from omniseg.ops.roi_align import (
    assign_fpn_levels,
    boxes_to_rois,
    multilevel_roi_align,
    roi_align,
    torchvision_ops,
)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def ref_bilinear(img, y, x):
    """One sample, torchvision's rules, on a H x W list-of-lists."""
    h, w = len(img), len(img[0])
    if y < -1.0 or y > h or x < -1.0 or x > w:
        return 0.0
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = int(math.floor(y)), int(math.floor(x))
    if y0 >= h - 1:
        y0 = y1 = h - 1
        y = float(y0)
    else:
        y1 = y0 + 1
    if x0 >= w - 1:
        x0 = x1 = w - 1
        x = float(x0)
    else:
        x1 = x0 + 1
    ly, lx = y - y0, x - x0
    return (
        (1 - ly) * (1 - lx) * img[y0][x0]
        + (1 - ly) * lx * img[y0][x1]
        + ly * (1 - lx) * img[y1][x0]
        + ly * lx * img[y1][x1]
    )


def ref_roi_align(feat, rois, out_h, out_w, scale, sampling_ratio, aligned):
    """Slow per-bin, per-sample loop."""
    k = rois.shape[0]
    c = feat.shape[1]
    out = torch.zeros(k, c, out_h, out_w, dtype=torch.float64)
    off = 0.5 if aligned else 0.0
    for r in range(k):
        b, x1, y1, x2, y2 = rois[r].tolist()
        sx, sy = x1 * scale - off, y1 * scale - off
        rw, rh = x2 * scale - off - sx, y2 * scale - off - sy
        if not aligned:
            rw, rh = max(rw, 1.0), max(rh, 1.0)
        bw, bh = rw / out_w, rh / out_h
        gh = sampling_ratio if sampling_ratio > 0 else math.ceil(rh / out_h)
        gw = sampling_ratio if sampling_ratio > 0 else math.ceil(rw / out_w)
        count = max(gh * gw, 1)
        for ch in range(c):
            img = feat[int(b), ch].tolist()
            for ph in range(out_h):
                for pw in range(out_w):
                    acc = 0.0
                    for iy in range(gh):
                        y = sy + ph * bh + (iy + 0.5) * bh / gh
                        for ix in range(gw):
                            x = sx + pw * bw + (ix + 0.5) * bw / gw
                            acc += ref_bilinear(img, y, x)
                    out[r, ch, ph, pw] = acc / count
    return out


def test_detectron2_hand_case_5x5_arange():
    x = torch.arange(25.0).reshape(1, 1, 5, 5)
    rois = torch.tensor([[0.0, 1.0, 1.0, 3.0, 3.0]])
    # aligned: roi starts at 0.5, 1 sample per bin at 0.75, 1.25, 1.75, 2.25; value = 5 y + x
    aligned = [[4.5, 5.0, 5.5, 6.0], [7.0, 7.5, 8.0, 8.5], [9.5, 10.0, 10.5, 11.0], [12.0, 12.5, 13.0, 13.5]]
    legacy = [[7.5, 8.0, 8.5, 9.0], [10.0, 10.5, 11.0, 11.5], [12.5, 13.0, 13.5, 14.0], [15.0, 15.5, 16.0, 16.5]]
    assert roi_align(x, rois, 4, aligned=True, impl="torch")[0, 0].tolist() == aligned
    assert roi_align(x, rois, 4, aligned=False, impl="torch")[0, 0].tolist() == legacy


def _rois(seed, k, n_img, size):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(k, 2, generator=g, dtype=torch.float64) * (size + 4) - 3  # some outside the map
    wh = torch.rand(k, 2, generator=g, dtype=torch.float64) * size * 0.8
    b = torch.randint(0, n_img, (k, 1), generator=g).double()
    r = torch.cat([b, xy, xy + wh], dim=1)
    r[0, 3:] = r[0, 1:3]  # zero-size box
    return r


@pytest.mark.parametrize("impl", ["torch", "torch_reference"])
@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 2, -1])
def test_matches_reference_loop(aligned, sampling_ratio, impl):
    g = torch.Generator().manual_seed(1)
    feat = torch.randn(2, 2, 7, 9, generator=g, dtype=torch.float64)
    rois = _rois(2, 6, 2, 14)
    out = roi_align(feat, rois, (2, 3), 0.5, sampling_ratio, aligned, impl=impl)
    ref = ref_roi_align(feat, rois, 2, 3, 0.5, sampling_ratio, aligned)
    assert torch.allclose(out, ref, atol=1e-12)


def test_chunking_gives_same_result(monkeypatch):
    feat = torch.randn(1, 3, 12, 12, dtype=torch.float64)
    rois = _rois(3, 20, 1, 12)
    full = roi_align(feat, rois, 3, 1.0, 0, True, impl="torch")
    monkeypatch.setattr(ra, "_CHUNK_ELEMENTS", 1)  # one RoI per chunk
    monkeypatch.setattr(rar, "_REF_CHUNK_ELEMENTS", 1)
    assert torch.allclose(roi_align(feat, rois, 3, 1.0, 0, True, impl="torch"), full, atol=1e-12)
    assert torch.allclose(roi_align(feat, rois, 3, 1.0, 0, True, impl="torch_reference"), full, atol=1e-12)


def test_gradcheck_double():
    feat = torch.randn(1, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0.0, 0.3, 0.7, 4.1, 3.9], [0.0, 2.2, 1.1, 5.7, 4.6]], dtype=torch.float64)
    for sr in (0, 2):
        assert torch.autograd.gradcheck(lambda f, sr=sr: roi_align(f, rois, (2, 2), 1.0, sr, True, "torch"), (feat,))


def test_gradcheck_multi_image_multi_chunk_legacy(monkeypatch):
    monkeypatch.setattr(ra, "_CHUNK_ELEMENTS", 1)  # every RoI in its own chunk: gradients must accumulate
    feat = torch.randn(2, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor(
        [[1.0, 0.2, 0.4, 3.3, 4.6], [0.0, 1.1, 0.9, 4.2, 3.1], [1.0, 0.7, 1.4, 2.8, 3.3], [0.0, -1.5, -0.5, 2.0, 1.5]],
        dtype=torch.float64,
    )
    for aligned in (True, False):
        assert torch.autograd.gradcheck(
            lambda f, a=aligned: roi_align(f, rois, (2, 3), 1.0, 0, a, "torch"), (feat,)
        )


def test_backward_dtypes_and_layout():
    feat = torch.randn(1, 3, 8, 8, requires_grad=True)
    rois = torch.tensor([[0.0, 1.0, 1.0, 6.0, 7.0]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = roi_align(feat, rois, 2, impl="torch")
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert feat.grad.dtype == torch.float32 and feat.grad.shape == feat.shape
    ref_grad = torch.autograd.grad(roi_align(feat, rois, 2, impl="torch").sum(), feat)[0]
    assert torch.allclose(feat.grad, ref_grad, atol=0.02)
    cl = feat.detach().to(memory_format=torch.channels_last).requires_grad_()
    roi_align(cl, rois, 2, impl="torch").sum().backward()
    assert torch.allclose(cl.grad, ref_grad)


def test_empty_and_list_input_and_errors():
    feat = torch.randn(2, 4, 6, 6, requires_grad=True)
    out = roi_align(feat, torch.zeros(0, 5), 7, impl="torch")
    assert out.shape == (0, 4, 7, 7)
    out.sum().backward()
    assert feat.grad is not None and torch.all(feat.grad == 0)
    per_image = [torch.tensor([[0.0, 0.0, 3.0, 3.0]]), torch.tensor([[1.0, 1.0, 5.0, 4.0], [0.0, 0.0, 6.0, 6.0]])]
    rois = boxes_to_rois(per_image)
    assert rois[:, 0].tolist() == [0.0, 1.0, 1.0]
    assert torch.equal(roi_align(feat, per_image, 2, impl="torch"), roi_align(feat, rois, 2, impl="torch"))
    with pytest.raises(ValueError, match="batch indices"):
        roi_align(feat, torch.tensor([[2.0, 0.0, 0.0, 1.0, 1.0]]), 2, impl="torch")
    with pytest.raises(ValueError, match="impl"):
        roi_align(feat, rois, 2, impl="cuda")


def test_nan_propagates_locally():
    feat = torch.zeros(1, 1, 10, 10)
    feat[0, 0, 2, 2] = float("nan")
    rois = torch.tensor([[0.0, 1.0, 1.0, 4.0, 4.0], [0.0, 6.0, 6.0, 9.0, 9.0]])
    out = roi_align(feat, rois, 2, impl="torch")
    assert torch.isnan(out[0]).any()
    assert torch.all(out[1] == 0)
    bad = torch.tensor([[0.0, float("nan"), 1.0, 3.0, 3.0], [0.0, 6.0, 6.0, 9.0, 9.0], [0.0, 0.0, 0.0, float("inf"), 3.0]])
    for sr in (0, 2):
        out = roi_align(torch.ones(1, 1, 10, 10), bad, 2, sampling_ratio=sr, impl="torch")
        assert torch.isnan(out[0]).all() and torch.isnan(out[2]).all() and torch.all(out[1] == 1)


def test_bf16_autocast_close_to_fp32():
    feat = torch.randn(1, 8, 16, 16)
    rois = _rois(4, 10, 1, 16).float()
    ref = roi_align(feat, rois, 4, 1.0, 0, True, impl="torch")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = roi_align(feat, rois, 4, 1.0, 0, True, impl="torch")
    assert torch.allclose(out.float(), ref, atol=0.05, rtol=0.02)
    bf16 = roi_align(feat.bfloat16(), rois, 4, 1.0, 0, True, impl="torch")
    assert bf16.dtype == torch.bfloat16 and torch.allclose(bf16.float(), ref, atol=0.05, rtol=0.02)
    fp16 = roi_align(feat.half(), rois, 4, 1.0, 0, True, impl="torch")
    assert fp16.dtype == torch.float16 and torch.allclose(fp16.float(), ref, atol=5e-3, rtol=5e-3)


def test_fpn_level_assignment_hand_values():
    def sq(s):
        return torch.tensor([[0.0, 0.0, s, s]])

    sizes = [224.0, 223.0, 112.0, 448.0, 10.0, 2000.0]
    got = [assign_fpn_levels(sq(s)).item() for s in sizes]
    # floor(4 + log2(s / 224)): 224 -> 4, 223 -> 3, 112 -> 3, 448 -> 5, tiny -> clamp 2, huge -> clamp 5
    assert got == [4, 3, 3, 5, 2, 5]
    assert assign_fpn_levels(sq(100.0), min_level=3, max_level=6).item() == 3
    assert assign_fpn_levels(torch.zeros(0, 4)).shape == (0,)


def test_multilevel_equals_per_level_pooling():
    strides = (4, 8, 16, 32)
    feats = [torch.randn(2, 3, 512 // s, 512 // s, dtype=torch.float64) for s in strides]
    rois = torch.tensor(
        [[0, 10, 10, 30, 30], [1, 0, 0, 120, 120], [0, 5, 40, 305, 340], [1, 10, 20, 510, 480], [0, 0, 0, 128, 60]],
        dtype=torch.float64,
    )
    out = multilevel_roi_align(feats, rois, 3, strides, impl="torch")
    levels = assign_fpn_levels(rois[:, 1:])
    assert levels.tolist() == [2, 3, 4, 5, 2]
    for i in range(rois.shape[0]):
        lv = levels[i].item() - 2
        one = ref_roi_align(feats[lv], rois[i : i + 1], 3, 3, 1.0 / strides[lv], 0, True)
        assert torch.allclose(out[i : i + 1], one, atol=1e-12)
    with pytest.raises(ValueError, match="powers of two"):
        multilevel_roi_align(feats, rois, 3, (4, 8, 12, 32))
    assert multilevel_roi_align(feats, torch.zeros(0, 5), 3, strides).shape == (0, 3, 3, 3)


def test_torchvision_unavailable_is_explicit():
    if torchvision_ops() is not None:
        pytest.skip("torchvision is importable here")
    with pytest.raises(ImportError):
        roi_align(torch.zeros(1, 1, 4, 4), torch.tensor([[0.0, 0, 0, 2, 2]]), 2, impl="torchvision")


@pytest.mark.skipif(torchvision_ops() is None, reason="torchvision's compiled ops are not importable")
@pytest.mark.parametrize("aligned", [True, False])
def test_agrees_with_torchvision(aligned):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    feat = torch.randn(2, 4, 20, 24, dtype=torch.float64, device=device)
    rois = _rois(5, 30, 2, 20).to(device)
    for sr in (0, 2):
        a = roi_align(feat, rois, (5, 4), 0.5, sr, aligned, impl="torch")
        b = roi_align(feat, rois, (5, 4), 0.5, sr, aligned, impl="torchvision")
        assert torch.allclose(a, b, atol=1e-10)


# ---- the sparse (embedding_bag) path against the crop path and the per-sample loop ----


def _mixed_rois(seed, n_img, h, w, k=24):
    """Random boxes plus hand-picked edge cases, in image pixels for spatial_scale 0.5."""
    g = torch.Generator().manual_seed(seed)
    size = torch.tensor([2.0 * w, 2.0 * h], dtype=torch.float64)
    xy = (torch.rand(k, 2, generator=g, dtype=torch.float64) * 1.4 - 0.2) * size  # some partly outside
    wh = torch.rand(k, 2, generator=g, dtype=torch.float64) ** 2 * size  # many small, some large
    rois = torch.cat([torch.randint(0, n_img, (k, 1), generator=g).double(), xy, xy + wh], dim=1)
    special = torch.tensor(
        [
            [0, 3.0, 3.0, 3.0, 3.0],  # zero size
            [0, 5.0, 4.0, 5.4, 4.3],  # tiny (< 1 feature pixel)
            [n_img - 1, -30.0, -25.0, 2.0 * w + 40, 2.0 * h + 33],  # huge, covers the whole map
            [0, -20.0, -20.0, -4.0, -6.0],  # entirely outside (top left)
            [0, 2.0 * w + 3, 1.0, 2.0 * w + 9, 9.0],  # entirely right of the map
            [0, 9.0, 8.0, 4.0, 2.0],  # x2 < x1, y2 < y1
            [n_img - 1, 2.0 * w - 3, 2.0 * h - 3, 2.0 * w + 1, 2.0 * h + 1],  # bottom-right corner
        ],
        dtype=torch.float64,
    )
    return torch.cat([rois, special])


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 1, 3])
def test_sparse_path_equals_crop_path(aligned, sampling_ratio):
    g = torch.Generator().manual_seed(11)
    feat = torch.randn(2, 3, 9, 13, generator=g, dtype=torch.float64, requires_grad=True)
    rois = _mixed_rois(12, 2, 9, 13)
    new = roi_align(feat, rois, (3, 4), 0.5, sampling_ratio, aligned, impl="torch")
    old = roi_align(feat, rois, (3, 4), 0.5, sampling_ratio, aligned, impl="torch_reference")
    assert new.shape == (rois.shape[0], 3, 3, 4)
    assert torch.allclose(new, old, atol=1e-12, rtol=0)
    assert new[-4:-2].abs().max() == 0  # boxes outside the map pool zeros
    one = feat.detach()[:, :1]  # the per-sample loop (independent of the shared sampling code), one channel
    assert torch.allclose(new[:, :1], ref_roi_align(one, rois, 3, 4, 0.5, sampling_ratio, aligned), atol=1e-12)
    gout = torch.randn(new.shape, generator=g, dtype=torch.float64)
    g_new = torch.autograd.grad(new, feat, gout)[0]
    g_old = torch.autograd.grad(old, feat, gout)[0]
    assert torch.allclose(g_new, g_old, atol=1e-12, rtol=0)


def test_sparse_path_matches_loop_on_huge_and_tiny_rois():
    feat = torch.randn(1, 1, 3, 4, dtype=torch.float64)
    rois = torch.tensor([[0, -40.0, -40.0, 50.0, 45.0], [0, 1.2, 0.7, 1.3, 0.75], [0, -3.0, 1.0, 9.0, 1.5]],
                        dtype=torch.float64)
    for aligned in (True, False):
        out = roi_align(feat, rois, 2, 1.0, 0, aligned, impl="torch")  # the huge one has 43 x 43 samples per bin
        assert torch.allclose(out, ref_roi_align(feat, rois, 2, 2, 1.0, 0, aligned), atol=1e-12)


def test_huge_roi_hand_value_and_bounded_work():
    # 8 x 8 map of ones; box 2e8 wide, legacy (aligned=False), one bin: 2e8 x 2e8 samples at -1e8 + g + 0.5.
    # Only the 9 positions -0.5, 0.5, ..., 7.5 per axis lie in [-1, 8]: value 81 / (2e8)^2. Looping over (or
    # allocating) 2e8 samples per axis would not finish here; the window keeps only the valid ones.
    feat = torch.ones(1, 2, 8, 8, dtype=torch.float64)
    rois = torch.tensor([[0, -1e8, -1e8, 1e8, 1e8]], dtype=torch.float64)
    for impl in ("torch", "torch_reference"):
        out = roi_align(feat, rois, 1, 1.0, 0, False, impl=impl)
        assert torch.allclose(out, torch.full_like(out, 81 / 4e16), rtol=1e-9, atol=0)
    # fixed sampling: the 2 x 2 samples sit at +-5e7, outside the map -> 0
    assert roi_align(feat, rois, 1, 1.0, 2, False, impl="torch").abs().max() == 0
    ty = ra._sample_window(torch.tensor([-1e8], dtype=torch.float64), torch.tensor([2e8], dtype=torch.float64), 7,
                           torch.tensor([28571429]), torch.tensor([8]))[1]
    assert 0 < ty.item() <= 2 * 8 + 10


def test_nan_pattern_matches_loop():
    # sample at (2.0, 2.0): its high corners (row 3, col 3) have weight 0 but are read, as in torchvision
    feat = torch.zeros(1, 1, 6, 6, dtype=torch.float64)
    feat[0, 0, 3, 2] = float("nan")
    roi = torch.tensor([[0, 1.5, 1.5, 2.5, 2.5]], dtype=torch.float64)
    assert torch.isnan(roi_align(feat, roi, 1, 1.0, 1, False, impl="torch")).all()
    assert torch.isnan(ref_roi_align(feat, roi, 1, 1, 1.0, 1, False)).all()
    g = torch.Generator().manual_seed(5)
    feat = torch.randn(1, 2, 8, 9, generator=g, dtype=torch.float64)
    feat[0, 0, 2, 3] = feat[0, 1, 6, 7] = float("nan")
    rois = _rois(6, 12, 1, 16)
    for sr in (0, 2):
        out = roi_align(feat, rois, 3, 1.0, sr, True, impl="torch")
        ref = ref_roi_align(feat, rois, 3, 3, 1.0, sr, True)
        assert torch.equal(torch.isnan(out), torch.isnan(ref)) and torch.isnan(out).any()
        assert torch.allclose(out.nan_to_num(), ref.nan_to_num(), atol=1e-12)


def test_nan_box_gives_nan_rows_and_finite_gradient():
    feat = torch.randn(1, 2, 6, 6, requires_grad=True)
    rois = torch.tensor([[0.0, 1.0, 1.0, 4.0, 5.0], [0.0, float("nan"), 1.0, 3.0, 3.0]])
    out = roi_align(feat, rois, 2, impl="torch")
    assert torch.isnan(out[1]).all() and torch.isfinite(out[0]).all()
    out[0].sum().backward()
    assert torch.isfinite(feat.grad).all() and feat.grad.abs().sum() > 0


@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_multilevel_sparse_equals_crop_path_and_layouts(sampling_ratio, monkeypatch):
    strides = (4, 8, 16, 32)
    g = torch.Generator().manual_seed(21)
    feats = [torch.randn(2, 3, 128 // s, 96 // s, generator=g, dtype=torch.float64, requires_grad=True)
             for s in strides]
    rois = torch.cat([_rois(22, 40, 2, 120), torch.tensor([[1, -50.0, -60.0, 300.0, 250.0]], dtype=torch.float64)])
    assert len(set(assign_fpn_levels(rois[:, 1:], canonical_box_size=28.0).tolist())) == 4  # all levels used
    kw = dict(sampling_ratio=sampling_ratio, canonical_box_size=28.0)
    new = multilevel_roi_align(feats, rois, (3, 2), strides, **kw, impl="torch")
    old = multilevel_roi_align(feats, rois, (3, 2), strides, **kw, impl="torch_reference")
    assert torch.allclose(new, old, atol=1e-12, rtol=0)
    gout = torch.randn(new.shape, generator=g, dtype=torch.float64)
    g_new = torch.autograd.grad(new, feats, gout)
    g_old = torch.autograd.grad(old, feats, gout)
    assert all(torch.allclose(a, b, atol=1e-12, rtol=0) for a, b in zip(g_new, g_old))
    cl = [f.detach().to(memory_format=torch.channels_last).requires_grad_() for f in feats]
    out_cl = multilevel_roi_align(cl, rois, (3, 2), strides, **kw, impl="torch")
    assert torch.allclose(out_cl, new, atol=1e-12, rtol=0)
    g_cl = torch.autograd.grad(out_cl, cl, gout)
    assert all(torch.allclose(a, b, atol=1e-12, rtol=0) for a, b in zip(g_cl, g_new))
    monkeypatch.setattr(ra, "_CHUNK_ELEMENTS", 50)  # several RoIs per chunk, several chunks per level
    chunked = multilevel_roi_align(feats, rois, (3, 2), strides, **kw, impl="torch")
    assert torch.allclose(chunked, new, atol=1e-12, rtol=0)
    g_chunk = torch.autograd.grad(chunked, feats, gout)
    assert all(torch.allclose(a, b, atol=1e-12, rtol=0) for a, b in zip(g_chunk, g_new))


def test_multilevel_gradcheck_and_unused_level():
    feats = [torch.randn(1, 2, 6, 6, dtype=torch.float64, requires_grad=True),
             torch.randn(1, 2, 3, 3, dtype=torch.float64, requires_grad=True),
             torch.randn(1, 2, 2, 2, dtype=torch.float64, requires_grad=True)]
    rois = torch.tensor([[0, 2.0, 3.0, 13.0, 17.0], [0, 1.0, 1.0, 10.0, 12.0]], dtype=torch.float64)
    levels = assign_fpn_levels(rois[:, 1:], 2, 4, canonical_box_size=12.0, canonical_level=3)
    assert levels.tolist() == [3, 2]  # nothing on the coarsest map

    def fn(*f):
        return multilevel_roi_align(list(f), rois, 2, (4, 8, 16), canonical_box_size=12.0, canonical_level=3,
                                    impl="torch")

    assert torch.autograd.gradcheck(fn, tuple(feats))
    fn(*feats).sum().backward()
    assert torch.all(feats[2].grad == 0) and feats[0].grad.abs().sum() > 0


def test_empty_map_and_all_empty_bins():
    out = roi_align(torch.randn(1, 2, 0, 5), torch.tensor([[0.0, 0, 0, 4, 4]]), 2, impl="torch")
    assert out.shape == (1, 2, 2, 2) and torch.all(out == 0)
    feat = torch.randn(1, 2, 5, 5, requires_grad=True)
    out = roi_align(feat, torch.tensor([[0.0, 20, 20, 30, 30]]), 3, impl="torch")
    assert torch.all(out == 0)
    out.sum().backward()
    assert torch.all(feat.grad == 0)


@pytest.mark.parametrize("sampling_ratio", [0, 1, 4])
def test_chunk_bound_covers_touched_pixels(sampling_ratio):
    g = torch.Generator().manual_seed(31)
    k, size = 400, 23
    start = torch.rand(k, generator=g, dtype=torch.float64) * 40 - 12
    length = torch.rand(k, generator=g, dtype=torch.float64) ** 3 * 60 - 1  # mostly small, some negative
    grid = torch.full((k,), sampling_ratio) if sampling_ratio else torch.ceil(length / 5).clamp(min=0).long()
    sz = torch.full((k,), size)
    _, _, n = ra._axis_pixels(start, length, 5, grid, sz)
    bound = ra._touched_bound(start, length, 5, grid, sz)
    assert torch.all(n.amax(dim=1) <= bound)
    assert torch.any(n.amax(dim=1) == bound)  # and it is tight for some RoIs
    # hand case: bin [0.5, 2.5) sampled at 0.75, 1.25, 1.75, 2.25 touches pixels 0..3 = ceil(2) + 2; corner
    # weights (low, high): (.25, .75), (.75, .25), (.25, .75), (.75, .25) -> per pixel (.25, 1.75, 1.75, .25) / 4
    one = ra._axis_pixels(torch.tensor([0.5]), torch.tensor([2.0]), 1, torch.tensor([4]), torch.tensor([10]))
    assert one[2].item() == 4 and one[0][0, 0].tolist() == [0, 1, 2, 3]
    assert torch.allclose(one[1][0, 0], torch.tensor([0.0625, 0.4375, 0.4375, 0.0625]))


def test_multilevel_autocast_and_half_inputs():
    strides = (4, 8)
    feats = [torch.randn(1, 4, 32 // s, 32 // s, requires_grad=True) for s in strides]
    rois = torch.tensor([[0, 1.0, 2.0, 9.0, 12.0], [0, 3.0, 1.0, 31.0, 30.0]])
    ref = multilevel_roi_align(feats, rois, 3, strides, canonical_box_size=16.0, canonical_level=3, impl="torch")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = multilevel_roi_align(feats, rois, 3, strides, canonical_box_size=16.0, canonical_level=3, impl="torch")
    assert out.dtype == torch.bfloat16 and torch.allclose(out.float(), ref, atol=0.05, rtol=0.02)
    out.float().sum().backward()
    assert all(f.grad is not None and f.grad.dtype == torch.float32 and f.grad.abs().sum() > 0 for f in feats)
    half = multilevel_roi_align([f.detach().half() for f in feats], rois, 3, strides, canonical_box_size=16.0,
                                canonical_level=3, impl="torch")
    assert half.dtype == torch.float16 and torch.allclose(half.float(), ref, atol=5e-3, rtol=5e-3)


# ---- dispatch ("auto" runs the sparse torch path on the CPU) and the per-level path's reordering ----


def test_auto_is_the_sparse_path_on_cpu():
    cpu = torch.device("cpu")
    assert ra.roi_align_impl("auto", cpu) == "torch"
    assert ra.roi_align_impl("torch", cpu) == "torch"
    assert ra.roi_align_impl("torch_reference", cpu) == "torch_reference"
    with pytest.raises(ValueError, match="impl must be"):
        ra.roi_align_impl("fast", cpu)
    feat = torch.randn(2, 3, 12, 10, dtype=torch.float64)
    rois = _mixed_rois(41, 2, 12, 10)
    assert torch.equal(roi_align(feat, rois, 3, 0.5, 0, True), roi_align(feat, rois, 3, 0.5, 0, True, impl="torch"))
    feats = [torch.randn(2, 3, 64 // s, 48 // s, dtype=torch.float64) for s in (4, 8, 16)]
    boxes = _rois(42, 30, 2, 60)
    assert torch.equal(multilevel_roi_align(feats, boxes, 2, (4, 8, 16), canonical_box_size=20.0),
                       multilevel_roi_align(feats, boxes, 2, (4, 8, 16), canonical_box_size=20.0, impl="torch"))


def _per_roi_pooling(feats, rois, size, strides, **kw):
    """The obvious reference: each RoI pooled alone from its level, stacked in input order."""
    levels = assign_fpn_levels(rois[:, 1:], 2, 1 + len(strides), kw.get("canonical_box_size", 224.0)) - 2
    return torch.cat([ref_roi_align(feats[lv], rois[i:i + 1], size, size, 1.0 / strides[lv], 0, True)
                      for i, lv in enumerate(levels.tolist())])


@pytest.mark.parametrize("case", ["random", "one_level", "empty"])
def test_per_level_path_keeps_roi_order_and_gradients(case):
    strides = (4, 8, 16, 32)
    g = torch.Generator().manual_seed(43)
    feats = [torch.randn(2, 2, 64 // s, 64 // s, generator=g, dtype=torch.float64, requires_grad=True)
             for s in strides]
    rois = {"random": _rois(44, 17, 2, 60),  # levels interleaved in input order
            "one_level": torch.tensor([[1, 1.0, 2.0, 5.0, 6.0], [0, 3.0, 1.0, 6.0, 4.0]], dtype=torch.float64),
            "empty": torch.zeros(0, 5, dtype=torch.float64)}[case]
    kw = dict(canonical_box_size=20.0)
    if case == "random":
        lv = assign_fpn_levels(rois[:, 1:], 2, 5, 20.0)
        assert len(set(lv.tolist())) >= 3 and not torch.equal(lv, lv.sort().values)
    per_level = multilevel_roi_align(feats, rois, 2, strides, **kw, impl="torch_reference")  # one pass per level
    fused = multilevel_roi_align(feats, rois, 2, strides, **kw, impl="torch")  # all levels in one pass
    assert per_level.shape == fused.shape == (rois.shape[0], 2, 2, 2)
    assert torch.allclose(per_level, fused, atol=1e-12, rtol=0)
    if rois.shape[0]:
        assert torch.allclose(per_level, _per_roi_pooling(feats, rois, 2, strides, **kw), atol=1e-12, rtol=0)
    gout = torch.randn(per_level.shape, generator=g, dtype=torch.float64)
    g_per_level = torch.autograd.grad((per_level * gout).sum(), feats, allow_unused=True)
    g_fused = torch.autograd.grad((fused * gout).sum(), feats, allow_unused=True)
    for a, b in zip(g_per_level, g_fused):
        a = torch.zeros_like(b) if a is None else a  # a level no RoI uses: no gradient or a zero one
        b = torch.zeros_like(a) if b is None else b
        assert torch.allclose(a, b, atol=1e-12, rtol=0)


@pytest.mark.skipif(torchvision_ops() is None, reason="torchvision's compiled ops are not importable")
def test_multilevel_torchvision_path_equals_sparse_path():
    strides = (4, 8, 16, 32)
    g = torch.Generator().manual_seed(45)
    feats = [torch.randn(2, 3, 96 // s, 64 // s, generator=g, requires_grad=True) for s in strides]
    rois = torch.cat([_rois(46, 25, 2, 90).float(), torch.tensor([[1, -10.0, -8.0, 200.0, 150.0]])])
    kw = dict(sampling_ratio=0, canonical_box_size=24.0)
    tv = multilevel_roi_align(feats, rois, (3, 2), strides, **kw, impl="torchvision")
    ours = multilevel_roi_align(feats, rois, (3, 2), strides, **kw, impl="auto")
    assert torch.allclose(tv, ours, atol=1e-5, rtol=1e-5)
    gout = torch.randn(tv.shape, generator=g)
    for a, b in zip(torch.autograd.grad((tv * gout).sum(), feats, allow_unused=True),
                    torch.autograd.grad((ours * gout).sum(), feats, allow_unused=True)):
        a = torch.zeros_like(b) if a is None else a
        b = torch.zeros_like(a) if b is None else b
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)
