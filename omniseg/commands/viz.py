"""``omniseg viz``: overlay PNGs (ground truth | predictions) and an HTML page with per-class AP."""

from __future__ import annotations

import argparse
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
from omniseg.data.errors import BadRecords
from omniseg.errors import UsageError


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("gt", help="dataset folder, COCO instances JSON or image folder")
    p.add_argument("--pred", default=None, help="COCO results JSON to draw next to the ground truth")
    p.add_argument("--out", type=non_empty_path, required=True, help="output folder (index.html + PNGs)")
    p.add_argument("--limit", type=non_negative_int, default=48, help="number of images to draw")
    p.add_argument("--min-score", type=unit_float, default=0.3, help="hide predictions below this score (0..1)")
    p.add_argument("--no-progress", action="store_true")
    add_bad_record_arg(p)


def write_visualization(gt, pred, out: str | Path, limit: int = 48, min_score: float = 0.3,
                        tables=(), notes=(), progress: bool = True, on_bad: BadRecords | None = None) -> Path:
    """Draw up to ``limit`` images (GT, and predictions beside them) and write ``out/index.html``.

    Every drawing gets its own file name (``images/<stem>_<image id>.png``, made unique), so two
    records never overwrite each other's drawing. The drawings are staged and swapped in as the
    whole ``images/`` folder (:func:`omniseg.utils.atomic.atomic_dir`): it holds only this run's
    drawings, never stale ones of an earlier run, and an ``images/`` holding anything but PNGs is
    refused. On an error the previous output is left as it was.

    Args:
        gt: RecordSet whose ``image_path`` resolves to readable images of the declared sizes.
        pred: RecordSet of predictions over the same image ids, or None.
        limit: the first ``limit`` records are drawn (>= 0).
        tables: extra :class:`omniseg.viz.html.Table` objects shown above the grid.
        on_bad: policy for images that cannot be read, lie outside the image root or differ in size
            from their record: error (default) or a counted skip.

    Returns:
        path of the HTML page.
    """
    from omniseg.commands.common import load_record_image_or_skip, removed_on_error, unique_name
    from omniseg.data.formats.validation import progress_bar
    from omniseg.utils.atomic import atomic_dir
    from omniseg.viz.draw import draw_instances, side_by_side
    from omniseg.viz.html import write_html_page

    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    bad = on_bad if on_bad is not None else BadRecords()
    out = Path(out)
    by_id = {r.image_id: r for r in pred} if pred is not None else {}
    items, taken = [], set()
    records = progress_bar(gt.records[:limit], min(limit, len(gt.records)), "drawing", progress)
    with removed_on_error(out), atomic_dir(out / "images", owned=("*.png",)) as staged:  # out: gone if new
        for index, r in enumerate(records):
            img = load_record_image_or_skip(gt, r, bad)
            if img is None:
                continue
            panels = [draw_instances(img, r.instances, r.segments)]
            cap = f"{r.file_name}: {len(r.instances)} GT"
            if pred is not None:
                p = by_id.get(r.image_id)
                shown = [i for i in (p.instances if p else []) if (i.score or 0) >= min_score]
                panels.append(draw_instances(img, shown, min_score=min_score))
                cap += f" | {len(shown)} predicted (score >= {min_score})"
            if r.captions:
                cap += f" | \u201c{r.captions[0]}\u201d"
            name = unique_name(f"{Path(str(r.file_name)).stem}_{r.image_id}", ".png", taken, index)
            side_by_side(panels).save(staged / name, format="PNG")
            items.append(("images/" + name, cap))
    page = out / "index.html"  # after the swap: the page never names a missing drawing
    write_html_page(page, f"OmniSeg: {gt.name or 'dataset'}", images=items, tables=tables, notes=notes)
    return page


def per_class_ap_table(results: dict, iou_type: str = "segm"):
    """HTML table of per-class AP / AP50 from ``evaluate_all(..., per_class=True)`` results."""
    from omniseg.evaluation.instance import METRIC_PREFIX
    from omniseg.viz.html import Table

    prefix = f"class/{METRIC_PREFIX[iou_type]}/"
    rows: dict[str, dict[str, float]] = {}
    for k, v in results.items():
        if k.startswith(prefix):
            name, _, metric = k[len(prefix):].rpartition("/")
            rows.setdefault(name, {})[metric] = v
    return Table(f"per-class {iou_type} AP (%)", ["class", "AP", "AP50"],
                 [[n, 100 * m.get("AP", float("nan")), 100 * m.get("AP50", float("nan"))] for n, m in rows.items()])


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
    bad = bad_records(args)
    gt = load_dataset(args.gt, on_bad=bad)
    check_out_apart(args.out, [f for f in (args.gt, gt.image_root) if f and os.path.isdir(f)])
    pred, tables = None, []
    if args.pred:
        from omniseg.commands.evaluate import evaluate_all
        from omniseg.data.formats.coco import read_coco_results

        pred = read_coco_results(args.pred, gt, on_bad=bad)
        # box-only predictions (no masks) get a box AP table instead of a mask AP one
        iou_type = "segm" if all(i.mask is not None for r in pred for i in r.instances) else "bbox"
        res = evaluate_all(gt, pred, [iou_type], per_class=True)
        tables.append(per_class_ap_table(res, iou_type))
    page = write_visualization(gt, pred, args.out, args.limit, args.min_score, tables, progress=not args.no_progress,
                               on_bad=bad)
    print(f"wrote {page}")
    report_skips(bad)
    return 0
