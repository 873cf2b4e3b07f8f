"""PNG plots of a run: training curves (loss terms, learning rate, evaluation metrics vs iteration,
from ``metrics.jsonl``) and precision-recall curves at IoU 0.5 (from the COCO evaluator).

matplotlib is imported lazily with the Agg backend (no display needed); without it every
function that draws raises a :class:`~omniseg.errors.UserError` naming the extra to install.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from omniseg.errors import UserError

#: evaluation keys not plotted against the iteration (kept readable: AP and AP50 per group)
_EVAL_SKIP = re.compile(r"(^|/)class/|_num_|_AP(75|s|m|l)\b|_AR\b")
CURVES_DIR = "curves"
_GROUP_STYLE = {"": "-", "base": "--", "novel": ":"}


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("drawing curves needs matplotlib: pip install 'omniseg[viz]'") from None
    return plt


def _number(v: Any) -> float | None:
    """A finite-or-NaN float from a log value (NaN is logged as the string 'nan'), else None."""
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str) and v.lower() in ("nan", "inf", "-inf"):
        return float(v)
    return None


def training_series(records: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, tuple[list[int], list[float]]]]:
    """Split metric-log records into the series of each plot.

    Returns:
        ``{"loss": {key: (steps, values)}, "lr": {...}, "eval": {...}}``: every ``loss*`` key, ``lr``,
        and the ``eval/`` metrics (AP / AP50 per group, accuracies; not per class, not AP75 / APs
        / AR / counts; the ``eval/`` prefix dropped). A plot is left out when none of its series
        has two points (a single point is no curve; the run's final numbers are in its tables).
    """
    out: dict[str, dict[str, tuple[list[int], list[float]]]] = {"loss": {}, "lr": {}, "eval": {}}
    for r in records:
        step = int(r.get("step", 0))
        for k, v in r.items():
            value = _number(v)
            if value is None:
                continue
            if k.startswith("loss"):
                plot, name = "loss", k
            elif k == "lr":
                plot, name = "lr", k
            elif k.startswith("eval/") and not _EVAL_SKIP.search(k):
                plot, name = "eval", k[len("eval/"):]
            else:
                continue
            steps, values = out[plot].setdefault(name, ([], []))
            steps.append(step)
            values.append(value)
    total = out["loss"].get("loss")
    out["loss"] = {k: v for k, v in out["loss"].items() if k == "loss" or v != total}  # a lone term repeats it
    return {p: s for p, s in out.items() if any(len(steps) > 1 for steps, _ in s.values())}


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def plot_training_curves(records: Sequence[Mapping[str, Any]], out_dir: str | Path, prefix: str = "") -> list[Path]:
    """Write ``<prefix>loss.png``, ``<prefix>lr.png`` and ``<prefix>eval.png`` (those with data) into ``out_dir``.

    Losses go on a log axis when they span more than a factor 20; evaluation metrics that are
    fractions (AP, accuracies) are shown in percent.
    """
    plt = _pyplot()
    out, written = Path(out_dir), []
    titles = {"loss": "training losses", "lr": "learning rate", "eval": "evaluation"}
    for plot, series in training_series(records).items():
        fig, ax = plt.subplots(figsize=(6.4, 4.0))
        try:
            finite = [v for _, vals in series.values() for v in vals if math.isfinite(v)]
            percent = plot == "eval" and all(0.0 <= v <= 1.0 for v in finite)
            metrics = sorted({name.split("/")[0] for name in series})
            for name, (steps, values) in sorted(series.items()):
                ys = [100 * v for v in values] if percent else values
                style = {"marker": "o", "markersize": 3} if len(steps) < 30 else {}
                if plot == "eval":  # colour per metric, line style per group (all / base / novel / ...)
                    metric, _, group = name.partition("/")
                    style.update(color=f"C{metrics.index(metric) % 10}", linestyle=_GROUP_STYLE.get(group, "-."))
                ax.plot(steps, ys, label=name, linewidth=2.2 if name in ("loss", "lr") else 1.2, **style)
            if plot == "loss" and finite and min(finite) > 0 and max(finite) / min(finite) > 20:
                ax.set_yscale("log")
            ax.set_xlabel("iteration")
            ax.set_ylabel({"loss": "loss", "lr": "learning rate", "eval": "%" if percent else "value"}[plot])
            ax.set_title(f"{prefix.rstrip('_') + ': ' if prefix else ''}{titles[plot]}")
            ax.grid(alpha=0.3)
            if len(series) > 1:
                ax.legend(fontsize=8, ncol=2 if len(series) > 6 else 1, loc="best", framealpha=0.6)
            fig.tight_layout()
            written.append(_save(fig, out / f"{prefix}{plot}.png"))
        finally:
            plt.close(fig)
    return written


def metric_logs(run_dir: str | Path) -> list[tuple[str, Path]]:
    """(prefix, path) of the run's ``metrics.jsonl`` and of its stages' (``<run>/<stage>/metrics.jsonl``)."""
    run = Path(run_dir)
    logs = [("", run / "metrics.jsonl")] if (run / "metrics.jsonl").is_file() else []
    if run.is_dir():
        logs += [(f"{p.parent.name}_", p) for p in sorted(run.glob("*/metrics.jsonl"))]
    return logs


def write_training_curves(run_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Training-curve PNGs of a run folder (and its stages) into ``out_dir`` (default ``<run>/curves``).

    The folder is replaced as a whole (:func:`omniseg.utils.atomic.atomic_dir`; it may hold only
    PNGs). Returns the written paths, [] (and nothing written) when the run logged no curve.
    """
    from omniseg.engine.logging import read_metric_log
    from omniseg.utils.atomic import atomic_dir

    logs = [(prefix, read_metric_log(path)) for prefix, path in metric_logs(run_dir)]
    logs = [(prefix, recs) for prefix, recs in logs if training_series(recs)]
    if not logs:
        return []
    out = Path(out_dir) if out_dir is not None else Path(run_dir) / CURVES_DIR
    with atomic_dir(out, owned=("*.png",)) as staged:
        names = [p.name for prefix, recs in logs for p in plot_training_curves(recs, staged, prefix)]
    return [out / n for n in names]


def pr_curves(gt: Any, pred: Any, iou_type: str = "segm", groups: Mapping[str, Sequence[int]] | None = None,
              max_dets: int = 100) -> dict[str, np.ndarray]:
    """Precision at the 101 COCO recall points (0, 0.01, ..., 1) at IoU 0.5, all areas, averaged over
    the classes with ground truth: for "all" and each group (e.g. base / novel).

    Read from the evaluator's own precision array (interpolated, as COCO AP50 averages it: the mean
    of a curve is the group's AP50); a recall a class never reaches counts as precision 0. Groups
    with no class holding ground truth are left out.
    """
    from omniseg.evaluation.instance import as_groups, build_coco_inputs, run_coco_eval

    gt_dict, results, _ = build_coco_inputs(gt, pred, iou_type)  # type: ignore[arg-type]
    precision, _, cat_ids, _ = run_coco_eval(gt_dict, results, iou_type, max_dets)  # type: ignore[arg-type]
    p50 = precision[0, :, :, 0, -1]  # R x K
    k_of = {c: i for i, c in enumerate(cat_ids)}
    out: dict[str, np.ndarray] = {}
    for name, ids in {"all": cat_ids, **as_groups(groups)}.items():
        ks = [k_of[int(c)] for c in ids if int(c) in k_of and (p50[:, k_of[int(c)]] > -1).all()]
        if ks:
            out[name] = p50[:, ks].mean(axis=1)
    return out


def plot_pr_curves(curves: Mapping[str, np.ndarray], path: str | Path, title: str) -> Path:
    """One PNG with a precision-recall line per group, its AP50 (mean precision) in the legend."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 4.0))
    try:
        recall = np.linspace(0.0, 1.0, 101)
        for name, precision in curves.items():
            ax.plot(recall, precision, label=f"{name} (AP50 {100 * float(np.mean(precision)):.1f})",
                    linewidth=2.2 if name == "all" else 1.4)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower left")
        fig.tight_layout()
        return _save(fig, Path(path))
    finally:
        plt.close(fig)


def write_training_curves_or_warn(run_dir: str | Path) -> list[Path]:
    """:func:`write_training_curves` for the end of a training run: a failure to draw (no matplotlib,
    a damaged log, a full disk) is a warning, never a failed run."""
    import warnings

    try:
        return write_training_curves(run_dir)
    except Exception as e:  # noqa: BLE001 - the trained run is what matters
        warnings.warn(f"{run_dir}: training curves not drawn: {e}", stacklevel=2)
        return []
