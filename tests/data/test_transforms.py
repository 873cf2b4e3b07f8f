import math

import numpy as np
import pytest
import torch

from omniseg.data.batch import Sample, Targets
from omniseg.data.transforms import (
    ColorJitter,
    Compose,
    LargeScaleJitter,
    QuantizeApproxBoxes,
    RandomHFlip,
    ResizeShortestEdge,
    build_train_transforms,
    crop,
    hflip,
    quantize_box,
    resize,
)
from omniseg.ops.rle import rle_encode, rle_to_box


def _ref_tight_box(m: np.ndarray) -> list[float]:
    """Slow reference: loop over pixels."""
    xs, ys = [], []
    for y in range(m.shape[0]):
        for x in range(m.shape[1]):
            if m[y, x]:
                xs.append(x)
                ys.append(y)
    if not xs:
        return [0.0, 0.0, 0.0, 0.0]
    return [min(xs), min(ys), max(xs) + 1.0, max(ys) + 1.0]


def _sample(h: int = 20, w: int = 30, seed: int = 0) -> Sample:
    """Four instances: masked (box = mask's tight box), box-only, approximate box, text-only."""
    rng = np.random.default_rng(seed)
    m = np.zeros((h, w), np.uint8)
    m[4:11, 6:17] = 1
    m[11:14, 6:9] = 1
    masks = torch.zeros(4, h, w, dtype=torch.uint8)
    masks[0] = torch.from_numpy(m)
    t = Targets(
        boxes=torch.tensor([rle_to_box(rle_encode(m)), [18.0, 2.0, 27.5, 9.0], [1.5, 12.0, 14.0, 19.0],
                            [0.0, 0.0, 0.0, 0.0]]),
        masks=masks,
        has_box=torch.tensor([True, True, True, False]),
        box_exact=torch.tensor([True, True, False, False]),
        has_mask=torch.tensor([True, False, False, False]),
        is_crowd=torch.zeros(4, dtype=torch.bool),
        is_thing=torch.ones(4, dtype=torch.bool),
        category_ids=torch.tensor([1, 2, -1, 5]),
        texts=["cat", "dog", "a red kite", "tree"],
    )
    image = torch.from_numpy(rng.integers(0, 256, (3, h, w), dtype=np.uint8))
    return Sample(image=image, targets=t, image_id=7, orig_size=(h, w))


def test_hflip_hand_worked_and_twice_is_identity():
    s = _sample()
    f = hflip(s)
    assert torch.equal(f.image, torch.from_numpy(s.image.numpy()[:, :, ::-1].copy()))
    assert f.targets.boxes[1].tolist() == [30 - 27.5, 2.0, 30 - 18.0, 9.0]
    assert f.targets.boxes[3].tolist() == [0, 0, 0, 0]  # no box stays zero
    assert f.targets.boxes[0].tolist() == _ref_tight_box(f.targets.masks[0].numpy())
    ff = hflip(f)
    assert torch.equal(ff.image, s.image) and torch.equal(ff.targets.masks, s.targets.masks)
    assert torch.equal(ff.targets.boxes, s.targets.boxes)


@pytest.mark.parametrize("size", [(40, 60), (13, 17), (7, 45), (20, 30)])
def test_resize_keeps_mask_and_box_consistent(size):
    s = _sample()
    r = resize(s, *size)
    assert r.image.shape == (3, *size) and r.targets.masks.shape == (4, *size)
    tight = _ref_tight_box(r.targets.masks[0].numpy())
    assert np.allclose(r.targets.boxes[0].tolist(), tight, atol=1.0)
    sx, sy = size[1] / 30, size[0] / 20
    assert torch.allclose(r.targets.boxes[1], torch.tensor([18 * sx, 2 * sy, 27.5 * sx, 9 * sy]))
    assert r.targets.boxes[3].tolist() == [0, 0, 0, 0]
    assert r.targets.texts == s.targets.texts and torch.equal(r.targets.box_exact, s.targets.box_exact)


def test_resize_empty_targets():
    s = _sample()
    s = s.replace(targets=Targets.empty(20, 30))
    r = resize(s, 10, 15)
    assert r.targets.masks.shape == (0, 10, 15) and r.targets.boxes.shape == (0, 4)


