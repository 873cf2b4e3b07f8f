"""``omniseg viz``: overlay PNGs (ground truth | predictions) and an HTML page with per-class AP."""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

from omniseg.commands.common import (
    add_bad_record_arg,
    bad_records,
    check_out_folder,
    check_output_not_input,
    non_empty_path,
    non_negative_int,
    report_skips,
    unit_float,
)
from omniseg.commands.evaluate import split_name
from omniseg.data.errors import BadRecords
from omniseg.errors import UsageError


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("gt", help="dataset folder, COCO instances JSON or image folder")
    p.add_argument("--pred", default=None, help="COCO results JSON to draw next to the ground truth")
    p.add_argument("--out", type=non_empty_path, required=True, help="output folder (index.html, images/, curves/)")
    p.add_argument("--limit", type=non_negative_int, default=48, help="number of images to draw")
    p.add_argument("--min-score", type=unit_float, default=0.3, help="hide predictions below this score (0..1)")
    p.add_argument("--split", type=split_name, default=None,
                   help="with --pred: base / novel breakdown of a named split (AP table column, PR curves)")
    p.add_argument("--run", default=None, help="training run folder: its training curves (metrics.jsonl) go "
                   "into the report")
    p.add_argument("--no-progress", action="store_true")
    add_bad_record_arg(p)


def write_visualization(gt, pred, out: str | Path, limit: int = 48, min_score: float = 0.3,
                        tables=(), notes=(), progress: bool = True, on_bad: BadRecords | None = None,
                        groups: dict[str, list[int]] | None = None, run_dir: str | Path | None = None) -> Path:
    """Draw up to ``limit`` images (GT outlined, predictions beside them), curves, and write ``out/index.html``.

    Every drawing gets its own file name (``images/<stem>_<image id>.png``, made unique), so two
    records never overwrite each other's drawing. The drawings are staged and swapped in as the
    whole ``images/`` folder (:func:`omniseg.utils.atomic.atomic_dir`): it holds only this run's
    drawings, never stale ones of an earlier run, and an ``images/`` holding anything but PNGs is
    refused. The same holds for ``curves/``: precision-recall curves at IoU 0.5 of ``pred``
    (all and each of ``groups``) and the training curves of ``run_dir``. On an error the previous
    output is left as it was.

    Args:
        gt: RecordSet whose ``image_path`` resolves to readable images of the declared sizes.
        pred: RecordSet of predictions over the same image ids, or None.
        limit: the first ``limit`` records are drawn (>= 0).
        tables: extra :class:`omniseg.viz.html.Table` objects shown above the grid.
        on_bad: policy for images that cannot be read, lie outside the image root or differ in size
            from their record: error (default) or a counted skip.
        groups: group name -> category ids (base / novel) for the PR curves.
        run_dir: a training run folder whose ``metrics.jsonl`` (and its stages') is plotted.

    Returns:
        path of the HTML page.
    """
    from omniseg.commands.common import load_record_image_or_skip, removed_on_error, unique_name
    from omniseg.data.formats.validation import progress_bar
    from omniseg.utils.atomic import atomic_dir
    from omniseg.viz.draw import draw_ground_truth, draw_instances, side_by_side
    from omniseg.viz.html import write_html_page

    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    bad = on_bad if on_bad is not None else BadRecords()
    out = Path(out)
    by_id = {r.image_id: r for r in pred} if pred is not None else {}
    items, taken = [], set()
    records = progress_bar(gt.records[:limit], min(limit, len(gt.records)), "drawing", progress)
    with removed_on_error(out):  # out: gone if new
        with atomic_dir(out / "images", owned=("*.png",)) as staged:
            for index, r in enumerate(records):
                img = load_record_image_or_skip(gt, r, bad)
                if img is None:
                    continue
                panels = [draw_ground_truth(img, r.instances, r.segments)]
                cap = f"{r.file_name}: {len(r.instances)} GT (left, outlined)"
                if pred is not None:
                    p = by_id.get(r.image_id)
                    shown = [i for i in (p.instances if p else []) if (i.score or 0) >= min_score]
                    panels.append(draw_instances(img, shown, min_score=min_score))
                    cap += f" | {len(shown)} predicted (right, score >= {min_score})"
                if r.captions:
                    cap += f" | \u201c{r.captions[0]}\u201d"
                name = unique_name(f"{Path(str(r.file_name)).stem}_{r.image_id}", ".png", taken, index)
                side_by_side(panels).save(staged / name, format="PNG")
                items.append(("images/" + name, cap))
        plots = _write_curves(gt, pred, out / "curves", groups, run_dir)
    page = out / "index.html"  # after the swap: the page never names a missing drawing
    write_html_page(page, f"OmniSeg: {gt.name or 'dataset'}", images=items, tables=tables, notes=notes, plots=plots)
    return page


