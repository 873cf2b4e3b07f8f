"""``omniseg segment PATH ... --checkpoint CKPT [--task instance|semantic|panoptic] [--vocabulary "a, b"] [--boxes ...]``.

Inputs are image files, folders (their images, sorted by name) and glob patterns (``"imgs/*.jpg"``,
expanded here when the shell did not). Two output forms:

* ``--out preds.json`` (a name ending ``.json``): COCO results (``image_id``, ``category_id``,
  ``bbox`` XYWH, ``score``, ``segmentation`` RLE) that ``omniseg eval --pred`` and pycocotools'
  ``COCO.loadRes`` read, plus ``preds.categories.json``: a COCO file without annotations (``images``
  with ids and file names, ``categories`` with ids and names) saying what the ids mean. Drawings
  only with ``--overlays DIR``.
* ``--out DIR`` (default ``segment_out``): a drawing per image in DIR and every prediction (file,
  drawing, text, score, box, RLE mask) in ``DIR/predictions.json``.

Image ids: from ``--boxes-json`` / ``--gt`` (matched by file name), else 1..N in input order.
Category ids: a class named in that COCO file keeps its id; otherwise ``--vocabulary`` order
(1..K), or the checkpoint's class ids without a vocabulary; any other name gets the next free id.

Two inputs with the same file name get distinct drawings (``x.png``, ``x_<index>.png``); a run that
stops on an error leaves no output behind. Prompt boxes partly outside an image are clipped to it;
a box that does not overlap an image at all is an error naming the box, the image and its size
(under ``--on-bad-record skip``: that image is counted as skipped and the others are written), and
so is an unreadable image.

``--task semantic`` (models with per-pixel output: openseg, lseg, align) labels every pixel instead: per
image a label PNG (pixel value k + 1 = vocabulary entry k, 0 = no class; 8-bit with a palette of
the overlay's colours for up to 255 classes, else 16-bit), a JSON sidecar beside it (value -> name,
colour, pixel count) and a drawing with a legend. ``--out DIR``: drawings in DIR, label PNGs and
sidecars in ``DIR/labels/``, the list in ``DIR/predictions.json``; ``--out preds.json``: label
PNGs and sidecars in ``preds.labels/``, drawings only with ``--overlays DIR``, the list (paths
relative to the JSON's folder) in ``preds.json``. ``--min-score`` there is a threshold on a pixel's
best class score (the model's scale; default none): pixels below it get no class.

``--task panoptic`` (models with panoptic output: vloss): per image a COCO panoptic PNG (segment id
``R + 256 G + 256^2 B``, 0 = no segment) and one COCO panoptic JSON (segments_info with ``isthing`` and
``score``; :mod:`omniseg.commands.segment_panoptic`): ``--out DIR``: PNGs in ``DIR/panoptic/``, the JSON
in ``DIR/panoptic.json``, drawings in DIR; ``--out preds.json``: PNGs in ``preds/``, drawings only with
``--overlays DIR``.
"""

from __future__ import annotations

import argparse
import glob
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from omniseg.commands.common import (
    add_bad_record_arg,
    bad_records,
    check_out_file,
    check_out_folder,
    check_output_not_input,
    load_image_or_skip,
    non_empty_path,
    positive_int,
    removed_on_error,
    report_skips,
    unique_name,
    unit_float,
)
from omniseg.data.errors import BadRecordError, BadRecords
from omniseg.errors import UsageError, UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
LISTED = 20  # up to this many images, each one's instances are printed; beyond, a progress bar / line


def parse_vocabulary(text: str) -> list[str]:
    """argparse type of ``--vocabulary``: comma-separated, non-empty names."""
    words = [w.strip() for w in text.split(",") if w.strip()]
    if not words:
        raise argparse.ArgumentTypeError(f"no class name or phrase in {text!r} (expected e.g. \"red ring, blue star\")")
    return words