def test_crop_hand_worked():
    s = _sample()
    # window rows [5, 20), cols [10, 30): cuts the mask (box recomputed from the mask), keeps the
    # box-only instance inside (translated), clips the approximate box, keeps the text-only one.
    c = crop(s, 5, 10, 15, 20)
    t = c.targets
    assert c.image.shape == (3, 15, 20) and torch.equal(c.image, s.image[:, 5:20, 10:30])
    assert t.texts == ["cat", "dog", "a red kite", "tree"] and c.num_dropped == 0
    assert t.boxes[0].tolist() == [0.0, 0.0, 7.0, 6.0]  # mask rows 5..10, cols 10..16 (the leg is cut)
    assert t.boxes[0].tolist() == _ref_tight_box(t.masks[0].numpy())
    assert t.boxes[1].tolist() == [8.0, 0.0, 17.5, 4.0]  # clipped at the top (no mask)
    assert t.boxes[2].tolist() == [0.0, 7.0, 4.0, 14.0]
    assert t.boxes[3].tolist() == [0, 0, 0, 0]
    # a window that misses the mask and the approximate box drops them and counts them
    c2 = crop(s, 0, 18, 10, 12)
    assert c2.targets.texts == ["dog", "tree"] and c2.num_dropped == 2
    assert c2.targets.boxes[0].tolist() == [0.0, 2.0, 9.5, 9.0]


def test_crop_fully_inside_box_is_only_translated():
    s = _sample()
    c = crop(s, 1, 1, 19, 29)
    assert torch.equal(c.targets.boxes[:3], s.targets.boxes[:3] - torch.tensor([1.0, 1.0, 1.0, 1.0]))


def test_crop_rejects_empty_window():
    with pytest.raises(ValueError, match="empty window"):
        crop(_sample(), 25, 0, 5, 5)


def test_quantize_box_hand_worked():
    assert quantize_box((10.5, 20.2, 30.1, 40.0), 8.0, 100, 100) == (8.0, 16.0, 32.0, 40.0)
    assert quantize_box((1.0, 1.0, 97.0, 95.0), 16.0, 100, 100) == (0.0, 0.0, 100.0, 96.0)  # clipped at W


def test_quantization_grid_follows_shorter_edge():
    q = QuantizeApproxBoxes(choices=(8,))
    for (h, w), grid in (((256, 512), 8.0), ((512, 1024), 16.0), ((1024, 384), 12.0)):
        t = Targets.empty(h, w)
        t = Targets(boxes=torch.tensor([[5.0, 7.0, 101.0, 99.5]]), masks=torch.zeros(1, h, w, dtype=torch.uint8),
                    has_box=torch.tensor([True]), box_exact=torch.tensor([False]), has_mask=torch.tensor([False]),
                    is_crowd=torch.tensor([False]), is_thing=torch.tensor([True]),
                    category_ids=torch.tensor([-1]), texts=["x"])
        s = Sample(image=torch.zeros(3, h, w, dtype=torch.uint8), targets=t)
        b = q(s, np.random.default_rng(0)).targets.boxes[0].tolist()
        expect = [math.floor(5 / grid) * grid, math.floor(7 / grid) * grid,
                  math.ceil(101 / grid) * grid, math.ceil(99.5 / grid) * grid]
        assert b == expect


def test_quantization_only_grows_approximate_boxes():
    s = _sample(h=64, w=96)
    rng = np.random.default_rng(0)
    for _ in range(40):
        x0, y0 = rng.uniform(0, 40), rng.uniform(0, 30)
        box = [x0, y0, x0 + rng.uniform(1, 50), y0 + rng.uniform(1, 30)]
        t = s.targets
        s = s.replace(targets=Targets(**{**t.__dict__, "boxes": torch.tensor([box, box, box, [0.0] * 4])}))
        out = QuantizeApproxBoxes()(s, rng).targets.boxes
        assert torch.equal(out[:2], s.targets.boxes[:2])  # exact boxes untouched
        assert out[3].tolist() == [0, 0, 0, 0]
        b, o = s.targets.boxes[2].tolist(), out[2].tolist()
        assert o[0] <= b[0] and o[1] <= b[1] and o[2] >= b[2] and o[3] >= b[3]
        assert o[2] <= 96 and o[3] <= 64
        if o != b:  # some Q was drawn: edges lie on the grid or the image border
            grids = [q * 64 / 256 for q in (8, 16, 32)]
            assert any(all(v % g == 0 or v in (96, 64) for v in o) for g in grids)


def test_quantization_none_leaves_boxes_unchanged():
    s = _sample()
    out = QuantizeApproxBoxes(choices=(None,))(s, np.random.default_rng(0))
    assert torch.equal(out.targets.boxes, s.targets.boxes)


def test_lsj_consistent_and_deterministic():
    t = LargeScaleJitter(output_size=32, min_scale=0.3, max_scale=2.0)
    cropped = 0
    for seed in range(12):
        s = _sample()
        a, b = t(s, np.random.default_rng(seed)), t(s, np.random.default_rng(seed))
        assert torch.equal(a.image, b.image) and torch.equal(a.targets.boxes, b.targets.boxes)
        h, w = a.size
        assert h <= 32 and w <= 32
        scale = np.random.default_rng(seed).uniform(0.3, 2.0)  # the first draw is the scale
        f = scale * 32 / 30
        assert (h, w) == (min(32, round(20 * f)), min(32, round(30 * f)))
        cropped += round(30 * f) > 32
        kept = a.targets
        assert len(kept) + a.num_dropped == 4
        if kept.has_mask.any():
            i = int(torch.nonzero(kept.has_mask)[0])
            tight = _ref_tight_box(kept.masks[i].numpy())
            assert np.allclose(kept.boxes[i].tolist(), tight, atol=1.0)
        assert "tree" in kept.texts  # text-only instances are never dropped
    assert cropped > 0


