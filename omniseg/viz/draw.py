"""Draw instances (masks, boxes, labels) over an image."""

from __future__ import annotations

import colorsys
import zlib
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from omniseg.data.records import Instance, Segment
from omniseg.ops.rle import rle_decode, rle_to_box


def color_for(key: str | int | None) -> tuple[int, int, int]:
    """A stable, well-saturated RGB colour for a class name / id (same key -> same colour)."""
    h = (zlib.crc32(str(key).encode()) % 360) / 360.0
    r, g, b = colorsys.hsv_to_rgb(h, 0.75, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


#: approximate boxes get one dot every this many pixels along each side
DOT_SPACING_PX = 3


def _dotted_rectangle(draw: ImageDraw.ImageDraw, box: Sequence[float], color: tuple[int, int, int]) -> None:
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


def draw_instances(
    image: np.ndarray,
    instances: Sequence[Instance],
    segments: Sequence[Segment] = (),
    alpha: float = 0.45,
    min_score: float = 0.0,
    show_boxes: bool = True,
    show_labels: bool = True,
) -> Image.Image:
    """Overlay segments (stuff, faint), instance masks, boxes and labels.

    Args:
        image: H x W x 3 uint8 RGB.
        instances: ground truth or predictions; predictions below ``min_score`` are skipped.
        segments: panoptic / stuff segments drawn first with lower opacity.
        alpha: mask opacity.

    Returns:
        a PIL RGB image of the same size.
    """
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"draw_instances expects an H x W x 3 RGB image, got shape {image.shape}")
    canvas = image.astype(np.float32).copy()
    for seg in segments:
        if seg.is_thing:
            continue
        m = rle_decode(seg.mask).astype(bool)
        if m.shape != canvas.shape[:2]:
            raise ValueError(f"mask of segment {seg.text!r} is {m.shape}, image is {canvas.shape[:2]}")
        canvas[m] = canvas[m] * (1 - alpha / 2) + np.array(color_for(seg.text)) * (alpha / 2)
    shown = [i for i in instances if i.score is None or i.score >= min_score]
    for inst in shown:
        if inst.mask is not None:
            m = rle_decode(inst.mask).astype(bool)
            if m.shape != canvas.shape[:2]:
                raise ValueError(f"mask of {inst.text!r} is {m.shape}, image is {canvas.shape[:2]}")
            canvas[m] = canvas[m] * (1 - alpha) + np.array(color_for(inst.text)) * alpha
    out = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(out)
    for inst in shown:
        color = color_for(inst.text)
        if inst.box is not None and show_boxes:
            x0, y0, x1, y1 = inst.box
            if inst.box_quality == "approximate":  # ALP boxes dotted so nobody mistakes them for exact
                _dotted_rectangle(draw, inst.box, color)
            else:
                draw.rectangle([x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)], outline=color, width=1)
        if show_labels:
            # at the box corner; mask-only instances at their mask's corner; neither: top-left
            anchor = inst.box if inst.box is not None else (rle_to_box(inst.mask) if inst.mask is not None else None)
            x0, y0 = (anchor[0], anchor[1]) if anchor is not None and anchor[2] > anchor[0] else (2, 2)
            text = _label(inst)
            tw = draw.textlength(text)
            ty = max(0, y0 - 11)
            draw.rectangle([x0, ty, x0 + tw + 2, ty + 10], fill=(0, 0, 0))
            draw.text((x0 + 1, ty - 1), text, fill=color)
    return out


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