def parse_boxes(text: str) -> list[list[float]]:
    """argparse type of ``--boxes``: ``"x0,y0,x1,y1; x0,y0,x1,y1"``, finite, x1 > x0 and y1 > y0
    (an empty part, e.g. after a trailing ``;``, is ignored)."""
    boxes = []
    for part in (p.strip() for p in text.split(";")):
        if not part:
            continue
        try:
            nums = [float(v) for v in part.split(",")]
        except ValueError:
            nums = []
        if len(nums) != 4 or not all(map(math.isfinite, nums)) or not (nums[2] > nums[0] and nums[3] > nums[1]):
            raise argparse.ArgumentTypeError(f"{part!r} is not x0,y0,x1,y1 (4 finite numbers, x1 > x0 and y1 > y0)")
        boxes.append(nums)
    if not boxes:
        raise argparse.ArgumentTypeError(f"no box in {text!r} (expected e.g. \"10,10,50,60; 0,0,20,20\")")
    return boxes


def device_name(text: str) -> str:
    """argparse type of ``--device``: a name torch knows (whether it exists here is checked later)."""
    import torch

    try:
        torch.device(text)
    except (RuntimeError, TypeError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device name (e.g. cpu, cuda, cuda:1)") from None
    return text


def register(p: argparse.ArgumentParser) -> None:
    exts = "/".join(e[1:] for e in IMAGE_EXTENSIONS)
    p.add_argument("images", nargs="+", metavar="PATH",
                   help=f'image files, folders (their {exts} images, sorted) or glob patterns ("imgs/*.jpg")')
    p.add_argument("--checkpoint", required=True, help="run folder, its checkpoints/ folder, or a step_N folder")
    p.add_argument("--vocabulary", type=parse_vocabulary, default=None,
                   help='comma-separated class names / phrases, e.g. "red ring, crimson disk"; with --boxes, '
                   'box k is named by the k-th')
    p.add_argument("--boxes", type=parse_boxes, default=None,
                   help='boxes for box-prompted models (box_to_mask, maskx_rcnn), the same for every image: '
                   '"x0,y0,x1,y1; x0,y0,x1,y1", clipped to each image (write --boxes=-5,0,20,20 when the first '
                   'number is negative)')
    p.add_argument("--boxes-json", default=None, metavar="FILE",
                   help="COCO JSON (images with id and file_name; annotations with image_id, bbox [x,y,w,h], "
                   "optional category_id: the box's class) giving each image its boxes, matched by file name "
                   "(basename); it also gives the image ids. An input image without an entry is skipped and "
                   "counted; entries whose image is not an input are counted in the summary")
    p.add_argument("--gt", default=None, metavar="FILE",
                   help="COCO JSON whose images (matched by file name) and categories (by name) give the ids of "
                   "the results, e.g. the ground truth for omniseg eval; an input image not in it is skipped "
                   "and counted")
    p.add_argument("--task", choices=("instance", "semantic", "panoptic"), default="instance",
                   help="instance: objects (masks, boxes, scores); semantic: a class for every pixel (label PNGs, "
                   "for models with per-pixel output: openseg, lseg, align); panoptic: a segment (thing or stuff) for "
                   "every pixel (COCO panoptic PNGs + JSON, for vloss)")
    p.add_argument("--min-score", type=unit_float, default=None,
                   help="instance: hide predictions below this score (0..1, default 0.3); semantic: pixels whose "
                   "best class score is below it get no class (default: every pixel gets one); panoptic: segments scoring "
                   "below it are left out")
    p.add_argument("--out", type=non_empty_path, default="segment_out",
                   help="FILE.json: COCO results + FILE.categories.json (images and categories the ids refer "
                   "to); otherwise a folder for drawings and predictions.json. --task semantic: FILE.json lists "
                   "the label PNGs, written to FILE.labels/ (a folder: to DIR/labels/)")
    p.add_argument("--overlays", type=non_empty_path, default=None, metavar="DIR",
                   help="with --out FILE.json: also draw each image's instances (or label map) into DIR")
    p.add_argument("--batch-size", type=positive_int, default=4,
                   help="images per forward pass (images whose padded sizes differ run in separate passes)")
    p.add_argument("--ema", action="store_true", help="use the EMA weights of the checkpoint")
    p.add_argument("--device", type=device_name, default="cpu", help="cpu, cuda, cuda:N, ...")
    add_bad_record_arg(p)


# ----------------------------------------------------------------------------- inputs


def expand_inputs(paths: list[str]) -> list[str]:
    """Image paths of the command's inputs, in order: a file as it is (even a missing one: it is
    then an unreadable image), a folder's image files sorted by name, a glob pattern's matches
    sorted (folders among them expanded). A folder or pattern with no image is a :class:`UserError`."""

    def images_in(folder: str) -> list[str]:
        return [str(p) for p in sorted(Path(folder).iterdir()) if p.suffix.lower() in IMAGE_EXTENSIONS and not p.is_dir()]

    out = []
    for path in paths:
        if os.path.isdir(path):
            found = images_in(path)
        elif any(c in path for c in "*?[") and not os.path.lexists(path):
            found = []
            for m in sorted(glob.glob(path)):
                found += images_in(m) if os.path.isdir(m) else [m] if Path(m).suffix.lower() in IMAGE_EXTENSIONS else []
        else:
            out.append(path)
            continue
        if not found:
            kind = "folder" if os.path.isdir(path) else "pattern"
            raise UserError(f"{path}: {kind} matches no image ({', '.join(IMAGE_EXTENSIONS)})")
        out += found
    return out


@dataclass
class CocoIndex:
    """What ``--boxes-json`` / ``--gt`` say per image file name."""

    path: str
    ids: dict[str, Any] = field(default_factory=dict)  # file basename -> image id
    boxes: dict[Any, list[tuple[list[float], int | None]]] = field(default_factory=dict)  # id -> [(XYXY, category)]
    categories: dict[int, str] = field(default_factory=dict)  # category id -> name


def read_coco_index(path: str, bad: BadRecords, with_boxes: bool) -> CocoIndex:
    """Images (file basename -> id), categories and, ``with_boxes``, the non-crowd boxes of a COCO
    JSON; a bad entry goes through ``bad`` (a file that is not a COCO object is an error)."""
    from omniseg.data.formats.validation import (
        Invalid,
        as_flag,
        as_image_id,
        as_int,
        as_str,
        finite,
        load_json_object,
        record_name,
        require,
    )

    data = load_json_object(path, ("images",))
    index = CocoIndex(path)
    sections = {k: data.get(k) or [] for k in ("images", "categories", "annotations")}
    for key, entries in sections.items():
        if not isinstance(entries, list):
            raise BadRecordError(path, "file", f"{key} must be a list, got {type(entries).__name__}")
    for i, e in enumerate(sections["images"]):
        try:
            require(e, ("id", "file_name"), "image")
            iid, name = as_image_id(e["id"]), os.path.basename(as_str(e["file_name"], "file_name", nonempty=True))
            if iid in index.boxes:
                raise Invalid(f"duplicate image id {iid!r}")
            if name in index.ids:
                raise Invalid(f"file name {name!r} is also image {index.ids[name]!r}'s (images are matched by name)")
        except Invalid as err:
            bad.report(path, record_name("image", i, e), str(err))
            continue
        index.ids[name], index.boxes[iid] = iid, []
    for i, c in enumerate(sections["categories"]):
        try:
            require(c, ("id", "name"), "category")
            index.categories[as_int(c["id"], "id")] = as_str(c["name"], "name", nonempty=True)
        except Invalid as err:
            bad.report(path, record_name("category", i, c), str(err))
    for i, a in enumerate(sections["annotations"] if with_boxes else []):
        try:
            require(a, ("image_id", "bbox"), "annotation")
            iid = as_image_id(a["image_id"])
            if iid not in index.boxes:
                raise Invalid(f"unknown image id {iid!r}")
            if not isinstance(a["bbox"], list) or len(a["bbox"]) != 4:
                raise Invalid("bbox must be [x, y, width, height]")
            x, y, w, h = finite(a["bbox"], "bbox")
            if w <= 0 or h <= 0:
                raise Invalid(f"bbox {a['bbox']} has no area")
            cid = None if a.get("category_id") is None else as_int(a["category_id"], "category_id")
            if cid is not None and index.categories and cid not in index.categories:
                raise Invalid(f"unknown category id {cid}")
            if as_flag(a.get("iscrowd", 0), "iscrowd"):
                continue  # a crowd region is not one object
        except Invalid as err:
            bad.report(path, record_name("annotation", i, a), str(err))
            continue
        index.boxes[iid].append(([x, y, x + w, y + h], cid))
    return index


def category_table(file_categories: dict[int, str], vocabulary: list[str] | None, things: list) -> dict[str, int]:
    """Class name -> category id of the results: the COCO file's ids, then ``vocabulary`` order
    (1..K) or the checkpoint's ``things`` ids, each moved to the next free id when already taken."""
    table: dict[str, int] = {}
    for cid, name in sorted(file_categories.items()):
        table.setdefault(name, cid)
    wanted = [(n, k + 1) for k, n in enumerate(vocabulary)] if vocabulary else [(c.name, c.id) for c in things]
    for name, cid in wanted:
        if name not in table:
            table[name] = cid if cid not in table.values() else max(table.values()) + 1
    return table


def progress_printer(total: int) -> Callable[[], None]:
    """``advance()`` after each input image, done or skipped: a tqdm bar when standard error is a
    terminal, else a plain line every ~10% (at most every 100 images); nothing for :data:`LISTED`
    images or fewer."""
    if total <= LISTED:
        return lambda: None
    done = 0
    if sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=total, unit="img", desc="segment", leave=False)

        def advance() -> None:
            nonlocal done
            done += 1
            bar.update(1)
            if done == total:
                bar.close()

        return advance
    every, start = max(1, min(100, total // 10)), time.monotonic()

    def line() -> None:
        nonlocal done
        done += 1
        if done % every == 0 or done == total:
            rate = done / max(time.monotonic() - start, 1e-9)
            print(f"segment: {done}/{total} images ({rate:.2f} img/s)", flush=True)

    return line


# ----------------------------------------------------------------------------- command


@dataclass
class Job:
    """One readable input image waiting for its batch."""

    index: int
    path: str
    image: Any
    image_id: Any
    boxes: Any = None
    names: list[str] | None = None


def image_batches(paths: list[str], bad: Any, batch_size: int, advance: Callable[[], None]) -> Iterator[list[Job]]:
    """The readable images of ``paths`` in batches of ``batch_size`` (image id = position + 1); an unreadable
    one is skipped under ``bad``'s policy (counted) and advances the progress at once."""
    from omniseg.commands.common import load_image_or_skip

    jobs: list[Job] = []
    for k, path in enumerate(paths):
        image = load_image_or_skip(path, bad)
        if image is None:  # counted in bad
            advance()
            continue
        jobs.append(Job(k, path, image, k + 1))
        if len(jobs) == batch_size:
            yield jobs
            jobs = []
    if jobs:
        yield jobs


def check_arguments(args: argparse.Namespace, paths: list[str]) -> bool:
    """Usage errors between flags and outputs; True for the COCO-results form of ``--out``."""
    if args.task in ("semantic", "panoptic"):
        for flag in ("boxes", "boxes_json", "gt"):
            if getattr(args, flag) is not None:
                raise UsageError(f"--{flag.replace('_', '-')} goes with --task instance ({args.task} segmentation labels "
                                 "every pixel of the image)")
    if args.boxes is not None and args.boxes_json:
        raise UsageError("--boxes and --boxes-json: give one (--boxes is one list for every image)")
    if args.boxes_json and (args.gt or args.vocabulary):
        raise UsageError(f"--boxes-json with {'--gt' if args.gt else '--vocabulary'}: the boxes file already gives "
                         "the image ids and the boxes' classes")
    coco = args.out.lower().endswith(".json")
    if coco:
        check_out_file(args.out)
    else:
        check_out_folder(args.out)
        if args.overlays:
            raise UsageError(f"--overlays: --out {args.out} is a folder and holds the drawings already "
                             "(--overlays goes with --out FILE.json)")
    from omniseg.commands.segment_panoptic import png_folder
    from omniseg.commands.segment_semantic import labels_folder

    labels = {"semantic": labels_folder, "panoptic": png_folder}.get(args.task, lambda out, coco: None)(args.out, coco)
    if labels is not None:
        check_out_folder(labels)
    outs = [args.out, sidecar(args.out) if args.task == "instance" else labels] if coco else args.out
    check_output_not_input(outs, [args.boxes_json, args.gt])
    for flag, folder in (("--overlays" if coco else "--out", args.overlays if coco else args.out), ("--out", labels)):
        if folder and any(os.path.realpath(folder) == os.path.realpath(os.path.dirname(p) or ".") for p in paths):
            raise UsageError(f"{flag}: {folder} holds input images; choose another folder")
    return coco


def sidecar(out: str) -> str:
    """``preds.json`` -> ``preds.categories.json``."""
    return str(Path(out).with_suffix(".categories.json"))


def main(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from omniseg.api import BoxError, Segmenter, clip_boxes, resolve_device
    from omniseg.data.formats.coco import to_coco_results
    from omniseg.data.records import Category, ImageRecord, RecordSet
    from omniseg.utils.atomic import atomic_open, atomic_write_json
    from omniseg.viz.draw import draw_instances

    paths = expand_inputs(args.images)
    coco = check_arguments(args, paths)
    device = resolve_device(args.device, key="--device")  # before minutes of model loading
    bad = bad_records(args)
    if args.task in ("semantic", "panoptic"):
        seg = Segmenter.from_checkpoint(args.checkpoint, device=str(device), use_ema=args.ema)
        from omniseg.commands.segment_panoptic import segment_panoptic
        from omniseg.commands.segment_semantic import segment_semantic

        return (segment_semantic if args.task == "semantic" else segment_panoptic)(args, paths, coco, seg, bad)
    min_score = 0.3 if args.min_score is None else args.min_score
    source = args.boxes_json or args.gt
    index = read_coco_index(source, bad, bool(args.boxes_json)) if source else None
    seg = Segmenter.from_checkpoint(args.checkpoint, device=str(device), use_ema=args.ema)
    things = seg.info.things()
    file_categories = dict(index.categories) if index else {}
    if args.boxes_json:  # box classes without a categories list: named by the checkpoint where it can
        known = {c.id: c.name for c in things}
        for cid in {c for boxes in index.boxes.values() for _, c in boxes if c is not None} - set(file_categories):
            file_categories[cid] = known.get(cid, f"category {cid}")
    table = category_table(file_categories, args.vocabulary, things)

    out = Path(args.out)
    drawings = (Path(args.overlays) if args.overlays else None) if coco else out
    records: list[ImageRecord] = []
    folder_results, taken, used_ids, matched = [], set(), {}, set()
    listed, advance = len(paths) <= LISTED, progress_printer(len(paths))

    def flush(jobs: list[Job]) -> None:
        vocabulary = [j.names for j in jobs] if args.boxes_json else args.vocabulary
        boxes = None if args.boxes is None and not args.boxes_json else [j.boxes for j in jobs]
        found = seg.predict_batch([j.image for j in jobs], vocabulary, boxes, min_score) if jobs else []
        for job, insts in zip(jobs, found):
            insts = [replace(i, category_id=table.setdefault(i.text, max(table.values(), default=0) + 1))
                     for i in insts]
            if listed:
                print(f"{job.path}: {len(insts)} instance(s)")
                for i in insts:
                    box = ", ".join(f"{v:.0f}" for v in i.box) if i.box is not None else "-"
                    print(f"  {i.text:<24} score {i.score if i.score is not None else float('nan'):.2f}  box [{box}]")
            drawing = None
            if drawings is not None:
                drawing = unique_name(Path(job.path).stem, ".png", taken, job.index)
                with atomic_open(drawings / drawing, "wb") as f:
                    draw_instances(job.image, insts).save(f, format="PNG")
                written.append(drawings / drawing)
            height, width = job.image.shape[:2]
            records.append(ImageRecord(image_id=job.image_id, file_name=job.path, width=width, height=height,
                                       instances=insts))
            if not coco:
                folder_results.append({"file": job.path, "drawing": drawing, "instances": [asdict(i) for i in insts]})
            advance()

    with removed_on_error(*[p for p in (drawings, out.parent if coco else None) if p is not None]) as written:
        jobs: list[Job] = []
        for k, path in enumerate(paths):
            image_id, prompt, names = k + 1, args.boxes, None
            if index is not None:
                image_id = index.ids.get(os.path.basename(path))
                if image_id is None:
                    bad.skip(path, "image", f"no entry in {index.path}")
                    advance()
                    continue
                matched.add(os.path.basename(path))
                if image_id in used_ids:
                    bad.report(path, "image", f"{index.path}: image {image_id!r} is predicted from {used_ids[image_id]}")
                    advance()
                    continue
                if args.boxes_json:
                    prompt = [b for b, _ in index.boxes[image_id]]
                    names = ["object" if c is None else file_categories[c] for _, c in index.boxes[image_id]]
            image = load_image_or_skip(path, bad)
            if image is None:  # counted in bad
                advance()
                continue
            if prompt is not None:
                try:
                    prompt = clip_boxes(prompt, image.shape[1], image.shape[0], path)
                except BoxError as e:  # e.g. a box beyond a small image: under skip, that image only
                    if bad.policy == "error":
                        raise
                    bad.skip(path, "--boxes-json" if args.boxes_json else "--boxes", str(e).removeprefix(f"{path}: "))
                    advance()
                    continue
            if index is not None:
                used_ids[image_id] = path
            jobs.append(Job(k, path, image, image_id, prompt, names))
            if len(jobs) == args.batch_size:
                flush(jobs)
                jobs = []
        flush(jobs)
        if coco:
            cats = [Category(id=cid, name=name) for name, cid in sorted(table.items(), key=lambda t: t[1])]
            atomic_write_json(out, to_coco_results(RecordSet(records=records, categories=cats, name=out.stem)))
            written.append(out)
            atomic_write_json(sidecar(args.out), {
                "info": {"description": f"images and categories of {out.name}"},
                "images": [{"id": r.image_id, "file_name": r.file_name, "width": r.width, "height": r.height}
                           for r in records],
                "annotations": [],
                "categories": [{"id": c.id, "name": c.name} for c in cats]})
        else:
            atomic_write_json(out / "predictions.json", folder_results)
    count = sum(len(r.instances) for r in records)
    if coco:
        print(f"{len(records)} image(s), {count} instance(s) written to {out} (ids: {sidecar(args.out)})"
              + (f"; drawings in {drawings}" if drawings else ""))
    else:
        print(f"{len(records)} drawing(s) and predictions.json written to {out} ({count} instance(s))")
    report_skips(bad)
    if index is not None and len(index.ids) > len(matched):
        print(f"{len(index.ids) - len(matched)} image(s) of {index.path} are not among the inputs")
    return 0
