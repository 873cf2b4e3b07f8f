"""A self-contained HTML page: a grid of overlay images and metric tables."""

from __future__ import annotations

import html
import math
import numbers
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from omniseg.utils.atomic import atomic_write_text


@dataclass
class Table:
    """A titled table; ``rows`` hold str or float cells (floats printed with 1 decimal)."""

    title: str
    headers: list[str]
    rows: list[list[str | float | int | None]] = field(default_factory=list)


def _cell(v: str | float | int | None) -> str:
    """One escaped cell: floats (numpy ones too) with 1 decimal, None / NaN as a dash."""
    if v is None:
        return "&ndash;"
    if isinstance(v, numbers.Real) and not isinstance(v, (bool, numbers.Integral)):
        f = float(v)
        return "&ndash;" if math.isnan(f) else f"{f:.1f}"
    return html.escape(str(v))


#: tables longer than this are folded (click to open) so the pictures stay near the top
FOLD_ROWS = 12


def render_table(t: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in t.headers)
    body = "".join("<tr>" + "".join(f"<td>{_cell(c)}</td>" for c in row) + "</tr>" for row in t.rows)
    table = f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    if len(t.rows) > FOLD_ROWS:
        return (f"<details><summary><h2>{html.escape(t.title)} ({len(t.rows)} rows, click to open)</h2></summary>"
                f"{table}</details>")
    return f"<h2>{html.escape(t.title)}</h2>{table}"


_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(260px,1fr));gap:12px}
figure{margin:0;border:1px solid #ddd;padding:4px;background:#fafafa}
figure img{width:100%;image-rendering:pixelated}
figcaption{font-size:12px;color:#555;word-break:break-word}
summary{cursor:pointer}summary h2{display:inline;font-size:1.2em}
table{border-collapse:collapse;margin-bottom:1em;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}
"""


def write_html_page(
    path: str | os.PathLike,
    title: str,
    images: Sequence[tuple[str, str]] = (),
    tables: Sequence[Table] = (),
    notes: Sequence[str] = (),
) -> None:
    """Write the page atomically.

    Args:
        path: output .html file.
        images: (image path relative to the page, caption) pairs shown as a grid.
        tables: metric tables shown above the grid.
        notes: short paragraphs (plain text) shown under the title.
    """
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"]
    parts.append(f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>")
    parts += [f"<p>{html.escape(n)}</p>" for n in notes]
    parts += [render_table(t) for t in tables]
    if images:
        parts.append("<div class='grid'>")
        for src, cap in images:
            parts.append(
                f"<figure><img src='{html.escape(src)}' loading='lazy'>"
                f"<figcaption>{html.escape(cap)}</figcaption></figure>"
            )
        parts.append("</div>")
    parts.append("</body></html>")
    atomic_write_text(path, "\n".join(parts))
