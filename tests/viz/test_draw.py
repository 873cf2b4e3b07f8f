"""draw_instances / color_for / side_by_side on tiny hand-made images."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from omniseg.data.records import Instance, Segment
from omniseg.ops.rle import rle_encode
from omniseg.viz.draw import DOT_SPACING_PX, color_for, draw_instances, side_by_side

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


def test_mask_tinted_toward_class_color() -> None:
    img = _gray(100)
    img[5, 5] = (10, 200, 40)
    inst = Instance("cat", 1, box=(3, 2, 9, 8), mask=_mask(2, 8, 3, 9))
    out = np.asarray(draw_instances(img, [inst], alpha=0.5, show_boxes=False, show_labels=False))
    c = color_for("cat")
    assert out[5, 5].tolist() == _blend_reference(img[5, 5], c, 0.5)
    assert out[4, 7].tolist() == _blend_reference(img[4, 7], c, 0.5)
    # closer to the class colour than the input pixel was
    assert np.abs(out[4, 7].astype(int) - c).sum() < np.abs(img[4, 7].astype(int) - c).sum()
    outside = np.ones((H, W), bool)
    outside[2:8, 3:9] = False
    np.testing.assert_array_equal(out[outside], img[outside])


def test_stuff_segments_faint_and_thing_segments_skipped() -> None:
    img = _gray(100)
    stuff = Segment("sky", 9, _mask(0, 4, 0, W), is_thing=False)
    thing = Segment("cat", 1, _mask(10, 14, 0, 5), is_thing=True)
    out = np.asarray(draw_instances(img, [], [stuff, thing], alpha=0.4, show_labels=False))
    assert out[1, 1].tolist() == _blend_reference(img[1, 1], color_for("sky"), 0.2)
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


def test_labels_drawn_above_box() -> None:
    img = _gray(255)
    inst = Instance("cat", 1, box=(5, 15, 20, 19), score=0.5)
    without = np.asarray(draw_instances(img, [inst], show_labels=False, show_boxes=False))
    with_label = np.asarray(draw_instances(img, [inst], show_boxes=False))
    np.testing.assert_array_equal(without, img)
    assert (with_label[4:15, 5] == 0).all()  # black label background from y0 - 11 to y0 - 1


def test_label_of_mask_only_instance_sits_on_its_mask() -> None:
    img = _gray(255)
    inst = Instance("cat", 1, mask=_mask(14, 18, 10, 20))
    out = np.asarray(draw_instances(img, [inst], alpha=0.0, show_boxes=False))
    assert (out[3:14, 10] == 0).all()  # label background from mask top - 11 to mask top - 1
    assert (out[:, :10] == 255).all()  # nothing at the top-left corner
    phrase = np.asarray(draw_instances(img, [Instance("just words")], show_boxes=False))
    assert (phrase[0:11, 2] == 0).all() and (phrase[11:, :] == 255).all()


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
