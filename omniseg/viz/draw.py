"""Draw instances (outlines, light mask fills, boxes, labels) over an image.

Ground truth is drawn as outlines on the untouched image (:func:`draw_ground_truth`): in a world
where the class *is* the colour ("pink cross") a class-coloured fill would lie about the object.
Predictions get a class-coloured outline and a light fill. Labels are white on a dark box and are
always kept inside the image.
"""

from __future__ import annotations

import colorsys
import zlib
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from omniseg.data.records import Instance, Segment
from omniseg.ops.rle import rle_decode, rle_to_box

Color = tuple[int, int, int]
#: ground-truth outlines and every label's text; a dark halo keeps them visible on light backgrounds
GT_COLOR: Color = (255, 255, 255)
HALO_COLOR: Color = (0, 0, 0)
LABEL_BACKGROUND: Color = (20, 20, 20)
#: approximate boxes get one dot every this many pixels along each side
DOT_SPACING_PX = 3


def color_for(key: str | int | None) -> Color:
    """A stable, well-saturated RGB colour for a class name / id (same key -> same colour)."""
    h = (zlib.crc32(str(key).encode()) % 360) / 360.0
    r, g, b = colorsys.hsv_to_rgb(h, 0.75, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def line_width(height: int, width: int) -> int:
    """Outline width in pixels: 1 up to 400 px images, then growing with the image."""
    return max(1, round(max(height, width) / 400))


def font_size(height: int, width: int) -> int:
    """Label font size in pixels: 11 for small images, about 2.5 % of the longer side for large ones."""
    return max(11, round(0.025 * max(height, width)))


def _erode(m: np.ndarray) -> np.ndarray:
    """4-neighbour binary erosion; the image border is no edge (pixels outside repeat the border's)."""
    p = np.pad(m, 1, mode="edge")
    return m & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]


def _dilate(m: np.ndarray) -> np.ndarray:
    p = np.pad(m, 1, mode="edge")
    return m | p[:-2, 1:-1] | p[2:, 1:-1] | p[1:-1, :-2] | p[1:-1, 2:]


