"""Render evaluation results as markdown tables and JSON (for BENCHMARKS.md and the HTML viz).

Metric functions return fractions in [0, 1] with NaN where a metric is undefined. Here
fractions are shown as percentages (``scale=100``) and NaN as an em dash; in JSON, NaN
and infinities become ``null`` (strict JSON has no NaN).

Per-class numbers are read from the ``"class/<name>/<metric>"`` keys that
:func:`omniseg.evaluation.instance.evaluate_instances` returns with ``per_class=True``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from omniseg.utils.atomic import atomic_write_json, atomic_write_text

#: the order COCO prints its summary in; other keys follow in their own order
COCO_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR")


def to_jsonable(obj: Any) -> Any:
    """Numpy scalars/arrays -> Python, NaN/inf -> None, non-str keys -> str (recursively)."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def format_value(v: Any, scale: float = 100.0, digits: int = 1) -> str:
    """One table cell: numbers scaled and rounded, NaN / None as an em dash."""
    if v is None:
        return "—"
    if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool):
        f = float(v)
        if math.isnan(f):
            return "—"
        return f"{f * scale:.{digits}f}"
    return str(v)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub markdown table; ``|`` in cells is escaped."""

    def cell(s: str) -> str:
        return str(s).replace("|", "\\|")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def summary_keys(results: Mapping[str, Any]) -> list[str]:
    """Numeric, non-per-class keys of one result dict, COCO keys first."""
    keys = [k for k in results if _is_number(results[k]) and not k.startswith("class/")]
    first = [k for k in COCO_KEYS if k in keys]
    return first + [k for k in keys if k not in first]


def metrics_table(
    runs: Mapping[str, Mapping[str, Any]],
    keys: Sequence[str] | None = None,
    scale: float = 100.0,
    digits: int = 1,
) -> str:
    """One row per run (method / supervision regime), one column per metric.

    Args:
        runs: run name -> result dict (e.g. the output of ``evaluate_instances``).
        keys: columns; default: the union of :func:`summary_keys` in first-seen order.
        scale: multiply fractions by this (100 -> percent).
        digits: decimals.
    """
    if keys is None:
        keys = []
        for res in runs.values():
            keys += [k for k in summary_keys(res) if k not in keys]
    def cell(res: Mapping[str, Any], k: str) -> str:  # counts ("num_*") are not fractions
        return format_value(res.get(k), 1.0, 0) if k.rsplit("/", 1)[-1].startswith("num_") else format_value(res.get(k), scale, digits)

    rows = [[name] + [cell(res, k) for k in keys] for name, res in runs.items()]
    return markdown_table(["run", *keys], rows)


def per_class_results(results: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """``{"class/person/AP": .5, ...}`` -> ``{"person": {"AP": .5, ...}}`` (class order kept)."""
    out: dict[str, dict[str, float]] = {}
    for key, v in results.items():
        if not key.startswith("class/"):
            continue
        name, _, metric = key[len("class/") :].rpartition("/")
        out.setdefault(name, {})[metric] = v
    return out


def per_class_table(results: Mapping[str, Any], scale: float = 100.0, digits: int = 1) -> str:
    """Markdown table of per-class metrics (one row per class)."""
    per = per_class_results(results)
    metrics: list[str] = []
    for m in per.values():
        metrics += [k for k in m if k not in metrics]
    rows = [[name] + [format_value(m.get(k), scale, digits) for k in metrics] for name, m in per.items()]
    return markdown_table(["class", *metrics], rows)


def build_report(results: Mapping[str, Any], title: str = "", meta: Mapping[str, Any] | None = None) -> dict:
    """JSON-ready report: summary metrics, per-class rows (for the HTML viz) and metadata."""
    per = per_class_results(results)
    return to_jsonable(
        {
            "title": title,
            "meta": dict(meta or {}),
            "metrics": {k: results[k] for k in summary_keys(results)},
            "per_class": [{"name": name, **m} for name, m in per.items()],
        }
    )


def write_report(
    json_path: str | os.PathLike,
    results: Mapping[str, Any],
    markdown_path: str | os.PathLike | None = None,
    title: str = "",
    meta: Mapping[str, Any] | None = None,
) -> dict:
    """Write the JSON report (and optionally a markdown rendering) atomically; return the report."""
    report = build_report(results, title, meta)
    atomic_write_json(json_path, report, indent=2)
    if markdown_path is not None:
        text = (f"# {title}\n\n" if title else "") + metrics_table({title or "results": results})
        if report["per_class"]:
            text += "\n" + per_class_table(results)
        atomic_write_text(markdown_path, text)
    return report
