"""Draw instances (outlines, light mask fills, boxes, labels) or a semantic label map over an image.

Ground truth is drawn as outlines on the untouched image (:func:`draw_ground_truth`): in a world
where the class *is* the colour ("pink cross") a class-coloured fill would lie about the object.
Predictions get a class-coloured outline and a light fill. Labels are white on a dark box and are
always kept inside the image. A semantic label map (:func:`draw_semantic`) is a class-coloured fill
with a legend beside the image; :func:`label_image` is the same map as an index PNG whose palette
holds the same colours.
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


# ----------------------------------------------------------------------------- semantic label maps


def semantic_palette(n: int) -> list[Color]:
    """``n`` well-separated colours for vocabulary entries 0..n-1 (never black, the PNG's "no class").

    Hues step by the golden ratio (neighbouring indices far apart on the colour wheel); every
    other colour is darker, so colours that come back close in hue still differ in brightness.
    """
    out = []
    for k in range(n):
        r, g, b = colorsys.hsv_to_rgb((k * 0.618033988749895) % 1.0, 0.8, 1.0 if k % 2 == 0 else 0.7)
        out.append((int(r * 255), int(g * 255), int(b * 255)))
    return out


def label_image(labels: np.ndarray, colors: Sequence[Color]) -> Image.Image:
    """An H x W label map (-1: no class, k: entry k of K = ``len(colors)``) as a PNG-ready image.

    Pixel value k + 1 stands for entry k and 0 for no class (so ``np.asarray(img) - 1`` gives the
    map back). K <= 255: 8-bit with a palette (0 black, k + 1 ``colors[k]``: viewers show the
    colours); K up to 65535: 16-bit grayscale (a PNG palette holds at most 256 colours).
    """
    k = len(colors)
    if labels.ndim != 2 or labels.size and (labels.min() < -1 or labels.max() >= k):
        raise ValueError(f"labels must be an H x W map of -1..{k - 1}, got shape {labels.shape}")
    if k > 65535:
        raise ValueError(f"{k} classes do not fit a 16-bit PNG (at most 65535)")
    if k > 255:
        return Image.fromarray((labels + 1).astype(np.uint16))
    img = Image.fromarray((labels + 1).astype(np.uint8))
    img.putpalette([0, 0, 0, *(v for c in colors for v in c)])
    return img


def draw_semantic(image: np.ndarray, labels: np.ndarray, names: Sequence[str], alpha: float = 0.5,
                  colors: Sequence[Color] | None = None) -> Image.Image:
    """A label map over its image, with a legend of the classes it holds to the right of the image.

    Args:
        image: H x W x 3 uint8 RGB (not modified).
        labels: H x W int, per pixel an index into ``names``; -1: no class (left as it is).
        names: the class names / phrases.
        alpha: opacity of the class colour over the image; region borders (pixels with a
            4-neighbour of another class) are drawn fully in their class's colour.
        colors: one colour per name; default :func:`semantic_palette`.

    Returns:
        a PIL RGB image: the H x W drawing, then the legend panel (one swatch + name + share of
        the image per class present, in ``names`` order, in as many columns as the height needs).
    """
    if image.ndim != 3 or image.shape[2] != 3 or labels.shape != image.shape[:2]:
        raise ValueError(f"draw_semantic expects an H x W x 3 image and an H x W label map, got {image.shape} "
                         f"and {labels.shape}")
    colors = list(colors) if colors is not None else semantic_palette(len(names))
    if labels.size and (labels.min() < -1 or labels.max() >= len(names)):
        raise ValueError(f"labels must be in -1..{len(names) - 1} ({len(names)} names)")
    table = np.array([*colors, (0, 0, 0)], np.float32)  # -1 indexes the last row (never used: masked)
    known = labels >= 0
    out = image.astype(np.float32)
    out[known] = out[known] * (1 - alpha) + table[labels[known]] * alpha
    p = np.pad(labels, 1, mode="edge")
    border = known & ((p[:-2, 1:-1] != labels) | (p[2:, 1:-1] != labels) | (p[1:-1, :-2] != labels)
                      | (p[1:-1, 2:] != labels))
    out[border] = table[labels[border]]
    drawing = Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))
    areas = np.bincount(labels[known].ravel(), minlength=len(names))
    entries = [(f"{names[k]} {100 * areas[k] / labels.size:.0f}%", colors[k]) for k in np.flatnonzero(areas)]
    return _with_legend(drawing, entries or [("no class", None)])


def _with_legend(drawing: Image.Image, entries: Sequence[tuple[str, Color | None]]) -> Image.Image:
    """``drawing`` with a dark legend panel on its right: per entry a colour swatch and its text."""
    w, h = drawing.size
    font = ImageFont.load_default(size=font_size(h, w))
    pad = 3
    probe = ImageDraw.Draw(drawing)
    boxes = [probe.textbbox((0, 0), text, font=font) for text, _ in entries]
    row = max(b[3] - b[1] for b in boxes) + 2 * pad
    swatch = row - 2 * pad
    per_column = max(1, (h - pad) // row)
    columns = [list(range(i, min(i + per_column, len(entries)))) for i in range(0, len(entries), per_column)]
    widths = [pad + swatch + pad + max(boxes[i][2] - boxes[i][0] for i in col) + pad for col in columns]
    out = Image.new("RGB", (w + sum(widths), max(h, row + pad)), LABEL_BACKGROUND)
    out.paste(drawing, (0, 0))
    draw = ImageDraw.Draw(out)
    x = w
    for col, width in zip(columns, widths):
        for r, i in enumerate(col):
            text, color = entries[i]
            y = pad + r * row
            if color is not None:
                draw.rectangle([x + pad, y + pad, x + pad + swatch - 1, y + pad + swatch - 1], fill=color)
            draw.text((x + 2 * pad + swatch - boxes[i][0], y + pad - boxes[i][1]), text, fill=GT_COLOR, font=font)
        x += width
    return out