def test_flip_and_color_jitter():
    s = _sample()
    flipped = RandomHFlip(p=1.0)(s, np.random.default_rng(0))
    assert torch.equal(flipped.image, hflip(s).image)
    assert RandomHFlip(p=0.0)(s, np.random.default_rng(0)) is s
    same = ColorJitter(0.0, 0.0, 0.0)(s, np.random.default_rng(0))
    assert torch.equal(same.image, s.image)
    j = ColorJitter()(s, np.random.default_rng(1))
    assert not torch.equal(j.image, s.image) and j.image.dtype == torch.uint8
    assert torch.equal(j.targets.boxes, s.targets.boxes)
    # brightness only, hand-worked: a factor f scales every pixel
    f = float(np.random.default_rng(2).uniform(0.5, 1.5))
    b = ColorJitter(0.5, 0.0, 0.0)(s, np.random.default_rng(2))
    assert torch.equal(b.image, (s.image.float() * f).round().clamp(0, 255).to(torch.uint8))


def test_resize_shortest_edge_and_compose():
    s = _sample()
    r = ResizeShortestEdge((10,), max_size=100)(s, np.random.default_rng(0))
    assert r.size == (10, 15)
    r = ResizeShortestEdge((40,), max_size=45)(s, np.random.default_rng(0))
    assert r.size == (30, 45)
    pipe = build_train_transforms(output_size=32)
    a, b = pipe(s, np.random.default_rng(5)), pipe(s, np.random.default_rng(5))
    assert torch.equal(a.image, b.image) and torch.equal(a.targets.boxes, b.targets.boxes)
    assert Compose([])(s, np.random.default_rng(0)) is s


def _ref_crop_instance(mask, has_mask, box, has_box, top, left, h, w):
    """Slow per-instance reference of crop's rules; returns None when the instance is dropped."""
    m = mask[top:top + h, left:left + w]
    if has_mask and mask.any() and not m.any():
        return None
    if not has_box:
        return [0.0, 0.0, 0.0, 0.0]
    x0, y0, x1, y1 = box[0] - left, box[1] - top, box[2] - left, box[3] - top
    inside = x0 >= 0 and y0 >= 0 and x1 <= w and y1 <= h
    if inside:
        return [x0, y0, x1, y1]
    if has_mask and m.any():
        return _ref_tight_box(m)
    c = [min(max(x0, 0), w), min(max(y0, 0), h), min(max(x1, 0), w), min(max(y1, 0), h)]
    if not has_mask and (c[2] - c[0]) * (c[3] - c[1]) <= 0:
        return None
    return c


def test_crop_matches_slow_reference_on_random_windows():
    rng = np.random.default_rng(7)
    for _ in range(25):
        s = _sample()
        top, left = int(rng.integers(0, 18)), int(rng.integers(0, 28))
        ch, cw = int(rng.integers(1, 20 - top + 1)), int(rng.integers(1, 30 - left + 1))
        got = crop(s, top, left, ch, cw)
        t = s.targets
        expect = [(_ref_crop_instance(t.masks[i].numpy(), bool(t.has_mask[i]), t.boxes[i].tolist(),
                                      bool(t.has_box[i]), top, left, ch, cw), t.texts[i]) for i in range(4)]
        kept = [(b, txt) for b, txt in expect if b is not None]
        assert got.targets.texts == [txt for _, txt in kept]
        assert got.num_dropped == 4 - len(kept)
        assert np.allclose(got.targets.boxes.numpy().reshape(-1, 4), np.array([b for b, _ in kept]).reshape(-1, 4))
        assert torch.equal(got.image, s.image[:, top:top + ch, left:left + cw])


def test_resize_drops_masks_that_vanish():
    s = _sample()
    tiny = torch.zeros(20, 30, dtype=torch.uint8)
    tiny[0, 1] = 1  # one pixel: gone at 1/10 scale with nearest sampling
    t = s.targets
    s = s.replace(targets=Targets(**{**t.__dict__, "masks": torch.stack([tiny, *t.masks[1:]]),
                                     "boxes": torch.cat([torch.tensor([[1.0, 0.0, 2.0, 1.0]]), t.boxes[1:]])}))
    assert int(torch.nn.functional.interpolate(tiny[None, None].float(), size=(2, 3),
                                               mode="nearest-exact").sum()) == 0
    r = resize(s, 2, 3)
    assert r.targets.texts == ["dog", "a red kite", "tree"] and r.num_dropped == 1
    assert resize(s, 40, 60).num_dropped == 0
