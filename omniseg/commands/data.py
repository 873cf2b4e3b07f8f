"""``omniseg data synth|stats|convert``."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

from omniseg.commands.common import add_bad_record_arg, bad_records, report_skips

if TYPE_CHECKING:
    from omniseg.data.records import RecordSet

FORMATS = ("coco", "coco-results", "captions", "narratives", "panoptic", "openimages")


def register(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    s = sub.add_parser("synth", help="generate the synthetic world in all real formats")
    s.add_argument("--out", required=True, help="output folder (re-running resumes / skips finished images)")
    s.add_argument("--num-images", type=int, default=200)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--image-size", type=int, default=256)
    s.add_argument("--workers", type=int, default=1)
    s.add_argument("--no-progress", action="store_true")

    st = sub.add_parser("stats", help="statistics per supervision kind")
    st.add_argument("path", help="dataset folder, COCO/LVIS/captions/panoptic JSON, or image folder")
    st.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_bad_record_arg(st)

    c = sub.add_parser("convert", help="read any supported input and write another format")
    c.add_argument("path", help="dataset folder or annotation file")
    c.add_argument("--to", choices=FORMATS, required=True)
    c.add_argument("--out", required=True, help="output file (panoptic: JSON, PNGs go to a folder of the same stem; "
                   "openimages: boxes CSV, class descriptions go to <stem>-classes.csv next to it)")
    add_bad_record_arg(c)


def _synth(args: argparse.Namespace) -> int:
    from omniseg.data.stats import dataset_stats, format_stats
    from omniseg.data.synth.generate import SynthConfig, generate_dataset

    cfg = SynthConfig(seed=args.seed, num_images=args.num_images, image_size=args.image_size)
    t0 = time.perf_counter()
    rs = generate_dataset(cfg, args.out, workers=args.workers, progress=not args.no_progress)
    dt = time.perf_counter() - t0
    print(f"wrote {len(rs)} images to {args.out} in {dt:.1f} s ({len(rs) / max(dt, 1e-9):.1f} images/s)")
    print(format_stats(dataset_stats(rs), "statistics:"))
    return 0


def openimages_classes_path(boxes_csv: str | Path) -> Path:
    """Where ``data convert --to openimages`` puts the class descriptions CSV: next to the boxes CSV."""
    p = Path(boxes_csv)
    return p.with_name(f"{p.stem}-classes.csv")


def write_format(rs: RecordSet, fmt: str, out: str | Path) -> list[Path]:
    """Write ``rs`` to ``out`` in format ``fmt`` (one of FORMATS).

    ``coco-results`` writes scored instances; a set without any score (ground truth) is written
    as detections with score 1 (crowd regions left out), so GT can serve as a perfect prediction.
    ``openimages`` writes the boxes CSV and the class descriptions CSV next to it
    (:func:`openimages_classes_path`; stand-in LabelNames ``/omniseg/<id>``).

    Returns:
        the files written (panoptic: the JSON; its PNGs go to the folder of the same stem).
    """
    if fmt == "coco":
        from omniseg.data.formats.coco import write_coco_instances

        write_coco_instances(out, rs)
    elif fmt == "coco-results":
        from omniseg.data.formats.coco import write_coco_results

        if not any(i.score is not None for r in rs for i in r.instances):
            from omniseg.evaluation.perturb import as_predictions

            rs = as_predictions(rs)
        write_coco_results(out, rs)
    elif fmt == "captions":
        from omniseg.data.formats.captions import write_coco_captions

        write_coco_captions(out, rs)
    elif fmt == "narratives":
        from omniseg.data.formats.narratives import write_narratives_jsonl

        write_narratives_jsonl(out, rs)
    elif fmt == "panoptic":
        from omniseg.data.formats.panoptic import write_coco_panoptic

        write_coco_panoptic(out, Path(out).with_suffix(""), rs)
    elif fmt == "openimages":
        from omniseg.data.formats.openimages import (
            default_label_names,
            write_openimages_boxes,
            write_openimages_classes,
        )

        names = default_label_names(rs)
        classes = openimages_classes_path(out)
        write_openimages_boxes(out, rs, label_names=names)
        write_openimages_classes(classes, rs, label_names=names)
        return [Path(out), classes]
    else:
        raise ValueError(f"unknown format {fmt!r}; choose from {FORMATS}")
    return [Path(out)]


def main(args: argparse.Namespace) -> int:
    if args.data_command == "synth":
        return _synth(args)
    from omniseg.data.load import load_dataset
    from omniseg.data.stats import dataset_stats, format_stats

    bad = bad_records(args)
    rs = load_dataset(args.path, on_bad=bad)
    if args.data_command == "stats":
        stats = dataset_stats(rs)
        print(json.dumps(stats, indent=1) if args.json else format_stats(stats, f"{args.path}:"))
    else:
        files = write_format(rs, args.to, args.out)
        print(f"wrote {len(rs)} images as {args.to} to {', '.join(map(str, files))}")
    report_skips(bad)
    return 0