def _iou_type(gt, pred) -> str:
    """Mask AP when every prediction has a mask, else box AP (box-only predictions)."""
    return "segm" if all(i.mask is not None for r in pred for i in r.instances) else "bbox"


def _write_curves(gt, pred, folder: Path, groups, run_dir) -> list[tuple[str, str]]:
    """PR curves of ``pred`` and training curves of ``run_dir`` into ``folder`` (replaced as a whole;
    an old one is emptied when there is nothing to draw). Returns (path relative to the page, caption)."""
    from omniseg.utils.atomic import atomic_dir
    from omniseg.viz.curves import metric_logs, plot_pr_curves, plot_training_curves, pr_curves

    scored = pred is not None and all(i.score is not None for r in pred for i in r.instances)
    logs = metric_logs(run_dir) if run_dir is not None else []
    if not scored and not logs and not folder.exists():
        return []
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:  # the drawings and tables do not need it
        print(f"{folder}: no PR / training curves: they need matplotlib (pip install 'omniseg[viz]')")
        return []
    from omniseg.engine.logging import read_metric_log

    plots: list[tuple[str, str]] = []
    with atomic_dir(folder, owned=("*.png",)) as staged:
        if scored:
            iou_type = _iou_type(gt, pred)
            curves = pr_curves(gt, pred, iou_type, groups)
            if curves:
                what = "mask" if iou_type == "segm" else "box"
                plot_pr_curves(curves, staged / f"pr_{what}.png", f"precision-recall, {what} IoU 0.5")
                plots.append((f"pr_{what}.png", f"precision vs recall at {what} IoU 0.5 (COCO interpolation, "
                              "mean over the classes with ground truth)"))
        for prefix, path in logs:
            for png in plot_training_curves(read_metric_log(path), staged, prefix):
                plots.append((png.name, f"{png.stem.replace('_', ' ')} vs iteration ({path})"))
    return [(f"{folder.name}/{name}", cap) for name, cap in plots]


