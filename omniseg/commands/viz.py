"""``omniseg viz``: overlay PNGs (ground truth | predictions) and an HTML page with per-class AP."""

from __future__ import annotations

import argparse
from pathlib import Path

from omniseg.commands.common import add_bad_record_arg, bad_records, report_skips


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("gt", help="dataset folder, COCO instances JSON or image folder")
    p.add_argument("--pred", default=None, help="COCO results JSON to draw next to the ground truth")
    p.add_argument("--out", required=True, help="output folder (index.html + PNGs)")
    p.add_argument("--limit", type=int, default=48, help="number of images to draw")
    p.add_argument("--min-score", type=float, default=0.3, help="hide predictions below this score")
    p.add_argument("--no-progress", action="store_true")
    add_bad_record_arg(p)


def write_visualization(gt, pred, out: str | Path, limit: int = 48, min_score: float = 0.3,
                        tables=(), notes=(), progress: bool = True) -> Path:
    """Draw up to ``limit`` images (GT, and predictions beside them) and write ``out/index.html``.

    Args:
        gt: RecordSet whose ``image_path`` resolves to readable images.
        pred: RecordSet of predictions over the same image ids, or None.
        tables: extra :class:`omniseg.viz.html.Table` objects shown above the grid.

    Returns:
        path of the HTML page.
    """
    from omniseg.data.formats.validation import progress_bar
    from omniseg.data.images import load_image
    from omniseg.utils.atomic import atomic_open
    from omniseg.viz.draw import draw_instances, side_by_side
    from omniseg.viz.html import write_html_page

    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    by_id = {r.image_id: r for r in pred} if pred is not None else {}
    items = []
    for r in progress_bar(gt.records[:limit], min(limit, len(gt.records)), "drawing", progress):
        img = load_image(gt.image_path(r))
        panels = [draw_instances(img, r.instances, r.segments)]
        cap = f"{r.file_name}: {len(r.instances)} GT"
        if pred is not None:
            p = by_id.get(r.image_id)
            shown = [i for i in (p.instances if p else []) if (i.score or 0) >= min_score]
            panels.append(draw_instances(img, shown, min_score=min_score))
            cap += f" | {len(shown)} predicted (score >= {min_score})"
        if r.captions:
            cap += f" | \u201c{r.captions[0]}\u201d"
        name = f"images/{Path(str(r.file_name)).stem}_{r.image_id}.png"
        with atomic_open(out / name, "wb") as f:
            side_by_side(panels).save(f, format="PNG")
        items.append((name, cap))
    page = out / "index.html"
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


def main(args: argparse.Namespace) -> int:
    from omniseg.data.load import load_dataset

    bad = bad_records(args)
    gt = load_dataset(args.gt, on_bad=bad)
    pred, tables = None, []
    if args.pred:
        from omniseg.commands.evaluate import evaluate_all
        from omniseg.data.formats.coco import read_coco_results

        pred = read_coco_results(args.pred, gt, on_bad=bad)
        res = evaluate_all(gt, pred, ["segm"], per_class=True)
        tables.append(per_class_ap_table(res))
    page = write_visualization(gt, pred, args.out, args.limit, args.min_score, tables, progress=not args.no_progress)
    print(f"wrote {page}")
    report_skips(bad)
    return 0
