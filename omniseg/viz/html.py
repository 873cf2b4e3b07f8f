"""A self-contained HTML page: plots, metric tables and a grid of overlay images.

Every picture links to its full-size PNG (one click away); tables are open, long ones scroll in a
box with a fixed header, and any table sorts by a column when its header is clicked.
"""

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
    """A titled table; ``rows`` hold str or float cells (floats printed with 1 decimal); ``note``
    is a line of plain text under the title (e.g. how many rows were left out)."""

    title: str
    headers: list[str]
    rows: list[list[str | float | int | None]] = field(default_factory=list)
    note: str = ""


def _cell(v: str | float | int | None) -> str:
    """One escaped cell: floats (numpy ones too) with 1 decimal, None / NaN as a dash."""
    if v is None:
        return "&ndash;"
    if isinstance(v, numbers.Real) and not isinstance(v, (bool, numbers.Integral)):
        f = float(v)
        return "&ndash;" if math.isnan(f) else f"{f:.1f}"
    return html.escape(str(v))


def render_table(t: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in t.headers)
    body = "".join("<tr>" + "".join(f"<td>{_cell(c)}</td>" for c in row) + "</tr>" for row in t.rows)
    note = f"<p class='note'>{html.escape(t.note)}</p>" if t.note else ""
    return (f"<section><h2>{html.escape(t.title)}</h2>{note}<div class='scroll'><table class='sortable'>"
            f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div></section>")


def _picture(src: str, caption: str, lazy: bool = True) -> str:
    """A figure whose image links to the full-size file."""
    s = html.escape(src)
    return (f"<figure><a href='{s}' title='open full size'><img src='{s}'{' loading=lazy' if lazy else ''}></a>"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;max-width:1600px}
h2{font-size:1.2em;margin:1.2em 0 .3em}
.note{color:#555;margin:.2em 0 .5em;font-size:14px}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:14px}
.plots{display:grid;grid-template-columns:repeat(auto-fill,minmax(380px,1fr));gap:14px}
figure{margin:0;border:1px solid #ddd;padding:4px;background:#fafafa}
figure img{width:100%;display:block}
.grid figure img{image-rendering:pixelated}
figcaption{font-size:13px;color:#444;word-break:break-word;margin-top:3px}
.tables{display:flex;flex-wrap:wrap;gap:0 2.5em;align-items:flex-start}
.note{max-width:36em}
.scroll{max-height:28em;overflow:auto;border:1px solid #ccc;margin-bottom:1em;width:max-content;max-width:100%}
table{border-collapse:collapse;font-size:13px}
th,td{border:1px solid #ddd;padding:3px 10px;text-align:right}
th{position:sticky;top:0;background:#eee;cursor:pointer;user-select:none}
th:first-child,td:first-child{text-align:left}
tbody tr:nth-child(even){background:#f7f7f7}
"""

#: click a header to sort by that column (numbers numerically, dashes last); click again to reverse
_SORT_SCRIPT = """
document.querySelectorAll('table.sortable th').forEach((th, col) => th.addEventListener('click', () => {
  const body = th.closest('table').tBodies[0], rows = Array.from(body.rows);
  const down = th.dataset.dir !== 'desc'; th.dataset.dir = down ? 'desc' : 'asc';
  const key = r => { const t = r.cells[col].textContent, n = parseFloat(t);
                     return t === '\\u2013' ? null : (isNaN(n) ? t : n); };
  rows.sort((a, b) => { const x = key(a), y = key(b);
    if (x === null || y === null) return (x === null) - (y === null);
    const c = typeof x === 'number' && typeof y === 'number' ? x - y : String(x).localeCompare(String(y));
    return down ? -c : c; });
  rows.forEach(r => body.appendChild(r));
}));
"""


def write_html_page(
    path: str | os.PathLike,
    title: str,
    images: Sequence[tuple[str, str]] = (),
    tables: Sequence[Table] = (),
    notes: Sequence[str] = (),
    plots: Sequence[tuple[str, str]] = (),
) -> None:
    """Write the page atomically: title, notes, plots, tables, then the image grid.

    Args:
        path: output .html file.
        images: (image path relative to the page, caption) pairs shown as a grid; each links
            to the full-size file.
        tables: metric tables.
        notes: short paragraphs (plain text) shown under the title.
        plots: (PNG path relative to the page, caption) pairs (curves) shown above the tables.
    """
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"]
    parts.append(f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>")
    parts += [f"<p>{html.escape(n)}</p>" for n in notes]
    if plots:
        parts.append("<h2>Curves</h2><div class='plots'>")
        parts += [_picture(src, cap, lazy=False) for src, cap in plots]
        parts.append("</div>")
    if tables:  # side by side where the window is wide enough
        parts += ["<div class='tables'>", *(render_table(t) for t in tables), "</div>"]
    if images:
        parts.append(f"<h2>Images ({len(images)})</h2><p class='note'>Click an image to open it at full size.</p>")
        parts.append("<div class='grid'>")
        parts += [_picture(src, cap) for src, cap in images]
        parts.append("</div>")
    if tables:
        parts.append(f"<script>{_SORT_SCRIPT}</script>")
    parts.append("</body></html>")
    atomic_write_text(path, "\n".join(parts))