def per_class_ap_table(results: dict, iou_type: str = "segm", gt=None, groups: dict | None = None):
    """HTML table of per-class AP / AP50 from ``evaluate_all(..., per_class=True)`` results.

    With ``gt`` a ``#GT`` column (the non-crowd instances the evaluator scores: with a mask for
    mask AP) and, with ``groups`` (name -> category ids, e.g. base / novel), a group column.
    Classes without ground truth in the evaluated set are hidden (those with no AP when ``gt`` is
    not given); the table's note says how many.
    """
    from omniseg.evaluation.instance import METRIC_PREFIX
    from omniseg.viz.html import Table

    prefix = f"class/{METRIC_PREFIX[iou_type]}/"
    rows: dict[str, dict[str, float]] = {}
    for k, v in results.items():
        if k.startswith(prefix):
            name, _, metric = k[len(prefix):].rpartition("/")
            rows.setdefault(name, {})[metric] = v
    count: dict[str, int] = {}
    group_of: dict[str, str] = {}
    if gt is not None:
        names = {c.id: c.name for c in gt.categories}
        for r in gt.records:
            for i in r.instances:
                if i.category_id is not None and not i.is_crowd and (iou_type == "bbox" or i.mask is not None):
                    n = names.get(i.category_id, str(i.category_id))
                    count[n] = count.get(n, 0) + 1
        for g, ids in (groups or {}).items():
            group_of.update({names.get(int(c), str(c)): g for c in ids})
    headers = ["class", *(["group"] if group_of else []), *(["#GT"] if gt is not None else []), "AP", "AP50"]
    shown = [n for n, m in rows.items()
             if (count.get(n, 0) > 0 if gt is not None else not math.isnan(m.get("AP", math.nan)))]
    table = [[n, *([group_of.get(n, "")] if group_of else []), *([count[n]] if gt is not None else []),
              100 * rows[n].get("AP", math.nan), 100 * rows[n].get("AP50", math.nan)] for n in shown]
    hidden = len(rows) - len(shown)
    note = (f"{len(shown)} classes with ground truth in this set; {hidden} without it hidden. "
            "Click a column header to sort.")
    return Table(f"per-class {iou_type} AP (%)", headers, table, note)


def summary_table(results: dict, iou_type: str = "segm"):
    """AP / AP50 / AP75 overall and per group (base / novel) from ``evaluate_all`` results."""
    from omniseg.evaluation.instance import METRIC_PREFIX
    from omniseg.viz.html import Table

    p = METRIC_PREFIX[iou_type]
    groups = sorted({k.split("/", 1)[1] for k in results if k.startswith(f"{p}_AP/")})
    rows = [[g or "all", *(100 * results.get(f"{p}_{m}{'/' + g if g else ''}", math.nan)
                           for m in ("AP", "AP50", "AP75"))] for g in ["", *groups]]
    return Table(f"{p} AP (%)", ["classes", "AP", "AP50", "AP75"], rows)


def check_out_apart(out: str, folders: list[str]) -> None:
    """A :class:`UsageError` when the output folder is or lies inside one of the input ``folders``
    (the dataset folder, its image folder), or when its ``images/`` (where the drawings go) is or
    contains one: drawings must never land among the data. An --out merely containing the dataset
    elsewhere (``viz data/s --out data``) is fine."""
    o = Path(os.path.realpath(out))
    for f in folders:
        d = Path(os.path.realpath(f))
        if o == d or d in o.parents or d == o / "images" or o / "images" in d.parents:
            raise UsageError(f"--out: {out} is an input of this command or overlaps it ({f})")


def main(args: argparse.Namespace) -> int:
    from omniseg.data.load import load_dataset

    check_output_not_input(args.out, [args.gt, args.pred])
    check_out_folder(args.out)
    if args.run is not None and not Path(args.run).is_dir():
        raise UsageError(f"--run: {args.run}: not a folder (a training run's output_dir)")
    bad = bad_records(args)
    gt = load_dataset(args.gt, on_bad=bad)
    check_out_apart(args.out, [f for f in (args.gt, gt.image_root) if f and os.path.isdir(f)])
    pred, tables, groups = None, [], None
    if args.pred:
        from omniseg.commands.evaluate import evaluate_all, split_groups
        from omniseg.data.formats.coco import read_coco_results

        pred = read_coco_results(args.pred, gt, on_bad=bad)
        groups = split_groups(args.split, gt.categories)
        # box-only predictions (no masks) get a box AP table instead of a mask AP one
        iou_type = _iou_type(gt, pred)
        res = evaluate_all(gt, pred, [iou_type], groups, per_class=True)
        tables += [summary_table(res, iou_type), per_class_ap_table(res, iou_type, gt, groups)]
    page = write_visualization(gt, pred, args.out, args.limit, args.min_score, tables, progress=not args.no_progress,
                               on_bad=bad, groups=groups, run_dir=args.run)
    print(f"wrote {page}")
    report_skips(bad)
    return 0
