"""bench/plot.py: nice ticks (hand-worked and against a brute-force reference), the data -> pixel mapping,
and pixels of rendered charts read back at mapped positions."""

from __future__ import annotations

import math
import os
import random
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
NAN = float("nan")


# imported by the `bench` fixture (tests/bench/conftest.py)
BENCH = ("plot",)


@pytest.fixture(scope="module")
def plot(bench):
    return bench["plot"]


TWO = {"a": [(0, 10.0), (10, 20.0), (20, 25.0)], "b": [(0, 2.0), (10, 5.0), (20, 8.0)]}
KW = {"title": "t", "xlabel": "iteration", "ylabel": "AP"}


@pytest.mark.parametrize(
    "lo, hi, max_ticks, expected",
    [
        (0, 34, 8, [0, 5, 10, 15, 20, 25, 30, 35]),  # step 2 would need 18 ticks
        (0, 34, 4, [0, 20, 40]),  # step 10 -> 5 ticks > 4
        (0, 1, 8, [0, 0.2, 0.4, 0.6, 0.8, 1.0]),
        (0, 90000, 8, [0, 20000, 40000, 60000, 80000, 100000]),
        (0.1, 0.3, 8, [0.1, 0.15, 0.2, 0.25, 0.3]),  # exact decimals, no 0.15000000000000002
        (5, 5, 8, [4.4, 4.6, 4.8, 5.0, 5.2, 5.4, 5.6]),  # lo == hi: widened to 4.5 .. 5.5
        (0, 0, 8, [-1, -0.5, 0, 0.5, 1]),  # widened by 1 at zero
        (-34, -3, 8, [-35, -30, -25, -20, -15, -10, -5, 0]),
        (-1, 1, 8, [-1, -0.5, 0, 0.5, 1]),
        (-7, 12, 8, [-10, -5, 0, 5, 10, 15]),
        (20, 20.5, 8, [20.0, 20.1, 20.2, 20.3, 20.4, 20.5]),  # ends already on the step
    ],
)
def test_nice_ticks_hand_worked(plot, lo, hi, max_ticks, expected):
    got = plot.nice_ticks(lo, hi, max_ticks)
    assert got == expected  # exact: ticks are built from integers, not by adding steps
    assert [repr(v) for v in got] == [repr(float(v) + 0.0) for v in expected]


def test_nice_ticks_matches_brute_force(plot):
    """Smallest step of a fixed list of 1/2/5 x 10^k that fits max_ticks, ticks end on multiples of it."""
    steps = [m * 10.0**k for k in range(-6, 8) for m in (1, 2, 5)]
    rng = random.Random(0)
    for _ in range(300):
        scale = 10 ** rng.uniform(-3, 5)
        lo = rng.uniform(-1, 1) * scale
        hi = lo + rng.uniform(0.01, 2) * scale
        n = rng.randint(3, 10)
        for step in steps:
            a, b = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
            if b - a + 1 <= n:
                break
        got = plot.nice_ticks(lo, hi, n)
        assert len(got) == b - a + 1 <= n
        assert got[0] <= lo and got[-1] >= hi
        assert got == pytest.approx([i * step for i in range(a, b + 1)], rel=1e-12, abs=1e-12 * step)


@pytest.mark.parametrize("lo, hi, n", [(1, 0, 8), (NAN, 1, 8), (0, math.inf, 8), (0, 1, 1)])
def test_nice_ticks_rejects(plot, lo, hi, n):
    with pytest.raises(ValueError):
        plot.nice_ticks(lo, hi, n)


def test_tick_labels(plot):
    assert [plot._fmt(v, 20000) for v in (0, 20000, 100000)] == ["0", "20k", "100k"]
    assert (plot._fmt(2_500_000, 500_000), plot._fmt(3_000_000, 1_000_000)) == ("2500k", "3M")  # unit of the step
    assert [plot._fmt(v, 0.05) for v in (0.1, 0.15)] == ["0.10", "0.15"]
    assert [plot._fmt(v, 500) for v in (1500, -500)] == ["1500", "-500"]


def test_to_pixel_hand_worked(plot):
    inset = plot.INSET
    f = plot.Frame(100, 50, 500, 450, (0.0, 5.0, 10.0), (0.0, 20.0, 40.0))
    assert f.to_pixel(0, 0) == (100 + inset, 450 - inset)
    assert f.to_pixel(10, 40) == (500 - inset, 50 + inset)
    assert f.to_pixel(5, 20) == (300, 250)
    assert f.to_pixel(2.5, 30) == pytest.approx((100 + inset + 0.25 * (400 - 2 * inset), 450 - inset - 0.75 * (400 - 2 * inset)))


def test_frame_ranges(plot):
    f = plot.chart_frame(TWO, hlines={"target": 30.0})
    assert (f.xticks[0], f.xticks[-1]) == (0, 20)
    assert f.yticks[0] == 0 and f.yticks[-1] >= 30 * 1.04  # from 0 (nothing negative); hline + margin
    f = plot.chart_frame(TWO, bands={"a": [(10, 12.0, 41.0)]})
    assert f.yticks[-1] >= 41
    f = plot.chart_frame({"a": [(0, -3.0), (1, 2.0)]})
    assert f.yticks[0] < -3 and f.yticks[-1] > 2
    f = plot.chart_frame({"zero": [(0, 0.0), (1, 0.0)]})
    assert f.yticks[0] == 0 and f.yticks[-1] >= 1
    assert plot.chart_frame(TWO, size=(640, 400)).right < plot.chart_frame(TWO).right


