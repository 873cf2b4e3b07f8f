"""``omniseg data synth|stats|convert``.

``data convert --out -`` writes the single-file formats (coco, coco-results, captions,
narratives) to standard output; the summary lines then go to standard error.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from omniseg.commands.common import (
    add_bad_record_arg,
    bad_records,
    check_out_file,
    check_out_folder,
    check_output_not_input,
    non_negative_int,
    positive_int,
    report_skips,
)
from omniseg.data.synth.world import MIN_IMAGE_SIZE
from omniseg.errors import UsageError, UserError
from omniseg.utils.atomic import STDOUT

if TYPE_CHECKING:
    from omniseg.data.records import RecordSet

FORMATS = ("coco", "coco-results", "captions", "narratives", "panoptic", "openimages")
#: formats written as one file, so ``--out -`` (standard output) works
SINGLE_FILE_FORMATS = ("coco", "coco-results", "captions", "narratives")
#: the smallest image the synthetic world draws (SynthConfig's own check) and a sane largest
MAX_SYNTH_SIZE = 8192  # a sanity bound: one image must fit in memory many times over


def register(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    s = sub.add_parser("synth", help="generate the synthetic world in all real formats")
    s.add_argument("--out", required=True, help="output folder (re-running resumes / skips finished images)")
    s.add_argument("--num-images", type=positive_int, default=200)
    s.add_argument("--seed", type=non_negative_int, default=0)
    s.add_argument("--image-size", type=int, default=256,
                   help=f"square image side in pixels, {MIN_IMAGE_SIZE}..{MAX_SYNTH_SIZE}")
    s.add_argument("--workers", type=positive_int, default=1)
    s.add_argument("--no-progress", action="store_true")

    st = sub.add_parser("stats", help="statistics per supervision kind")
    st.add_argument("path", help="dataset folder, COCO/LVIS/captions/panoptic JSON, or image folder")
    st.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_bad_record_arg(st)

    c = sub.add_parser("convert", help="read any supported input and write another format")
    c.add_argument("path", help="dataset folder or annotation file")
    c.add_argument("--to", choices=FORMATS, required=True)
    c.add_argument("--out", required=True, help="output file, '-' for standard output (panoptic: JSON, PNGs go to "
                   "a folder of the same stem; openimages: boxes CSV, class descriptions go to <stem>-classes.csv "
                   "next to it)")
    add_bad_record_arg(c)


def _synth(args: argparse.Namespace) -> int:
    from omniseg.data.stats import dataset_stats, format_stats
    from omniseg.data.synth.generate import GenerateStats, SynthConfig, generate_dataset

    if not args.out:
        raise UsageError("--out: empty path")
    check_out_folder(args.out)
    if not MIN_IMAGE_SIZE <= args.image_size <= MAX_SYNTH_SIZE:
        raise UsageError(f"--image-size: must be between {MIN_IMAGE_SIZE} and {MAX_SYNTH_SIZE}, got {args.image_size}")
    cfg = SynthConfig(seed=args.seed, num_images=args.num_images, image_size=args.image_size)
    t0 = time.perf_counter()
    counts = GenerateStats()
    rs = generate_dataset(cfg, args.out, workers=args.workers, progress=not args.no_progress, stats=counts)
    dt = time.perf_counter() - t0
    print(f"wrote {len(rs)} images to {args.out} in {dt:.1f} s ({len(rs) / max(dt, 1e-9):.1f} images/s)")
    if counts.removed:
        print(f"removed {counts.removed} image(s) of an earlier run that are not in this set")
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

    ``out`` ``-`` is standard output (single-file formats only).

    Returns:
        the files written (panoptic: the JSON and the PNG folder of the same stem).
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
        # the classes first: a boxes CSV written is never without the classes it names
        write_openimages_classes(classes, rs, label_names=names)
        write_openimages_boxes(out, rs, label_names=names)
    else:
        raise ValueError(f"unknown format {fmt!r}; choose from {FORMATS}")
    return output_paths(fmt, out)


def output_paths(fmt: str, out: str | Path) -> list[Path]:
    """The files / folders :func:`write_format` writes for ``out`` (panoptic: the PNG folder of the
    JSON's stem; openimages: the classes CSV beside the boxes CSV)."""
    if fmt == "panoptic":
        return [Path(out), Path(out).with_suffix("")]
    if fmt == "openimages":
        return [Path(out), openimages_classes_path(out)]
    return [Path(out)]


#: formats that hold only one kind of supervision -> (the RecordSet field, what it is called)
_CONTENT = {"panoptic": ("segments", "panoptic segments"), "narratives": ("narratives", "narratives"),
            "captions": ("captions", "captions")}


def _check_content(rs: RecordSet, fmt: str, source: str) -> None:
    """A :class:`UserError` when ``rs`` has nothing ``fmt`` holds: an empty export is never what was meant."""
    if fmt in _CONTENT:
        field, what = _CONTENT[fmt]
        if not any(getattr(r, field) for r in rs.records):
            raise UserError(f"{source}: has no {what} to write as {fmt}")


def _check_out(fmt: str, out: str, source: str) -> None:
    """Refuse an ``--out`` the format cannot be written to, or one that is the input ``source``
    (before reading the input)."""
    if not out:
        raise UsageError("--out: empty path")
    check_out_file(out)
    check_output_not_input([str(p) for p in output_paths(fmt, out)] if out != STDOUT else [], [source])
    if out == STDOUT and fmt not in SINGLE_FILE_FORMATS:
        raise UsageError(f"--out -: {fmt} writes several files, give a file name "
                         f"(standard output takes {', '.join(SINGLE_FILE_FORMATS)})")
    if fmt == "panoptic" and Path(out).with_suffix("") == Path(out):
        raise UsageError(f"--out {out}: panoptic needs a JSON name with a suffix (e.g. {out}.json); "
                         "its PNGs go to the folder of the same stem")


def main(args: argparse.Namespace) -> int:
    if args.data_command == "synth":
        return _synth(args)
    from omniseg.data.load import load_dataset, load_dataset_stats
    from omniseg.data.stats import format_stats

    bad = bad_records(args)
    if args.data_command == "stats":
        stats = load_dataset_stats(args.path, on_bad=bad)  # no per-instance objects for COCO JSON
        print(json.dumps(stats, indent=1) if args.json else format_stats(stats, f"{args.path}:"))
        report_skips(bad)
        return 0
    _check_out(args.to, args.out, args.path)
    rs = load_dataset(args.path, on_bad=bad)
    _check_content(rs, args.to, args.path)
    files = write_format(rs, args.to, args.out)
    to = "standard output" if args.out == STDOUT else ", ".join(map(str, files))
    log = sys.stderr if args.out == STDOUT else sys.stdout  # stdout may hold the data
    print(f"wrote {len(rs)} images as {args.to} to {to}", file=log)
    if bad.total:
        print(bad.summary(), file=log)
    return 0
