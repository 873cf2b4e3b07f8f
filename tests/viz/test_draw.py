"""draw_instances / draw_ground_truth / label placement / side_by_side / semantic label maps on tiny hand-made
images."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from omniseg.data.records import Instance, Segment
from omniseg.ops.rle import rle_encode
from omniseg.viz.draw import (
    DOT_SPACING_PX,
    GT_COLOR,
    HALO_COLOR,
    LABEL_BACKGROUND,
    color_for,
    draw_ground_truth,
    draw_instances,
    draw_semantic,
    font_size,
    label_image,
    label_position,
    line_width,
    mask_outline,
    semantic_palette,
    side_by_side,
)

H, W = 20, 30


def _gray(value: int = 100) -> np.ndarray:
    return np.full((H, W, 3), value, np.uint8)


def _mask(y0: int, y1: int, x0: int, x1: int, h: int = H, w: int = W) -> dict:
    m = np.zeros((h, w), np.uint8)
    m[y0:y1, x0:x1] = 1
    return rle_encode(m)


def _blend_reference(pixel: np.ndarray, color: tuple[int, int, int], alpha: float) -> list[int]:
    """Per-channel blend written out longhand (truncation to uint8 as in the drawing)."""
    return [int(min(255.0, max(0.0, float(p) * (1 - alpha) + c * alpha))) for p, c in zip(pixel, color)]


def test_color_for_stable_and_saturated() -> None:
    # worked once by hand: crc32(b"cat") = 2656977832, % 360 = 352, so hue 352/360 (a red with a
    # little blue); HSV (h = 352/360, s = 0.75, v = 1): sector 5, f = 0.8667, (v, p, q) =
    # (1, 0.25, 0.35) -> (255, 63, 89) after truncation. A literal pins the colour across
    # processes (a salted hash() would pass the in-process checks below and fail here).
    assert color_for("cat") == (255, 63, 89)
    for key in ("cat", "a red circle", 7, None, "", *range(1, 21)):
        c = color_for(key)
        assert c == color_for(key)  # deterministic
        assert len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c)
        assert max(c) == 255 and min(c) == 63  # value 1, saturation 0.75: int(255 * 0.25)
    assert color_for(3) == color_for("3")  # ids and their string form agree
    assert len({color_for(i) for i in range(1, 21)}) == 20  # ids 1..20 all get distinct colours
    assert color_for("cat") != color_for("dog")


def test_output_size_mode_and_untouched_input() -> None:
    img = _gray()
    out = draw_instances(img, [], show_labels=False)
    assert isinstance(out, Image.Image) and out.mode == "RGB" and out.size == (W, H)
    np.testing.assert_array_equal(np.asarray(out), img)
    draw_instances(img, [Instance("cat", 1, mask=_mask(2, 6, 3, 9))])
    assert (img == 100).all()  # the input array is not modified


def _outline_reference(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Slow obvious 1-pixel outline: a mask pixel with a 4-neighbour (on the image) outside the mask
    is on the contour; a pixel outside with a 4-neighbour in the mask is on the halo."""
    h, w = m.shape
    inner, halo = np.zeros_like(m), np.zeros_like(m)
    for y in range(h):
        for x in range(w):
            nb = [m[y + dy, x + dx] for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1))
                  if 0 <= y + dy < h and 0 <= x + dx < w]
            inner[y, x] = m[y, x] and not all(nb)
            halo[y, x] = not m[y, x] and any(nb)
    return inner, halo


def test_mask_outline_matches_slow_reference() -> None:
    rng = np.random.default_rng(0)
    m = rng.random((H, W)) < 0.4
    m[0, :] = True  # along the image border: no contour there
    inner, halo = mask_outline(m)
    ref_inner, ref_halo = _outline_reference(m)
    np.testing.assert_array_equal(inner, ref_inner)
    np.testing.assert_array_equal(halo, ref_halo)
    band = np.zeros((H, W), bool)
    band[:3] = True  # a region along the top border: its only contour is its lower edge
    assert np.flatnonzero(mask_outline(band)[0].any(axis=1)).tolist() == [2]
    # width 2: the contour of the mask, then the contour of what is left
    inner2, _ = mask_outline(m, 2)
    np.testing.assert_array_equal(inner2, ref_inner | _outline_reference(m & ~ref_inner)[0])


