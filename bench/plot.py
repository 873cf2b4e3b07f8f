"""Dependency-free line charts (learning curves: AP vs training iteration) drawn with Pillow.

Used by the benchmark report (BENCHMARKS.md embeds the PNG); matplotlib is not a dependency::

    from plot import line_chart  # bench/ is on sys.path when running bench/report.py
    line_chart({"r18 dense": [(0, 1.2), (5000, 18.0), (10000, 26.5)]}, "docs/curves.png",
               title="Box AP during training", xlabel="iteration", ylabel="box AP",
               hlines={"target 30 box AP": 30.0}, bands={"r18 dense": [(0, 0.9, 1.5), ...]})

Geometry (grid, bands, lines, markers) is drawn at ``SS`` times the output size and box-averaged
down, which antialiases lines and markers; text is drawn afterwards at the output size with Pillow's
default FreeType font. Grid lines, spines and reference lines are snapped to whole output pixels, so
their colour is exact in the PNG (the tests read it back through :meth:`Frame.to_pixel`).
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from omniseg.utils.atomic import atomic_write_bytes

RGB = tuple[int, int, int]
#: Okabe & Ito's colour-blind-safe palette, darkest-on-white first (yellow last: weak on white)
PALETTE: tuple[RGB, ...] = (
    (0, 114, 178), (213, 94, 0), (0, 158, 115), (204, 121, 167),
    (230, 159, 0), (86, 180, 233), (0, 0, 0), (240, 228, 66),
)  # fmt: skip
MARKERS = ("circle", "square", "triangle", "diamond")
BACKGROUND: RGB = (255, 255, 255)
GRID: RGB = (228, 228, 228)
SPINE: RGB = (80, 80, 80)
TEXT: RGB = (25, 25, 25)
HLINE: RGB = (90, 90, 90)
BAND_ALPHA = 60  # of 255
SS = 3  # supersampling factor of the geometry
FONT_PX = {"tick": 13, "label": 15, "title": 18, "legend": 13, "hline": 12}
PAD, INSET, TICK_LEN = 12, 10, 5  # image border, data inset from the spines, tick mark length (output px)
LINE_W, MARKER_R = 2.0, 4.0  # series line width, marker radius (output px)
DASH = (8, 5)  # reference line on / off (output px)


def nice_ticks(lo: float, hi: float, max_ticks: int = 8) -> list[float]:
    """Evenly spaced "nice" tick values covering ``[lo, hi]``.

    The step is the smallest ``m x 10^k`` (m in 1, 2, 5) for which the ticks
    ``floor(lo / step) * step, ..., ceil(hi / step) * step`` number at most ``max_ticks``; the ticks
    therefore cover the range and end on multiples of the step (``(0, 34) -> 0, 5, ..., 35``).
    ``lo == hi`` is widened by 10% of ``|lo|`` each side (by 1 at zero) before choosing.
    """
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi < lo:
        raise ValueError(f"nice_ticks needs finite lo <= hi, got lo={lo}, hi={hi}")
    if max_ticks < 2:
        raise ValueError(f"max_ticks must be >= 2, got {max_ticks}")
    if hi == lo:
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    exp = math.floor(math.log10((hi - lo) / (max_ticks - 1)))  # no smaller step can fit
    while True:
        for m in (1, 2, 5):
            a, b = _floor(lo / (m * 10.0**exp)), _ceil(hi / (m * 10.0**exp))
            if b - a + 1 <= max_ticks:
                return [_tick(i * m, exp) for i in range(a, b + 1)]
        exp += 1


def _floor(v: float) -> int:
    r = round(v)
    return r if abs(v - r) <= 1e-9 * max(1.0, abs(v)) else math.floor(v)


def _ceil(v: float) -> int:
    r = round(v)
    return r if abs(v - r) <= 1e-9 * max(1.0, abs(v)) else math.ceil(v)


def _tick(units: int, exp: int) -> float:
    """``units x 10^exp`` without binary noise (0.30000000000000004 -> 0.3)."""
    return float(units * 10**exp) if exp >= 0 else round(units / 10 ** (-exp), -exp) + 0.0


def _fmt(v: float, step: float) -> str:
    """Tick label: as many decimals as the step needs; whole thousands / millions as 20k / 1.5M."""
    if v == 0:
        return "0"
    for div, suffix in ((1_000_000, "M"), (1000, "k")):
        if step >= div and step % div == 0:
            return f"{v / div:g}{suffix}"
    return f"{v:.{max(0, -math.floor(math.log10(step) + 1e-9))}f}"


@dataclass(frozen=True)
class Frame:
    """Where data lands in the output image (pixel x right, y down; pixel (i, j) covers [i, i+1) x [j, j+1)).

    ``left/top/right/bottom`` are the spines' box; data range ``xticks[0]..xticks[-1]`` x
    ``yticks[0]..yticks[-1]`` maps onto that box inset by ``INSET`` pixels each side.
    """

    left: int
    top: int
    right: int
    bottom: int
    xticks: tuple[float, ...]
    yticks: tuple[float, ...]

    def to_pixel(self, x: float, y: float) -> tuple[float, float]:
        """Data point -> output-image coordinates (floats; ``int()`` gives the pixel it falls in)."""
        (x0, x1), (y0, y1) = (self.xticks[0], self.xticks[-1]), (self.yticks[0], self.yticks[-1])
        px = self.left + INSET + (x - x0) / (x1 - x0) * (self.right - self.left - 2 * INSET)
        py = self.bottom - INSET - (y - y0) / (y1 - y0) * (self.bottom - self.top - 2 * INSET)
        return px, py


def _font(kind: str) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=FONT_PX[kind])  # Pillow >= 10.1: scalable when FreeType is built in


def _text_size(text: str, font) -> tuple[int, int]:
    x0, y0, x1, y1 = font.getbbox(text or " ")
    return int(math.ceil(x1 - x0)), int(math.ceil(y1 - y0))


def _finite(values: Iterable[float]) -> bool:
    return all(math.isfinite(float(v)) for v in values)


def _prepare(series: Mapping[str, Sequence[tuple[float, float]]], hlines, bands):
    """Validate; drop non-finite points; sort by x. Returns (series, hlines, bands) cleaned."""
    if not series:
        raise ValueError("line_chart needs at least one series, got an empty dict")
    clean: dict[str, list[tuple[float, float]]] = {}
    for name, pts in series.items():
        if not pts:
            raise ValueError(f"series {name!r} has no points")
        clean[name] = sorted((float(x), float(y)) for x, y in pts if _finite((x, y)))
        if not clean[name]:
            raise ValueError(f"series {name!r} has no finite points (all NaN / inf)")
    hl = {str(k): float(v) for k, v in (hlines or {}).items()}
    if not _finite(hl.values()):
        raise ValueError(f"hlines must be finite, got {hl}")
    bd: dict[str, list[tuple[float, float, float]]] = {}
    for name, rows in (bands or {}).items():
        if name not in clean:
            raise ValueError(f"band {name!r} names no series (series: {list(clean)})")
        bd[name] = sorted((float(x), float(a), float(b)) for x, a, b in rows if _finite((x, a, b)))
    return clean, hl, bd


def _frame(series, hlines, bands, size: tuple[int, int]) -> Frame:
    xs = [x for pts in series.values() for x, _ in pts] + [r[0] for rows in bands.values() for r in rows]
    ys = [y for pts in series.values() for _, y in pts] + [
        v for rows in bands.values() for r in rows for v in r[1:]
    ]
    ys += list(hlines.values())
    ylo, yhi = min(ys), max(ys)
    ylo = 0.0 if ylo >= 0 else ylo - 0.04 * (yhi - ylo)
    yhi = yhi + 0.04 * (yhi - ylo) if yhi > ylo else ylo + 1.0  # margin above the top curve / reference line
    xticks, yticks = nice_ticks(min(xs), max(xs)), nice_ticks(ylo, yhi)
    tick_font, label_h = _font("tick"), _text_size("Ag", _font("label"))[1]
    ystep, xstep = yticks[1] - yticks[0], xticks[1] - xticks[0]
    ytw = max(_text_size(_fmt(v, ystep), tick_font)[0] for v in yticks)
    xth = max(_text_size(_fmt(v, xstep), tick_font)[1] for v in xticks)
    last_half = _text_size(_fmt(xticks[-1], xstep), tick_font)[0] // 2
    w, h = size
    left = PAD + label_h + 10 + ytw + 6 + TICK_LEN
    top = PAD + _text_size("Ag", _font("title"))[1] + 14
    right = w - PAD - max(0, last_half - INSET)
    bottom = h - (PAD + label_h + 10 + xth + 6 + TICK_LEN)
    if right - left < 4 * INSET or bottom - top < 4 * INSET:
        raise ValueError(f"chart size {size} is too small for its labels")
    return Frame(left, top, right, bottom, tuple(xticks), tuple(yticks))


def chart_frame(
    series: Mapping[str, Sequence[tuple[float, float]]],
    *,
    hlines: Mapping[str, float] | None = None,
    bands: Mapping[str, Sequence[tuple[float, float, float]]] | None = None,
    size: tuple[int, int] = (900, 520),
) -> Frame:
    """The :class:`Frame` that :func:`line_chart` uses for these arguments (data -> pixel mapping)."""
    return _frame(*_prepare(series, hlines, bands), size)


def _marker(draw: ImageDraw.ImageDraw, kind: str, cx: float, cy: float, color: RGB) -> None:
    r, edge = MARKER_R * SS, SS  # white edge keeps overlapping markers apart
    if kind == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=color, outline=BACKGROUND, width=edge)
    elif kind == "square":
        q = r * 0.9
        draw.rectangle((cx - q, cy - q, cx + q, cy + q), fill=color, outline=BACKGROUND, width=edge)
    else:  # triangle / diamond: regular polygons with a slightly larger circumradius (same visual weight)
        sides, rot = (3, 0) if kind == "triangle" else (4, 45)
        draw.regular_polygon(
            (cx, cy, r * 1.3), sides, rotation=rot, fill=color, outline=BACKGROUND, width=edge
        )


def _hline_rows(frame: Frame, hlines: Mapping[str, float]) -> dict[str, int]:
    return {k: int(frame.to_pixel(frame.xticks[0], v)[1]) for k, v in hlines.items()}


def _hline_labels(frame: Frame, hlines: Mapping[str, float], occupied: list[tuple[float, float]]):
    """Label boxes ``[(name, (x0, y0, x1, y1))]`` of the reference lines: above or below the line, at its
    left or right end, whichever covers the fewest curve samples and no earlier label (ties: left above)."""
    font, placed = _font("hline"), []
    rows = _hline_rows(frame, hlines)
    for name in sorted(hlines, key=hlines.get, reverse=True):
        tw, th = _text_size(name, font)
        xs = (frame.left + INSET + 2, frame.right - INSET - tw - 6)
        ys = [y for y in (rows[name] - th - 7, rows[name] + 4) if frame.top < y and y + th + 4 < frame.bottom]
        boxes = [(x, y, x + tw + 4, y + th + 4) for y in ys or [rows[name] - th - 7] for x in xs]
        placed.append((name, min(boxes, key=lambda b: _cost(b, occupied, [p for _, p in placed]))))
    return placed


def _cost(box: Sequence[float], occupied: list[tuple[float, float]], avoid: list[Sequence[float]]) -> int:
    """Curve samples inside ``box`` plus 1000 per overlapped box of ``avoid``."""
    inside = sum(box[0] <= x <= box[2] and box[1] <= y <= box[3] for x, y in occupied)
    return inside + 1000 * sum(_overlap(box, b) for b in avoid)


def _samples(frame: Frame, series, bands) -> list[tuple[float, float]]:
    """Output-pixel points along every curve (every 3 px) and across every band."""
    pts = []
    for name, p in series.items():
        px = [frame.to_pixel(x, y) for x, y in p]
        pts += px
        for (xa, ya), (xb, yb) in zip(px, px[1:]):
            n = int(math.hypot(xb - xa, yb - ya) / 3) + 1
            pts += [(xa + (xb - xa) * t / n, ya + (yb - ya) * t / n) for t in range(n)]
        for x, lo, hi in bands.get(name, []):
            (bx, by0), (_, by1) = frame.to_pixel(x, lo), frame.to_pixel(x, hi)
            pts += [(bx, by1 + (by0 - by1) * t / 8) for t in range(9)]
    return pts


def _overlap(a: Sequence[float], b: Sequence[float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _legend_box(frame: Frame, series, occupied, avoid) -> tuple[int, int, int, int]:
    """The corner of the data area (lower right, upper left, upper right, lower left) whose legend box
    covers the fewest curve samples and no box of ``avoid`` (the reference-line labels)."""
    font = _font("legend")
    row_h = _text_size("Ag", font)[1] + 8
    w = 12 + 28 + 8 + max(_text_size(n, font)[0] for n in series) + 12
    h = 8 + row_h * len(series) + 4
    m = INSET
    corners = [(frame.right - m - w, frame.bottom - m - h), (frame.left + m, frame.top + m),
               (frame.right - m - w, frame.top + m), (frame.left + m, frame.bottom - m - h)]  # fmt: skip
    # min keeps the first of equal costs: the preference order
    x0, y0 = min(corners, key=lambda c: _cost((c[0], c[1], c[0] + w, c[1] + h), occupied, avoid))
    return int(x0), int(y0), int(x0 + w), int(y0 + h)


def _draw_geometry(frame: Frame, series, hlines, bands, size, legend) -> Image.Image:
    """Grid, bands, reference lines, curves, markers, spines, legend frame at SS x size, reduced to size."""
    img = Image.new("RGB", (size[0] * SS, size[1] * SS), BACKGROUND)
    draw = ImageDraw.Draw(img, "RGBA")  # RGBA fills blend onto the RGB image (bands)

    def px_rect(x0: int, y0: int, x1: int, y1: int, color: RGB) -> None:  # output pixels [x0, x1) x [y0, y1)
        draw.rectangle((x0 * SS, y0 * SS, x1 * SS - 1, y1 * SS - 1), fill=color)

    for x in frame.xticks:
        px_rect(int(frame.to_pixel(x, 0)[0]), frame.top, int(frame.to_pixel(x, 0)[0]) + 1, frame.bottom, GRID)
    for y in frame.yticks:
        px_rect(frame.left, int(frame.to_pixel(0, y)[1]), frame.right, int(frame.to_pixel(0, y)[1]) + 1, GRID)
    for name, rows in bands.items():
        if len(rows) >= 2:
            upper = [frame.to_pixel(x, hi) for x, _, hi in rows]
            lower = [frame.to_pixel(x, lo) for x, lo, _ in reversed(rows)]
            color = PALETTE[list(series).index(name) % len(PALETTE)]
            draw.polygon([(x * SS, y * SS) for x, y in upper + lower], fill=(*color, BAND_ALPHA))
    for row in _hline_rows(frame, hlines).values():
        for x in range(frame.left, frame.right, sum(DASH)):
            px_rect(x, row, min(x + DASH[0], frame.right), row + 1, HLINE)
    for i, pts in enumerate(series.values()):
        color, kind = PALETTE[i % len(PALETTE)], MARKERS[(i + i // len(PALETTE)) % len(MARKERS)]
        xy = [(x * SS, y * SS) for x, y in (frame.to_pixel(*p) for p in pts)]
        if len(xy) >= 2:
            draw.line(xy, fill=color, width=round(LINE_W * SS), joint="curve")
        for cx, cy in xy:
            _marker(draw, kind, cx, cy, color)
    px_rect(frame.left, frame.top, frame.left + 1, frame.bottom + 1, SPINE)  # left and bottom spines only
    px_rect(frame.left, frame.bottom, frame.right, frame.bottom + 1, SPINE)
    for x in frame.xticks:
        c = int(frame.to_pixel(x, 0)[0])
        px_rect(c, frame.bottom + 1, c + 1, frame.bottom + 1 + TICK_LEN, SPINE)
    for y in frame.yticks:
        r = int(frame.to_pixel(0, y)[1])
        px_rect(frame.left - TICK_LEN, r, frame.left, r + 1, SPINE)
    lx0, ly0, lx1, ly1 = legend
    draw.rectangle((lx0 * SS, ly0 * SS, lx1 * SS, ly1 * SS), fill=(*BACKGROUND, 225), outline=(200, 200, 200),
                   width=SS)  # fmt: skip
    row_h = _text_size("Ag", _font("legend"))[1] + 8
    for i in range(len(series)):
        color, kind = PALETTE[i % len(PALETTE)], MARKERS[(i + i // len(PALETTE)) % len(MARKERS)]
        cy = (ly0 + 8 + row_h * i + row_h / 2 - 2) * SS
        draw.line([((lx0 + 12) * SS, cy), ((lx0 + 40) * SS, cy)], fill=color, width=round(LINE_W * SS))
        _marker(draw, kind, (lx0 + 26) * SS, cy, color)
    return img.reduce(SS)


def line_chart(
    series: Mapping[str, Sequence[tuple[float, float]]],
    path: str | Path,
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    hlines: Mapping[str, float] | None = None,
    bands: Mapping[str, Sequence[tuple[float, float, float]]] | None = None,
    size: tuple[int, int] = (900, 520),
) -> None:
    """Write a PNG line chart: one coloured polyline with markers per series, legend, nice ticks, grid.

    Args:
        series: name -> [(x, y), ...]; drawn in x order; NaN / inf points are skipped.
        path: PNG file, written atomically.
        title, xlabel, ylabel: chart title and axis titles.
        hlines: label -> y of dashed horizontal reference lines (e.g. ``{"target 30 box AP": 30.0}``).
        bands: series name -> [(x, low, high), ...], shaded semi-transparently under that series
            (mean +- std over seeds).
        size: (width, height) in pixels.

    The y range covers every point, band and reference line with a margin, from 0 when nothing is
    negative. Raises ValueError for no series, a series without (finite) points or a band of no series.
    """
    series, hlines, bands = _prepare(series, hlines, bands)
    frame = _frame(series, hlines, bands, size)
    occupied = _samples(frame, series, bands)
    labels = _hline_labels(frame, hlines, occupied)
    legend = _legend_box(frame, series, occupied, [b for _, b in labels])
    img = _draw_geometry(frame, series, hlines, bands, size, legend)
    draw = ImageDraw.Draw(img, "RGBA")
    tick_font = _font("tick")
    xstep, ystep = frame.xticks[1] - frame.xticks[0], frame.yticks[1] - frame.yticks[0]
    for x in frame.xticks:
        draw.text((int(frame.to_pixel(x, 0)[0]) + 0.5, frame.bottom + TICK_LEN + 6), _fmt(x, xstep), TEXT,
                  tick_font, anchor="mt")  # fmt: skip
    for y in frame.yticks:
        draw.text((frame.left - TICK_LEN - 6, int(frame.to_pixel(0, y)[1]) + 0.5), _fmt(y, ystep), TEXT,
                  tick_font, anchor="rm")  # fmt: skip
    label_font = _font("label")
    cx, cy = (frame.left + frame.right) / 2, (frame.top + frame.bottom) / 2
    draw.text((cx, size[1] - PAD), xlabel, TEXT, label_font, anchor="md")
    tw, th = _text_size(ylabel, label_font)
    tag = Image.new("L", (tw + 4, th + 8), 0)
    ImageDraw.Draw(tag).text((2, 2), ylabel, 255, label_font, anchor="lt")
    tag = tag.rotate(90, expand=True)
    img.paste(Image.new("RGB", tag.size, TEXT), (PAD, int(cy - tag.size[1] / 2)), tag)
    draw.text((cx, PAD), title, TEXT, _font("title"), anchor="mt")
    hfont = _font("hline")
    for name, (x0, y0, x1, y1) in labels:
        draw.rectangle((x0, y0, x1, y1), fill=(*BACKGROUND, 200))
        draw.text((x0 + 2, y0 + 2), name, HLINE, hfont, anchor="lt")
    lfont, row_h = _font("legend"), _text_size("Ag", _font("legend"))[1] + 8
    for i, name in enumerate(series):
        draw.text((legend[0] + 48, legend[1] + 8 + row_h * i + row_h / 2 - 2), name, TEXT, lfont, anchor="lm")
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    atomic_write_bytes(path, buf.getvalue())
