"""``omniseg eval``: COCO mask / box AP (base / novel), Open-Images AP50, panoptic PQ."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from omniseg.commands.common import (
    add_bad_record_arg,
    bad_records,
    check_out_file,
    check_output_not_input,
    non_empty_path,
    non_negative_int,
)
from omniseg.errors import UsageError, UserError


def split_name(text: str) -> str:
    """argparse type of ``--split``: a name in :data:`omniseg.data.splits.SPLITS` ('' = none)."""
    from omniseg.data.splits import SPLITS

    if text and text not in SPLITS:
        raise argparse.ArgumentTypeError(f"unknown split {text!r}; choose from {sorted(SPLITS)}")
    return text


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("gt", help="ground truth: dataset folder or COCO / LVIS instances JSON")
    p.add_argument("--pred", required=True, help="predictions: COCO results JSON (list of detections with scores)")
    p.add_argument("--iou-type", nargs="+", choices=("segm", "bbox"), default=["segm", "bbox"])
    p.add_argument("--split", type=split_name, default=None,
                   help="report base / novel groups of a named split (voc-like, zsd-like, compositional)")
    p.add_argument("--split-seed", type=non_negative_int, default=0)
    p.add_argument("--split-file", default=None,
                   help='report base / novel groups of your own split: JSON {"base": [names or ids], "novel": [...]} '
                   "(as data.split_file in training)")
    p.add_argument("--openimages", action="store_true", help="also report Open-Images-style AP50 (<= 100 detections per image)")
    p.add_argument("--per-class", action="store_true", help="print per-class AP")
    p.add_argument("--engine", choices=("faster", "pycocotools"), default="faster")
    p.add_argument("--out", type=non_empty_path, default=None, help="write a JSON report here (and a .md of the same stem next to it); '-': the JSON to "
                   "standard output (no .md; the tables then go to standard error)")
    add_bad_record_arg(p)


def split_groups(name: str | None, categories, seed: int = 0) -> dict[str, list[int]] | None:
    """Base / novel category ids of a named split over ``categories`` (None without a split)."""
    if not name:
        return None
    from omniseg.data.splits import SPLITS

    if name not in SPLITS:
        raise ValueError(f"unknown split {name!r}; choose from {sorted(SPLITS)}")
    split = SPLITS[name](categories, seed=seed)
    return {"base": list(split.base_ids), "novel": list(split.novel_ids)}


def check_ground_truth(gt, source: str) -> None:
    """A :class:`UserError` naming ``source`` when the ground truth has no categories or no labelled
    instance (a captions or narratives file): otherwise every prediction would be blamed instead."""
    if not gt.categories or not any(i.category_id is not None for r in gt.records for i in r.instances):
        raise UserError(f"{source}: has no categories / instances to evaluate against "
                        "(eval needs COCO instances ground truth)")


def check_predictions(pred, iou_types, source: str) -> None:
    """A :class:`UserError` naming ``source`` when mask AP is asked of predictions without masks
    (a box-only results file): the evaluator needs a mask for every prediction."""
    if "segm" not in iou_types:
        return
    missing = [(r.image_id, j) for r in pred.records for j, i in enumerate(r.instances) if i.mask is None]
    if missing:
        total = sum(len(r.instances) for r in pred.records)
        raise UserError(f"{source}: {len(missing)} of {total} predictions have no segmentation (e.g. image "
                        f"{missing[0][0]!r}); mask AP needs masks: pass --iou-type bbox for box AP only")


def evaluate_all(gt, pred, iou_types, groups=None, per_class=False, openimages=False, engine="faster") -> dict:
    """All instance metrics as one flat dict under the project's metric keys (``mask_AP/base``,
    ``box_AP50``, ``class/mask/<name>/AP``: :func:`omniseg.evaluation.instance.metric_keys`)."""
    from omniseg.evaluation.instance import evaluate_instances, metric_keys

    out: dict[str, float] = {}
    for t in iou_types:
        res = evaluate_instances(gt, pred, iou_type=t, groups=groups, engine=engine, per_class=per_class)
        out.update(metric_keys(res, t))
    if openimages:
        from omniseg.evaluation.openimages import openimages_ap50

        res = openimages_ap50(gt, pred, max_dets=100)
        out.update({f"oi/{k}": v for k, v in res.items() if isinstance(v, float)})
    return out


def report_paths(out: str | None) -> list[Path]:
    """The files ``--out`` writes: the JSON report and its markdown sidecar (none for ``-``)."""
    if out is None or out == "-":
        return []
    check_out_file(out)
    if Path(out).suffix == ".md":
        raise UsageError(f"--out: {out}: the markdown report is written next to the JSON one as <stem>.md; "
                         "give the JSON a .json name")
    return [Path(out), Path(out).with_suffix(".md")]


def main(args: argparse.Namespace) -> int:
    from omniseg.data.formats.coco import read_coco_results
    from omniseg.data.load import load_dataset
    from omniseg.evaluation.report import build_report, metrics_table, per_class_table, write_report

    written = report_paths(args.out)
    check_output_not_input(written, [args.gt, args.pred])
    log = sys.stderr if args.out == "-" else sys.stdout  # standard output holds the JSON report
    bad = bad_records(args)
    gt = load_dataset(args.gt, on_bad=bad)
    check_ground_truth(gt, args.gt)
    pred = read_coco_results(args.pred, gt, on_bad=bad)
    check_predictions(pred, args.iou_type, args.pred)
    if args.split and args.split_file:
        raise UsageError("--split and --split-file: give one of them")
    groups = split_groups(args.split, gt.categories, args.split_seed)
    if args.split_file:
        from omniseg.data.splits import split_from_file

        split = split_from_file(args.split_file, gt.categories)
        groups = {"base": list(split.base_ids), "novel": list(split.novel_ids)}
    res = evaluate_all(gt, pred, args.iou_type, groups, args.per_class, args.openimages, args.engine)
    # fractions are shown in percent; counts ("mask_num_gt_skipped") are printed as counts
    summary = {k: v for k, v in res.items() if not k.startswith("class/") and "_num_" not in k}
    print(metrics_table({Path(args.pred).name: summary}), file=log)
    for k, v in res.items():
        if "_num_" in k and v:
            print(f"{k}: {int(v)}", file=log)
    if args.per_class:
        print(per_class_table(res), file=log)
    title = f"{args.pred} vs {args.gt}"
    if args.out == "-":
        json.dump(build_report(res, title), sys.stdout, indent=2, allow_nan=False)
        sys.stdout.write("\n")
        sys.stdout.flush()
        print("report written to standard output", file=log)
    elif args.out:
        write_report(written[0], res, markdown_path=written[1], title=title)
        print(f"report written to {written[0]} and {written[1]}", file=log)
    if bad.total:
        print(bad.summary(), file=log)
    return 0