def test_ground_truth_is_outlined_on_the_untouched_image() -> None:
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    m = np.zeros((H, W), bool)
    m[4:12, 6:20] = True
    m[4:7, 6:9] = False  # not a rectangle
    inst = Instance("pink cross", 1, box=(6, 4, 20, 12), mask=rle_encode(m.astype(np.uint8)))
    out = np.asarray(draw_ground_truth(img, [inst], show_labels=False))
    inner, halo = _outline_reference(m)
    assert (out[inner] == GT_COLOR).all() and (out[halo] == HALO_COLOR).all()
    untouched = ~(inner | halo)
    np.testing.assert_array_equal(out[untouched], img[untouched])  # inside too: no fill, no recolouring
    assert untouched[m].sum() == m.sum() - inner.sum() > 0  # the object's inside is among them


def test_prediction_mask_outlined_and_lightly_filled() -> None:
    img = _gray(100)
    img[5, 5] = (10, 200, 40)
    inst = Instance("cat", 1, box=(3, 2, 9, 8), mask=_mask(2, 8, 3, 9), score=0.9)
    out = np.asarray(draw_instances(img, [inst], alpha=0.5, show_labels=False))
    c = color_for("cat")
    # hand-worked: the 6 x 6 square at rows 2..7, cols 3..8; its 1-pixel border is the contour,
    # the 4 x 4 inside is blended half-way to the class colour, the ring around it is the halo
    assert out[5, 5].tolist() == _blend_reference(img[5, 5], c, 0.5)
    assert out[4, 7].tolist() == _blend_reference(img[4, 7], c, 0.5)
    assert out[2, 3].tolist() == list(c) and out[7, 8].tolist() == list(c) and out[4, 3].tolist() == list(c)
    assert out[1, 3].tolist() == [0, 0, 0] and out[8, 8].tolist() == [0, 0, 0] and out[5, 9].tolist() == [0, 0, 0]
    assert out[1, 2].tolist() == [100, 100, 100]  # diagonal corner: not on the halo
    outside = np.ones((H, W), bool)
    outside[1:9, 2:10] = False
    np.testing.assert_array_equal(out[outside], img[outside])


