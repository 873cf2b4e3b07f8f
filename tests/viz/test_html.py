"""HTML page: table values, escaping, NaN as a dash, pictures linked to full size, atomic write."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from omniseg.viz.html import Table, _cell, render_table, write_html_page


def test_cells() -> None:
    assert _cell(12.345) == "12.3"
    assert _cell(0.05) == "0.1"
    assert _cell(7) == "7"
    assert _cell(np.int64(7)) == "7"
    assert _cell(np.float32(2.25)) == "2.2"  # numpy floats rounded like Python floats (half to even)
    assert _cell(np.float64(99.96)) == "100.0"
    for dash in (None, float("nan"), np.float32("nan"), np.float64("nan")):
        assert _cell(dash) == "&ndash;"
    assert _cell("a<b & 'c'") == "a&lt;b &amp; &#x27;c&#x27;"
    assert _cell(True) == "True"


def test_render_table_hand() -> None:
    t = Table("per-class <AP>", ["class", "AP"], [["cat", 50.0], ["dog", float("nan")]], note="1 < 2 hidden")
    assert render_table(t) == (
        "<section><h2>per-class &lt;AP&gt;</h2><p class='note'>1 &lt; 2 hidden</p><div class='scroll'>"
        "<table class='sortable'><thead><tr><th>class</th><th>AP</th></tr></thead>"
        "<tbody><tr><td>cat</td><td>50.0</td></tr><tr><td>dog</td><td>&ndash;</td></tr></tbody></table></div>"
        "</section>"
    )
    assert "<tbody></tbody>" in render_table(Table("empty", ["a"]))
    assert "class='note'" not in render_table(Table("no note", ["a"]))


def test_long_tables_stay_open() -> None:
    """86 rows are shown (in a scrolling box), not folded away behind a click."""
    text = render_table(Table("t", ["class"], [[f"c{i}"] for i in range(86)]))
    assert "<details" not in text and text.count("<tr>") == 87


def test_pictures_link_to_full_size_and_plots_come_first(tmp_path: Path) -> None:
    page = tmp_path / "index.html"
    write_html_page(page, "t", images=[("images/a.png", "a"), ("images/b.png", "b")],
                    tables=[Table("metrics", ["x"], [[1]])], plots=[("curves/loss.png", "loss")])
    text = page.read_text()
    for src in ("images/a.png", "images/b.png", "curves/loss.png"):
        assert f"<a href='{src}' title='open full size'><img src='{src}'" in text
    assert text.index("curves/loss.png") < text.index("<h2>metrics</h2>") < text.index("images/a.png")
    assert "<script>" in text  # the column sorter, with tables only
    write_html_page(page, "t", images=[("images/a.png", "a")])
    assert "<script>" not in page.read_text() and "Curves" not in page.read_text()


def test_page_contents(tmp_path: Path) -> None:
    page = tmp_path / "out" / "index.html"
    t = Table("metrics", ["run", "AP", "AP50", "n"], [["perturbed", 23.64, float("nan"), 12]])
    write_html_page(
        page,
        "Title & <b>",
        images=[("images/a_1.png", 'a "red" <script>alert(1)</script> circle')],
        tables=[t],
        notes=["left: GT <i>", "right: predictions"],
    )
    text = page.read_text(encoding="utf-8")
    assert text.startswith("<!doctype html>")
    assert "<title>Title &amp; &lt;b&gt;</title>" in text
    assert "<td>perturbed</td><td>23.6</td><td>&ndash;</td><td>12</td>" in text
    assert "<th>AP50</th>" in text
    assert "<p>left: GT &lt;i&gt;</p>" in text and "<p>right: predictions</p>" in text
    assert "<script>alert" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "a &quot;red&quot;" in text
    assert "<img src='images/a_1.png'" in text
    assert text.count("<figure>") == 1


def test_no_images_no_grid(tmp_path: Path) -> None:
    write_html_page(tmp_path / "p.html", "t")
    text = (tmp_path / "p.html").read_text()
    assert "class='grid'" not in text and text.endswith("</body></html>")


def test_image_src_quotes_escaped(tmp_path: Path) -> None:
    write_html_page(tmp_path / "p.html", "t", images=[("it's.png", "c")])
    assert "src='it&#x27;s.png'" in (tmp_path / "p.html").read_text()


def test_written_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    page = tmp_path / "index.html"
    write_html_page(page, "first")
    assert os.listdir(tmp_path) == ["index.html"]
    old = page.read_text()

    def failing_replace(src, dst):
        raise OSError("disk full")

    import omniseg.utils.atomic as atomic

    monkeypatch.setattr(atomic.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        write_html_page(page, "second")
    monkeypatch.undo()
    assert page.read_text() == old  # the previous page is intact
    assert os.listdir(tmp_path) == ["index.html"]  # no temporary file left behind
