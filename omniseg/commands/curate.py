"""``omniseg curate alps``: approximately localized phrases from Localized Narratives.

    omniseg curate alps narratives.jsonl --images DATASET --out OUT [--workers 2]
        [--stuff-list sky,water,...|FILE] [--t-pad 0.5] [--min-points 4]

``DATASET`` gives each image's size (trace coordinates are normalized): a dataset folder (its
``instances.json``), a COCO instances / captions JSON (its ``images`` list) or an image folder
(ids are the file stems, as Localized Narratives names Open Images). Writes ``OUT/alps.jsonl``
(format in :mod:`omniseg.curate.alps`) and ``OUT/stats.json``; re-running resumes
(:mod:`omniseg.curate.alps_run`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

from omniseg.commands.common import (
    add_bad_record_arg,
    bad_records,
    check_out_folder,
    check_output_not_input,
    positive_int,
    report_skips,
)
from omniseg.data.errors import BadRecords
from omniseg.errors import UsageError, UserError


def register(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="curate_command", metavar="WHAT", required=True)
    a = sub.add_parser("alps", help="phrases + approximate boxes from Localized Narratives JSONL")
    a.add_argument("input", help="Localized Narratives JSONL file")
    a.add_argument("--images", required=True, help="dataset folder, COCO JSON or image folder (image sizes)")
    a.add_argument("--out", required=True, help="output folder (alps.jsonl, stats.json, chunks/)")
    a.add_argument("--workers", type=positive_int, default=1, help="worker processes (one spaCy pipeline each)")
    a.add_argument("--chunk-lines", type=positive_int, default=1000, help="narratives per resumable chunk")
    a.add_argument("--stuff-list", default=None,
                   help="stuff head nouns to drop: comma-separated words or a file with one per line "
                   "(default: omniseg.curate.phrases.DEFAULT_STUFF)")
    a.add_argument("--non-object-list", default=None,
                   help="picture-part nouns to drop (image, left, background, ...): like --stuff-list")
    a.add_argument("--t-pad", type=seconds, default=0.5, help="temporal padding t_p in seconds (paper: 0.5)")
    a.add_argument("--min-points", type=positive_int, default=4, help="drop phrases with fewer trace points")
    a.add_argument("--model", default=None, help="spaCy model package (default: en_core_web_sm if installed)")
    a.add_argument("--no-progress", action="store_true")
    add_bad_record_arg(a)


def seconds(text: str) -> float:
    """An argparse type: a finite number of seconds >= 0 (rejects NaN / inf)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def word_list(value: str, flag: str = "--stuff-list") -> tuple[str, ...]:
    """Words from a file (one per line, '#' comments) or a comma-separated list.

    A value with a path separator, or naming anything that exists, is a file: it must be a
    readable regular file (a missing one is a :class:`UsageError`, never read as a word).
    """
    if os.path.exists(value) or "/" in value or os.sep in value:
        if not os.path.isfile(value):
            what = "no such file" if not os.path.exists(value) else "not a regular file"
            raise UsageError(f"{flag}: {value}: {what}")
        lines = Path(value).read_text(encoding="utf-8").splitlines()
        words = [ln.split("#", 1)[0].strip() for ln in lines]
    else:
        words = [w.strip() for w in value.split(",")]
    return tuple(w.lower() for w in words if w)


def _check_size(path: str, record: str, w: object, h: object, bad: BadRecords) -> bool:
    ok = all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (w, h))
    if not ok:
        bad.report(path, record, f"width/height must be positive integers, got {w!r} x {h!r}")
    return ok


def image_sizes(path: str | os.PathLike, on_bad: BadRecords | None = None) -> dict[str, tuple[int | str, int, int]]:
    """Image id key -> (image id, width, height) from a dataset folder, COCO JSON or image folder.

    Only the ``images`` list of a COCO file is used (no annotations are parsed).
    """
    from omniseg.data.formats.narratives import id_key
    from omniseg.data.formats.validation import load_json_file

    bad = on_bad if on_bad is not None else BadRecords()
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such dataset")
    if p.is_dir() and not (p / "instances.json").exists():
        from omniseg.data.formats.folder import read_image_folder

        rs = read_image_folder(p, on_bad=bad)
        return {id_key(Path(r.file_name).stem): (Path(r.file_name).stem, r.width, r.height) for r in rs}
    jf = p / "instances.json" if p.is_dir() else p
    data = load_json_file(jf)
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise UserError(f"{jf}: no 'images' list (expected a COCO instances or captions JSON)")
    out: dict[str, tuple[int | str, int, int]] = {}
    for i, img in enumerate(images):
        if not isinstance(img, dict) or "id" not in img:
            bad.report(str(jf), f"images[{i}]", "not an object with an 'id'")
            continue
        iid = img["id"]
        if isinstance(iid, bool) or not isinstance(iid, (int, str)):
            bad.report(str(jf), f"images[{i}]", f"id is not an int or string ({iid!r})")
            continue
        if _check_size(str(jf), f"image {iid}", img.get("width"), img.get("height"), bad):
            out[id_key(iid)] = (iid, img["width"], img["height"])
    return out


def main(args: argparse.Namespace) -> int:
    from omniseg.curate.alps import AlpConfig
    from omniseg.curate.alps_run import UNKNOWN_IMAGE, curate_alps
    from omniseg.curate.phrases import DEFAULT_NON_OBJECT, DEFAULT_STUFF
    from omniseg.curate.pos import available_model

    if not args.out:
        raise UsageError("--out: empty path")
    check_out_folder(args.out)
    check_output_not_input([args.out] + [os.path.join(args.out, f) for f in ("alps.jsonl", "stats.json")],
                           [args.input, args.images])
    try:
        available_model(args.model)
    except RuntimeError as e:  # no such spaCy model package installed
        raise (UsageError(f"--model: {e}") if args.model else UserError(str(e))) from None
    bad = bad_records(args)
    cfg = AlpConfig(
        t_pad=args.t_pad,
        min_points=args.min_points,
        stuff=word_list(args.stuff_list) if args.stuff_list is not None else DEFAULT_STUFF,
        non_object=(word_list(args.non_object_list, "--non-object-list") if args.non_object_list is not None
                    else DEFAULT_NON_OBJECT),
        model=args.model,
    )
    sizes = image_sizes(args.images, bad)
    stats = curate_alps(args.input, sizes, args.out, cfg, workers=args.workers, chunk_lines=args.chunk_lines,
                        on_bad=bad, progress=not args.no_progress)
    unknown = bad.skipped.get(UNKNOWN_IMAGE, 0)
    if unknown and not stats["images_with_narratives"]:
        raise UserError(f"{args.input}: none of its {unknown} narratives is for an image of {args.images} "
                        "(image ids differ?)")
    table = {k: stats[k] for k in ("images", "alps", "unique_phrases", "mean_alps_per_image", "narratives")}
    print(json.dumps(table))
    print(f"wrote {Path(args.out) / 'alps.jsonl'} and stats.json ({stats['resumed_chunks']} of "
          f"{stats['chunks']} chunks resumed, {stats['seconds']} s)")
    report_skips(bad)
    return 0