def test_stuff_segments_outlined_thinly_and_thing_segments_skipped() -> None:
    img = _gray(100)
    stuff = Segment("sky", 9, _mask(0, 4, 0, W), is_thing=False)
    thing = Segment("cat", 1, _mask(10, 14, 0, 5), is_thing=True)
    out = np.asarray(draw_ground_truth(img, [], [stuff, thing], show_labels=False))
    assert (out[3] == 100 // 2 + 255 // 2).all()  # the stuff region's lower edge: half-way to white
    np.testing.assert_array_equal(out[:3], img[:3])  # its inside is not recoloured
    np.testing.assert_array_equal(out[4:], img[4:])  # thing segment and the rest untouched


def test_min_score_hides_low_predictions() -> None:
    img = _gray()
    low = Instance("cat", 1, box=(1, 1, 10, 10), mask=_mask(1, 10, 1, 10), score=0.2)
    high = Instance("dog", 2, box=(12, 1, 20, 10), mask=_mask(1, 10, 12, 20), score=0.9)
    out = np.asarray(draw_instances(img, [low, high], min_score=0.5, show_labels=False))
    np.testing.assert_array_equal(out[:, :11], img[:, :11])
    assert (out[5, 15] != img[5, 15]).any()


def _lit(out: Image.Image) -> np.ndarray:
    return np.asarray(out).sum(axis=2) > 0


def test_exact_box_is_a_solid_outline() -> None:
    lit = _lit(draw_instances(np.zeros((H, W, 3), np.uint8), [Instance("cat", 1, box=(2, 3, 12, 9))],
                              show_labels=False))
    ref = np.zeros((H, W), bool)
    ref[3, 2:12] = ref[8, 2:12] = True
    ref[3:9, 2] = ref[3:9, 11] = True
    np.testing.assert_array_equal(lit, ref)


@pytest.mark.parametrize("box", [(2.0, 3.0, 12.0, 9.0), (1.0, 1.0, 29.0, 19.0), (5.0, 5.0, 9.0, 8.0)])
def test_approximate_box_is_dotted(box) -> None:
    inst = Instance("a small dog", None, box=box, box_quality="approximate")
    lit = _lit(draw_instances(np.zeros((H, W, 3), np.uint8), [inst], show_labels=False))
    x0, y0, x1, y1 = (int(v) for v in box)
    x1, y1 = x1 - 1, y1 - 1
    # hand-worked reference: dots every DOT_SPACING_PX along each side from the top-left corner,
    # plus the far corners' columns / rows
    ref = np.zeros((H, W), bool)
    for x in range(x0, x1 + 1, DOT_SPACING_PX):
        ref[y0, x] = ref[y1, x] = True
    for y in range(y0, y1 + 1, DOT_SPACING_PX):
        ref[y, x0] = ref[y, x1] = True
    np.testing.assert_array_equal(lit, ref)
    top = lit[y0, x0:x1 + 1]
    assert 0 < top.sum() < top.size  # dotted, not solid
    assert not lit[y0 + 1:y1, x0 + 1:x1].any()  # nothing inside


def test_dotted_box_hand_values() -> None:
    inst = Instance("alp", None, box=(2, 2, 12, 6), box_quality="approximate")
    lit = _lit(draw_instances(np.zeros((H, W, 3), np.uint8), [inst], show_labels=False))
    # top row: x = 2, 5, 8 (every 3 px) and the right side's x = 11
    assert np.flatnonzero(lit[2]).tolist() == [2, 5, 8, 11]
    # left column: y = 2, 5 (top and bottom rows' ends)
    assert np.flatnonzero(lit[:, 2]).tolist() == [2, 5]


def _dark(out: np.ndarray) -> np.ndarray:
    """Pixels of the label background (the text is white, the colour strip bright)."""
    return (out == LABEL_BACKGROUND).all(axis=2)


def test_labels_drawn_above_box() -> None:
    img = np.full((60, 80, 3), 255, np.uint8)
    inst = Instance("cat", 1, box=(5, 40, 30, 55), score=0.5)
    without = np.asarray(draw_instances(img, [inst], show_labels=False, show_boxes=False))
    np.testing.assert_array_equal(without, img)
    dark = _dark(np.asarray(draw_instances(img, [inst], show_boxes=False)))
    rows, cols = np.flatnonzero(dark.any(axis=1)), np.flatnonzero(dark.any(axis=0))
    assert rows.max() == 39 and cols.min() == 5 + 3  # ends right above the box; after the 3-pixel strip
    assert 10 < rows.size < 20  # a readable height
    assert not dark[40:].any()


def test_label_position_hand_values() -> None:
    # fits: above the top-left corner
    assert label_position((10, 30, 40, 50), (20, 8), (100, 60)) == (10, 22)
    # box at the right edge: shifted left so the whole label is inside
    assert label_position((90, 30, 100, 50), (20, 8), (100, 60)) == (80, 22)
    # box at the top: shifted down onto the image
    assert label_position((10, 2, 40, 50), (20, 8), (100, 60)) == (10, 0)
    # box at the bottom-right corner, label wider than the space left
    assert label_position((95, 58, 100, 60), (30, 8), (100, 60)) == (70, 50)
    # no anchor: top-left corner
    assert label_position(None, (20, 8), (100, 60)) == (0, 0)
    # the spot above is taken: inside the box under its top edge
    assert label_position((10, 30, 40, 50), (20, 8), (100, 60), taken=[(0, 20, 40, 30)]) == (10, 30)
    # above and inside taken: below the box
    assert label_position((10, 30, 40, 50), (20, 8), (100, 60), taken=[(0, 20, 40, 38)]) == (10, 50)


def test_label_of_box_at_the_right_edge_stays_inside_the_image() -> None:
    img = np.full((40, 120, 3), 255, np.uint8)
    inst = Instance("long label", 1, box=(110, 20, 120, 35), score=0.75)
    out = np.asarray(draw_instances(img, [inst], show_boxes=False))
    dark = _dark(out)
    cols = np.flatnonzero(dark.any(axis=0))
    assert cols.max() == 119  # the label box reaches the right edge instead of being cut by it
    strip = (out == color_for("long label")).all(axis=2)
    x = int(np.flatnonzero(strip.any(axis=0)).min())  # the label box starts with its colour strip
    assert 0 < x < 110  # shifted left of the object's corner
    # the whole text drawn: its bright (anti-aliased white) pixels lie between the strip and the
    # padding before the right edge
    rows = np.flatnonzero(dark.any(axis=1))
    text = out[rows.min():rows.max() + 1, x + 3:].min(axis=2) > 150
    assert text.sum() > 20 and np.flatnonzero(text.any(axis=0)).max() + x + 3 < 119


def test_overlapping_labels_are_stacked() -> None:
    img = np.full((80, 80, 3), 255, np.uint8)
    a = Instance("a", 1, box=(10, 40, 30, 50))
    b = Instance("b", 2, box=(12, 40, 30, 50))  # the same corner: b's label would cover a's
    out = np.asarray(draw_instances(img, [a, b], show_boxes=False))
    strips = [(out == color_for(t)).all(axis=2) for t in ("a", "b")]
    ya, yb = (np.flatnonzero(s.any(axis=1)) for s in strips)
    assert ya.max() < yb.min() or yb.max() < ya.min()  # the two label boxes do not share a row


def test_label_of_mask_only_instance_sits_on_its_mask() -> None:
    img = np.full((60, 60, 3), 255, np.uint8)
    m = np.zeros((60, 60), np.uint8)
    m[40:50, 20:40] = 1
    out = np.asarray(draw_instances(img, [Instance("cat", 1, mask=rle_encode(m))], alpha=0.0))
    dark = _dark(out)
    assert np.flatnonzero(dark.any(axis=1)).max() == 39  # right above the mask's top row (over its halo)
    assert np.flatnonzero(dark.any(axis=0)).min() == 20 + 3
    phrase = _dark(np.asarray(draw_instances(img, [Instance("just words")])))
    assert phrase[0].any() and np.flatnonzero(phrase.any(axis=0)).min() == 3  # top-left corner


def test_sizes_grow_with_the_image() -> None:
    assert (line_width(256, 256), font_size(256, 256)) == (1, 11)
    assert (line_width(480, 640), font_size(480, 640)) == (2, 16)
    assert (line_width(1200, 1600), font_size(1200, 1600)) == (4, 40)


def test_size_mismatch_raises() -> None:
    img = _gray()
    with pytest.raises(ValueError, match=r"mask of 'cat' is \(10, 10\), image is \(20, 30\)"):
        draw_instances(img, [Instance("cat", 1, mask=_mask(0, 2, 0, 2, 10, 10))])
    with pytest.raises(ValueError, match="segment 'sky'"):
        draw_instances(img, [], [Segment("sky", 9, _mask(0, 2, 0, 2, 10, 10))])
    with pytest.raises(ValueError, match="H x W x 3"):
        draw_instances(np.zeros((H, W), np.uint8), [])


def test_degenerate_boxes_do_not_crash() -> None:
    img = _gray()
    for q in ("exact", "approximate"):
        out = draw_instances(img, [Instance("x", 1, box=(4.0, 4.0, 4.5, 4.2), box_quality=q)], show_labels=False)
        assert out.size == (W, H)


def test_side_by_side() -> None:
    a = Image.new("RGB", (3, 2), (255, 0, 0))
    b = Image.new("RGB", (4, 5), (0, 0, 255))
    out = side_by_side([a, b], gap=2)
    assert out.size == (3 + 2 + 4, 5)
    px = np.asarray(out)
    assert px[0, 0].tolist() == [255, 0, 0] and px[4, 0].tolist() == [255, 255, 255]
    assert px[0, 4].tolist() == [255, 255, 255]  # gap
    assert px[4, 8].tolist() == [0, 0, 255]


# ----------------------------------------------------------------------------- semantic label maps


def _label_map() -> np.ndarray:
    """20 x 30: class 0 in the top-left 10 x 15 block, class 2 in the bottom half, -1 elsewhere."""
    labels = np.full((H, W), -1)
    labels[:10, :15] = 0
    labels[10:] = 2
    return labels


def test_semantic_palette_hand_values_and_distinct() -> None:
    # k = 0: hue 0, s = 0.8, v = 1 -> (255, 51 * 0.999.. truncated = 50, 50); k = 1: hue 0.618 (blue side),
    # v = 0.7 -> (0.7 * 0.2, 0.7 * (1 - 0.8 * 0.708), 0.7) * 255 = (35, 77, 178) after truncation
    assert semantic_palette(2) == [(255, 50, 50), (35, 77, 178)]
    colors = semantic_palette(50)
    assert len(set(colors)) == 50 and (0, 0, 0) not in colors
    assert colors[:2] == semantic_palette(2)  # a colour depends on its index only


def test_label_image_round_trips_with_the_palette(tmp_path) -> None:
    labels = _label_map()
    colors = semantic_palette(3)
    label_image(labels, colors).save(tmp_path / "l.png")
    with Image.open(tmp_path / "l.png") as img:
        assert img.mode == "P"
        values = np.asarray(img)
        palette = img.getpalette()[:12]
    assert values.dtype == np.uint8 and np.array_equal(values.astype(int) - 1, labels)
    assert values[0, 0] == 1 and values[0, 20] == 0 and values[15, 0] == 3  # value k + 1, 0: no class
    assert palette == [0, 0, 0, *colors[0], *colors[1], *colors[2]]
    # more than 255 classes: 16-bit, same values
    big = labels.copy()
    big[0, 0] = 299
    label_image(big, semantic_palette(300)).save(tmp_path / "big.png")
    with Image.open(tmp_path / "big.png") as img:
        assert np.array_equal(np.asarray(img).astype(int) - 1, big)
    with pytest.raises(ValueError, match="-1..2"):
        label_image(np.array([[3]]), colors)


def test_draw_semantic_fills_outlines_and_keeps_unlabeled_pixels() -> None:
    image = _gray(100)
    labels = _label_map()
    colors = [(200, 0, 0), (0, 200, 0), (0, 0, 200)]
    out = np.asarray(draw_semantic(image, labels, ["a", "b", "c"], alpha=0.5, colors=colors))
    assert out.shape[0] == H and out.shape[1] > W  # the legend is beside the image
    drawing = out[:, :W]
    assert drawing[4, 4].tolist() == _blend_reference(image[4, 4], colors[0], 0.5) == [150, 50, 50]
    assert drawing[15, 10].tolist() == [50, 50, 150]
    assert drawing[4, 20].tolist() == [100, 100, 100]  # no class: untouched
    assert drawing[4, 14].tolist() == list(colors[0])  # next to a pixel without class: the region's border
    assert drawing[10, 20].tolist() == list(colors[2]) and drawing[9, 20].tolist() == [100, 100, 100]
    assert drawing[0, 4].tolist() == [150, 50, 50]  # the image border is no region border
    assert np.array_equal(image, _gray(100))  # input untouched


def test_draw_semantic_legend_shows_the_classes_present() -> None:
    """Swatches of classes 0 and 2 (present) are in the legend panel; class 1's colour (absent) is not."""
    colors = [(200, 0, 0), (0, 200, 0), (0, 0, 200)]
    image = np.full((60, 40, 3), 100, np.uint8)
    labels = np.full((60, 40), 2)
    labels[:10] = 0
    legend = np.asarray(draw_semantic(image, labels, ["a", "b", "c"], colors=colors))[:, 40:]
    def count(c):
        return int((legend == np.array(c)).all(axis=2).sum())
    assert count(colors[0]) > 20 and count(colors[2]) > 20 and count(colors[1]) == 0
    assert count(colors[0]) == count(colors[2])  # equal swatches
    assert (legend[-1] == LABEL_BACKGROUND).all()  # two entries fit in the first rows
    # nothing labeled: a "no class" entry without swatch
    empty = np.asarray(draw_semantic(image, np.full((60, 40), -1), ["a", "b", "c"], colors=colors))
    assert np.array_equal(empty[:, :40], image)
    assert all(int((empty == np.array(c)).all(axis=2).sum()) == 0 for c in colors)


def test_draw_semantic_legend_wraps_into_columns() -> None:
    """A 12-pixel-high image holds one legend row: three classes take three columns, each with its swatch."""
    image = np.full((12, 9, 3), 100, np.uint8)
    labels = np.repeat(np.array([0, 1, 2]), 3)[None].repeat(12, axis=0)
    colors = semantic_palette(3)
    out = np.asarray(draw_semantic(image, labels, ["a", "b", "c"]))
    legend = out[:, 9:]
    xs = [np.flatnonzero((legend == np.array(c)).all(axis=2).any(axis=0)) for c in colors]
    assert all(len(x) > 0 for x in xs) and xs[0].max() < xs[1].min() and xs[1].max() < xs[2].min()


def test_draw_semantic_checks_shapes_and_labels() -> None:
    with pytest.raises(ValueError, match="H x W label map"):
        draw_semantic(_gray(), np.zeros((H, W + 1), int), ["a"])
    with pytest.raises(ValueError, match="labels must be in -1..0"):
        draw_semantic(_gray(), np.ones((H, W), int), ["a"])