@pytest.mark.parametrize("size", [(900, 520), (640, 400)])
def test_chart_png_and_series_colours(plot, tmp_path, size):
    path = tmp_path / "c.png"
    plot.line_chart(TWO, str(path), size=size, **KW)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = Image.open(path)
    assert img.size == size and img.mode == "RGB"
    frame = plot.chart_frame(TWO, size=size)
    for i, name in enumerate(TWO):
        for x, y in TWO[name][1:]:
            px, py = frame.to_pixel(x, y)
            assert img.getpixel((int(px), int(py))) == plot.PALETTE[i], (name, x, y)
    px, py = frame.to_pixel(13, 16.0)  # between the curves, off the grid: background
    assert img.getpixel((int(px), int(py))) == plot.BACKGROUND
    assert os.listdir(tmp_path) == ["c.png"]  # atomic write leaves no temporary file


def test_hline_row(plot, tmp_path):
    hlines = {"target 30 box AP": 30.0}
    plot.line_chart(TWO, tmp_path / "h.png", hlines=hlines, **KW)
    img, frame = Image.open(tmp_path / "h.png"), plot.chart_frame(TWO, hlines=hlines)
    row = int(frame.to_pixel(0, 30.0)[1])

    def dashes(r: int) -> float:
        return sum(img.getpixel((x, r)) == plot.HLINE for x in range(frame.left, frame.right)) / (
            frame.right - frame.left
        )

    assert dashes(row) > 0.5  # 8 px on, 5 off (less where the label's background sits)
    assert dashes(row - 2) < 0.05 and dashes(row + 2) < 0.05


def test_band_is_shaded_under_the_line(plot, tmp_path):
    bands = {"a": [(x, y - 6, y + 6) for x, y in TWO["a"]]}
    plot.line_chart(TWO, tmp_path / "b.png", bands=bands, **KW)
    img, frame = Image.open(tmp_path / "b.png"), plot.chart_frame(TWO, bands=bands)
    alpha = plot.BAND_ALPHA / 255
    shade = tuple(round(c * alpha + 255 * (1 - alpha)) for c in plot.PALETTE[0])
    px, py = frame.to_pixel(12, 17.0)  # line at 21 there, band 15 .. 27; not on a grid line
    assert img.getpixel((int(px), int(py))) == pytest.approx(shade, abs=2)
    px, py = frame.to_pixel(12, 13.0)  # below the band
    assert img.getpixel((int(px), int(py))) == plot.BACKGROUND
    mx, my = frame.to_pixel(10, 20.0)  # the marker is drawn over the band
    assert img.getpixel((int(mx), int(my))) == plot.PALETTE[0]


def test_nan_points_skipped(plot, tmp_path):
    series = {"a": [(0, 1.0), (1, NAN), (NAN, 3.0), (2, math.inf), (3, 4.0)], "b": [(0, 2.0)]}
    bands = {"a": [(0, 0.5, 1.5), (1, NAN, 2.0), (3, 3.5, 4.5)]}
    plot.line_chart(series, tmp_path / "n.png", bands=bands, **KW)
    frame = plot.chart_frame(series, bands=bands)
    assert (frame.xticks[0], frame.xticks[-1]) == (0, 3) and all(map(math.isfinite, frame.yticks))
    img = Image.open(tmp_path / "n.png")
    px, py = frame.to_pixel(3, 4.0)
    assert img.getpixel((int(px), int(py))) == plot.PALETTE[0]


@pytest.mark.parametrize(
    "series, extra",
    [
        ({}, {}),
        ({"a": []}, {}),
        ({"a": [(0, NAN), (1, NAN)]}, {}),
        (TWO, {"bands": {"c": [(0, 1.0, 2.0)]}}),
        (TWO, {"hlines": {"bad": NAN}}),
    ],
)
def test_invalid_input_raises(plot, tmp_path, series, extra):
    with pytest.raises(ValueError):
        plot.line_chart(series, tmp_path / "x.png", **KW, **extra)
    assert not (tmp_path / "x.png").exists()


def test_legend_avoids_the_curves(plot):
    """A falling curve and a flat one along the bottom fill the lower right (the preferred corner)."""
    series = {"loss": [(x, 10.0 * math.exp(-x / 3)) for x in range(11)], "other": [(x, 0.2) for x in range(11)]}
    series, hlines, bands = plot._prepare(series, None, None)
    frame = plot._frame(series, hlines, bands, (900, 520))
    samples = plot._samples(frame, series, bands)
    box = plot._legend_box(frame, series, samples, [])
    assert box[0] < (frame.left + frame.right) / 2 or box[3] < (frame.top + frame.bottom) / 2  # not lower right
    assert not any(box[0] <= x <= box[2] and box[1] <= y <= box[3] for x, y in samples)
    # and an avoided box (a reference-line label) in that free corner moves it on
    moved = plot._legend_box(frame, series, samples, [box])
    assert moved != box and not plot._overlap(moved, box)