def mask_outline(m: np.ndarray, width: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The contour of a binary mask: (inner band ``width`` pixels wide inside the mask, 1-pixel halo
    just outside it). Both H x W bool; nothing else of the image is touched by an outline. The image
    border is not drawn as a contour (a stuff region along it would frame the whole picture)."""
    inner = m.copy()
    for _ in range(width):
        inner = _erode(inner)
    return m & ~inner, _dilate(m) & ~m


def label_position(anchor: Sequence[float] | None, size: tuple[int, int], image_size: tuple[int, int],
                   taken: Sequence[tuple[int, int, int, int]] = ()) -> tuple[int, int]:
    """Top-left corner of a label box of ``size`` (w, h) for an object with box ``anchor`` (XYXY).

    Tried in turn: above the box's top-left corner, inside it under the top edge, below it, then
    further down one label height at a time; each shifted left / up to stay inside the image of
    ``image_size`` (W, H) (and right / down to stay off its left / top edge). The first candidate
    not overlapping a label already placed (``taken``: XYXY boxes) wins; if all overlap, the first.
    """
    w, h = size
    iw, ih = image_size
    x0, y0, _, y1 = anchor if anchor is not None else (0, 0, 0, 0)
    candidates = [(x0, y0 - h), (x0, y0), (x0, y1)] if anchor is not None else [(0, 0)]
    candidates += [(x0, y1 + k * h) for k in range(1, 4)]
    placed = []
    for x, y in candidates:
        x = int(max(0, min(round(x), iw - w)))
        y = int(max(0, min(round(y), ih - h)))
        placed.append((x, y))
        if not any(x < b[2] and b[0] < x + w and y < b[3] and b[1] < y + h for b in taken):
            return x, y
    return placed[0]


def _dotted_rectangle(draw: ImageDraw.ImageDraw, box: Sequence[float], color: Color) -> None:
    """Outline the pixels of ``box`` (XYXY, same pixels as the solid outline) with isolated dots.

    The spacing is in pixels, so the outline stays visibly dotted whatever the box size.
    """
    x0, y0 = int(round(box[0])), int(round(box[1]))
    x1, y1 = max(x0, int(round(box[2])) - 1), max(y0, int(round(box[3])) - 1)
    xs = range(x0, x1 + 1, DOT_SPACING_PX)
    ys = range(y0, y1 + 1, DOT_SPACING_PX)
    points = [(x, y) for x in xs for y in (y0, y1)] + [(x, y) for y in ys for x in (x0, x1)]
    draw.point(points, fill=color)


def _label(inst: Instance) -> str:
    return inst.text if inst.score is None else f"{inst.text} {inst.score:.2f}"


def _decode(rle: dict, shape: tuple[int, ...], what: str) -> np.ndarray:
    m = rle_decode(rle).astype(bool)
    if m.shape != shape[:2]:
        raise ValueError(f"mask of {what} is {m.shape}, image is {shape[:2]}")
    return m


def draw_instances(
    image: np.ndarray,
    instances: Sequence[Instance],
    segments: Sequence[Segment] = (),
    alpha: float = 0.3,
    min_score: float = 0.0,
    show_boxes: bool = True,
    show_labels: bool = True,
    color: Color | None = None,
) -> Image.Image:
    """Outline instances (masks by their contour, mask-less ones by their box), fill masks lightly, label them.

    Args:
        image: H x W x 3 uint8 RGB (not modified).
        instances: ground truth or predictions; predictions below ``min_score`` are skipped.
        segments: stuff segments, outlined thinly without labels (thing segments are skipped:
            their instances are drawn).
        alpha: mask fill opacity (0: outlines only, the image inside stays untouched).
        show_boxes: draw the boxes of instances without a mask (approximate boxes dotted).
        color: one colour for every outline (ground truth); None: a colour per class.

    Returns:
        a PIL RGB image of the same size.
    """
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"draw_instances expects an H x W x 3 RGB image, got shape {image.shape}")
    ih, iw = image.shape[:2]
    lw = line_width(ih, iw)
    canvas = image.copy()
    for seg in segments:
        if not seg.is_thing:
            edge, _ = mask_outline(_decode(seg.mask, image.shape, f"segment {seg.text!r}"))
            canvas[edge] = canvas[edge] // 2 + np.array(color or color_for(seg.text), np.uint8) // 2
    shown = [i for i in instances if i.score is None or i.score >= min_score]
    masks = [_decode(i.mask, image.shape, repr(i.text)) if i.mask is not None else None for i in shown]
    if alpha > 0:
        fill = canvas.astype(np.float32)
        for inst, m in zip(shown, masks):
            if m is not None:
                fill[m] = fill[m] * (1 - alpha) + np.array(color or color_for(inst.text)) * alpha
        canvas = np.clip(fill, 0, 255).astype(np.uint8)
    for inst, m in zip(shown, masks):
        if m is not None:
            inner, halo = mask_outline(m, lw)
            canvas[halo] = HALO_COLOR
            canvas[inner] = color or color_for(inst.text)
    out = Image.fromarray(canvas)
    draw = ImageDraw.Draw(out)
    for inst, m in zip(shown, masks):
        if inst.box is None or m is not None or not show_boxes:
            continue
        c = color or color_for(inst.text)
        if inst.box_quality == "approximate":  # ALP boxes dotted so nobody mistakes them for exact
            _dotted_rectangle(draw, inst.box, c)
            continue
        x0, y0, x1, y1 = (int(round(v)) for v in inst.box)
        x1, y1 = max(x0, x1 - 1), max(y0, y1 - 1)
        draw.rectangle([x0 - 1, y0 - 1, x1 + 1, y1 + 1], outline=HALO_COLOR, width=1)
        draw.rectangle([x0, y0, x1, y1], outline=c, width=lw)
    if show_labels:
        _draw_labels(draw, shown, color, (iw, ih))
    return out


def _draw_labels(draw: ImageDraw.ImageDraw, shown: Sequence[Instance], color: Color | None,
                 image_size: tuple[int, int]) -> None:
    """White text on a dark box with a strip of the outline's colour, kept inside the image."""
    font = ImageFont.load_default(size=font_size(image_size[1], image_size[0]))
    pad, strip = 2, 3
    taken: list[tuple[int, int, int, int]] = []
    for inst in shown:
        # at the box corner; mask-only instances at their mask's corner; neither: top-left
        anchor = inst.box if inst.box is not None else (rle_to_box(inst.mask) if inst.mask is not None else None)
        text = _label(inst)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        w, h = right - left + 2 * pad + strip, bottom - top + 2 * pad
        x, y = label_position(anchor, (w, h), image_size, taken)
        taken.append((x, y, x + w, y + h))
        draw.rectangle([x, y, x + w - 1, y + h - 1], fill=LABEL_BACKGROUND)
        draw.rectangle([x, y, x + strip - 1, y + h - 1], fill=color or color_for(inst.text))
        draw.text((x + strip + pad - left, y + pad - top), text, fill=GT_COLOR, font=font)


def draw_ground_truth(image: np.ndarray, instances: Sequence[Instance], segments: Sequence[Segment] = (),
                      show_labels: bool = True) -> Image.Image:
    """Ground truth as white outlines (dark halo) and labels on the untouched image: no fill, no recolouring."""
    return draw_instances(image, instances, segments, alpha=0.0, show_labels=show_labels, color=GT_COLOR)


def side_by_side(images: Sequence[Image.Image], gap: int = 4) -> Image.Image:
    """Concatenate images horizontally (e.g. ground truth | prediction)."""
    h = max(im.height for im in images)
    w = sum(im.width for im in images) + gap * (len(images) - 1)
    out = Image.new("RGB", (w, h), (255, 255, 255))
    x = 0
    for im in images:
        out.paste(im, (x, 0))
        x += im.width + gap
    return out
