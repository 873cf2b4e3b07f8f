"""Resumable, sharded driver of ``omniseg autolabel``: masks from a box-prompted model for a file of boxes.

:func:`read_boxes` turns the input (COCO / LVIS instances JSON, or an Open Images boxes CSV read by
:func:`omniseg.data.formats.openimages.read_openimages`) into a COCO dict plus one :class:`ImageJob`
per image with boxes to label. :func:`autolabel` splits the jobs into chunks of ``chunk_images``
consecutive images; each chunk leaves ``<out>.parts/part-K.jsonl`` (one line per annotation: its
mask and score, or why it got none) and then ``part-K.done.json``, both written atomically. A
re-run with the same input, checkpoint and settings (``<out>.parts/manifest.json``) skips chunks
that have their marker; another input or checkpoint is refused with one line. The parts are then
merged into the output -- the input with ``segmentation``, ``mask_score`` and ``provenance`` added
to each labelled annotation -- written atomically, and the parts folder removed. A run killed at
any point (even SIGKILL) resumes to the very bytes of an uninterrupted run (timings are never
written into the output); temporary files of a killed run are swept (:mod:`omniseg.utils.atomic`).

Sharding (``torchrun``): with ``RANK`` / ``WORLD_SIZE`` set, rank r takes chunks r, r + W, ...;
the ranks coordinate only through the files in the parts folder (no ``torch.distributed``, so
the ranks may even be started by hand or on different machines sharing a folder). Rank 0 waits
for every done marker (``wait_timeout`` seconds; a rank that failed leaves ``rank-R.failed.json``,
which rank 0 reports at once), then merges.

This mirrors :mod:`omniseg.curate.alps_run` (chunks, done markers, manifest, merge).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from omniseg.data.errors import BadRecordError, BadRecords
from omniseg.errors import UserError
from omniseg.utils.atomic import atomic_open, atomic_write_json

MANIFEST_VERSION = 1
SKIP_IMAGE = "image missing or unreadable"
SKIP_OUTSIDE = "box outside the image"
SKIP_BAD = "bad record"


def skip_small(min_side: float) -> str:
    """The skip reason of a box thinner than ``min_side`` pixels (after clipping to the image)."""
    return f"box side under {min_side:g} px"


class ResumeMismatchError(UserError, ValueError):
    """The parts folder holds a run with another input, checkpoint or settings."""


@dataclass(frozen=True)
class ImageJob:
    """One image with boxes to label: annotation indices, their XYWH boxes and class names."""

    image_id: Any
    file_name: str
    width: int | None
    height: int | None
    anns: tuple[int, ...]
    boxes: tuple[tuple[float, float, float, float], ...]
    names: tuple[str, ...]


@dataclass
class BoxFile:
    """The input as a COCO dict, the work it holds and what was found wrong while reading it."""

    data: dict[str, Any]
    sha256: str
    jobs: list[ImageJob]
    skipped: dict[int, str] = field(default_factory=dict)  # annotation index -> reason (bad records)
    has_mask: int = 0  # annotations that came with a mask (left as they are)


def sha256_file(path: str | os.PathLike, h: Any = None) -> str:
    """Hex SHA-256 of a file's bytes (streamed); ``h`` continues an existing hash."""
    h = h or hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------- input


def read_boxes(path: str, images: str, bad: BadRecords, classes: str | None = None) -> BoxFile:
    """The boxes of ``path`` (COCO / LVIS JSON, or an Open Images CSV with its ``classes`` CSV).

    Bad records go through ``bad``: an image entry without an id or file name, an annotation
    without ``image_id`` / a 4-number ``bbox`` or naming an unknown image. Under "skip" such an
    annotation stays in the output, without a mask and counted (:data:`SKIP_BAD`). An annotation
    that already has a non-empty ``segmentation`` is left as it is.
    """
    from omniseg.data.formats.coco import _file_name
    from omniseg.data.formats.validation import (
        Invalid,
        as_image_id,
        as_int,
        check_json_object,
        finite,
        load_json_file,
        record_name,
        require,
    )

    if path.lower().endswith(".csv"):
        data, digest = _read_openimages(path, images, bad, classes)
    else:
        if classes is not None:
            raise UserError(f"--classes: {path} is not an Open Images CSV (only a .csv boxes file takes --classes)")
        data = check_json_object(path, load_json_file(path), ("images", "annotations"))
        digest = sha256_file(path)
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key, []), list):
            raise BadRecordError(path, "file", f"{key} must be a list, got {type(data[key]).__name__}")
    if not isinstance(data.get("info", {}), dict):
        raise BadRecordError(path, "file", f"info must be an object, got {type(data['info']).__name__}")
    names = {c.get("id"): str(c.get("name")) for c in data.get("categories", []) if isinstance(c, dict)}
    entries: dict[Any, tuple[str, int | None, int | None]] = {}
    for i, img in enumerate(data["images"]):
        try:
            require(img, ("id",), "image")
            iid = as_image_id(img["id"])
            if iid in entries:
                raise Invalid(f"duplicate image id {iid!r}")
            size = [as_int(img[k], k) if img.get(k) is not None else None for k in ("width", "height")]
            entries[iid] = (_file_name(img, images), *size)
        except Invalid as e:
            bad.report(path, record_name("image", i, img), str(e))
    per_image: dict[Any, list[tuple[int, tuple[float, ...], str]]] = {}
    out = BoxFile(data, digest, [])
    for i, ann in enumerate(data["annotations"]):
        try:
            require(ann, ("image_id", "bbox"), "annotation")
            iid = as_image_id(ann["image_id"])
            if iid not in entries:
                raise Invalid(f"image {iid!r} is not among the images (or its entry is bad)")
            if not isinstance(ann["bbox"], list) or len(ann["bbox"]) != 4:
                raise Invalid(f"bbox must be [x, y, width, height], got {ann['bbox']!r}")
            box = tuple(finite(ann["bbox"], "bbox"))
        except Invalid as e:
            bad.report(path, record_name("annotation", i, ann), str(e))
            out.skipped[i] = SKIP_BAD
            continue
        if ann.get("segmentation"):
            out.has_mask += 1
            continue
        per_image.setdefault(iid, []).append((i, box, names.get(ann.get("category_id"), "object")))
    for iid, (file_name, w, h) in entries.items():  # the images' order
        if iid in per_image:
            anns, boxes, texts = zip(*per_image[iid])
            out.jobs.append(ImageJob(iid, file_name, w, h, anns, boxes, texts))
    return out


def _read_openimages(path: str, images: str, bad: BadRecords, classes: str | None) -> tuple[dict, str]:
    """An Open Images boxes CSV as a COCO dict (ids 1..N in file order; images must exist to give
    their sizes, see :func:`~omniseg.data.formats.openimages.read_openimages`) and its hash."""
    from omniseg.data.formats.coco import to_coco_dict
    from omniseg.data.formats.openimages import read_openimages

    if classes is None:
        raise UserError(f"{path}: an Open Images boxes CSV needs --classes (the class descriptions CSV)")
    rs = read_openimages(path, classes, images, on_bad=bad, progress=False)
    return to_coco_dict(rs), sha256_file(classes, hashlib.sha256(Path(path).read_bytes()))


# ----------------------------------------------------------------------------- chunks


def part_paths(parts: Path, index: int) -> tuple[Path, Path]:
    """(results JSONL, done marker) of chunk ``index``."""
    return parts / f"part-{index:06d}.jsonl", parts / f"part-{index:06d}.done.json"


def parts_dir(out: str | os.PathLike) -> Path:
    return Path(f"{os.fspath(out)}.parts")


def _load(job: ImageJob, images: str) -> np.ndarray:
    """The job's image, inside ``images`` and of its declared size (raises OSError / BadRecordError)."""
    from omniseg.data.images import load_image, load_record_image
    from omniseg.data.records import ImageRecord, RecordSet

    if job.width is None or job.height is None:
        return load_image(os.path.join(images, job.file_name))  # the name was confined when read
    rec = ImageRecord(image_id=job.image_id, file_name=job.file_name, width=job.width, height=job.height)
    return load_record_image(RecordSet(image_root=images), rec)


def _prompts(job: ImageJob, width: int, height: int, min_side: float) -> tuple[list[int], list, dict[int, str]]:
    """(positions of the boxes to segment, their XYXY boxes clipped to the image, position -> skip reason)."""
    keep, boxes, skipped = [], [], {}
    for k, (x, y, w, h) in enumerate(job.boxes):
        x0, y0, x1, y1 = max(x, 0.0), max(y, 0.0), min(x + w, float(width)), min(y + h, float(height))
        if x0 >= width or y0 >= height or x + w <= 0 or y + h <= 0:
            skipped[k] = SKIP_OUTSIDE
        elif x1 - x0 < min_side or y1 - y0 < min_side:
            skipped[k] = skip_small(min_side)
        else:
            keep.append(k)
            boxes.append([x0, y0, x1, y1])
    return keep, boxes, skipped


def label_chunk(seg: Any, jobs: Sequence[ImageJob], images: str, settings: dict[str, Any], bad: BadRecords,
                batch_size: int, model_names: set[str] | None, tick: Callable[[int], None]) -> tuple[list, dict]:
    """Results (one dict per annotation, in job order) and the counts of one chunk.

    ``model_names``: the model's classes when box classes go to it (Mask^X R-CNN; others: None).
    An unreadable image is a :class:`BadRecordError` under the "error" policy; under "skip" its
    boxes are skipped (:data:`SKIP_IMAGE`).
    """
    rows: dict[int, dict[str, Any]] = {}
    examples: list[str] = []
    batch: list[tuple[ImageJob, np.ndarray, list[int], list]] = []

    def flush() -> None:
        vocab = None if model_names is None else [[j.names[k] if j.names[k] in model_names else "object"
                                                   for k in keep] for j, _, keep, _ in batch]
        found = seg.predict_batch([a for _, a, _, _ in batch], vocab, [np.asarray(b).reshape(-1, 4)
                                                                        for *_, b in batch])
        for (job, _, keep, _), insts in zip(batch, found):
            if len(insts) != len(keep):
                raise RuntimeError(f"{seg.recipe.name} returned {len(insts)} masks for {len(keep)} boxes")
            for k, inst in zip(keep, insts):
                score = 1.0 if inst.score is None else round(float(inst.score), 4)
                rows[job.anns[k]] = {"i": job.anns[k], "segmentation": inst.mask, "mask_score": score}
            tick(len(job.anns))
        batch.clear()

    for job in jobs:
        try:
            image = _load(job, images)
        except (OSError, BadRecordError) as e:
            if not isinstance(e, BadRecordError):
                where = os.path.join(images, job.file_name)
                e = BadRecordError(where, f"image {job.image_id!r}", e.strerror or str(e).removeprefix(f"{where}: "))
            bad.report(e.file, e.record, e.reason)  # raises under "error"
            if len(examples) < 5:
                examples.append(str(e))
            rows.update({a: {"i": a, "skipped": SKIP_IMAGE} for a in job.anns})
            tick(len(job.anns))
            continue
        keep, boxes, skipped = _prompts(job, image.shape[1], image.shape[0], settings["min_box_side"])
        rows.update({job.anns[k]: {"i": job.anns[k], "skipped": r} for k, r in skipped.items()})
        batch.append((job, image, keep, boxes))
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    ordered = [rows[a] for job in jobs for a in job.anns]
    counts = Counter(r.get("skipped", "labelled") for r in ordered)
    return ordered, {"images": len(jobs), "boxes": len(ordered), "labelled": counts.pop("labelled", 0),
                     "skipped": dict(sorted(counts.items())), "examples": examples}


def _check_manifest(parts: Path, manifest: dict[str, Any]) -> None:
    path = parts / "manifest.json"
    manifest = json.loads(json.dumps(manifest))
    if path.exists():
        old = json.loads(path.read_text(encoding="utf-8"))
        if old != manifest:
            diff = sorted(k for k in set(old) | set(manifest) if old.get(k) != manifest.get(k))
            raise ResumeMismatchError(f"{parts}: holds an unfinished run with another {', '.join(diff)}; "
                                      "delete the folder to start over, or rerun with that run's input and settings")
    else:
        atomic_write_json(path, manifest, indent=2)


# ----------------------------------------------------------------------------- driver


@dataclass
class Summary:
    """What :func:`autolabel` did (rank 0: the whole file; other ranks: their chunks)."""

    images: int = 0
    boxes: int = 0
    labelled: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    has_mask: int = 0
    chunks: int = 0
    resumed: int = 0  # chunks done by an earlier run (or another rank)
    boxes_here: int = 0  # boxes this process labelled
    seconds: float = 0.0  # this process's labelling time
    merged: bool = False


def autolabel(box_file: BoxFile, seg: Any, out: str, images: str, *, settings: dict[str, Any],
              provenance: dict[str, Any], bad: BadRecords, batch_size: int = 8, chunk_images: int = 64,
              rank: int = 0, world: int = 1, model_names: set[str] | None = None, wait_timeout: float = 3600.0,
              progress: bool = True) -> Summary:
    """Label every chunk of this rank, then (rank 0) wait for the others and merge into ``out``.

    Args:
        settings: what the results depend on besides input and weights (``min_box_side``, ...);
            written to the manifest and to the output's ``info.autolabel``.
        provenance: added to every labelled annotation (labeler, checkpoint, hashes).
        bad: bad-record policy; image skips are counted in it as well.
    """
    parts = parts_dir(out)
    parts.mkdir(parents=True, exist_ok=True)
    _check_manifest(parts, {"version": MANIFEST_VERSION, "input_sha256": box_file.sha256,
                            "checkpoint_sha256": provenance["checkpoint_sha256"], "chunk_images": chunk_images,
                            "images": os.path.abspath(images), **settings})
    failed = parts / f"rank-{rank}.failed.json"
    failed.unlink(missing_ok=True)
    jobs = box_file.jobs
    chunks = [jobs[s:s + chunk_images] for s in range(0, len(jobs), chunk_images)]
    mine = [k for k in range(rank, len(chunks), world) if not part_paths(parts, k)[1].exists()]
    summary = Summary(chunks=len(chunks))
    tick = _progress(sum(len(j.anns) for k in mine for j in chunks[k]), f"autolabel rank {rank}" if world > 1 else "autolabel")
    t0 = time.perf_counter()
    try:
        for k in mine:
            rows, counts = label_chunk(seg, chunks[k], images, settings, bad, batch_size, model_names, tick)
            result, done = part_paths(parts, k)
            with atomic_open(result, "w", encoding="utf-8") as f:
                for row in rows:
                    f.write(_part_line(row))
            atomic_write_json(done, {"chunk": k, **counts})
            summary.boxes_here += counts["labelled"]
    except UserError as e:
        if world > 1:
            atomic_write_json(failed, {"rank": rank, "error": str(e)})
        raise
    summary.seconds = time.perf_counter() - t0
    if rank != 0:
        summary.resumed = len(range(rank, len(chunks), world)) - len(mine)
        return summary
    _wait(parts, len(chunks), world, wait_timeout)
    summary.resumed = len(chunks) - len(mine)
    _merge(box_file, parts, len(chunks), out, settings, provenance, summary)
    shutil.rmtree(parts)
    return summary


def _part_line(row: dict[str, Any]) -> str:
    return json.dumps(row, separators=(",", ":")) + "\n"


def _progress(total: int, desc: str) -> Callable[[int], None]:
    """``tick(n)`` after n more boxes: tqdm when stderr is a terminal, else a line every ~10%."""
    if sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=total, unit="box", desc=desc, leave=False)
        return lambda n: (bar.update(n), bar.close() if bar.n >= total else None)
    state = {"done": 0, "shown": 0, "t0": time.monotonic()}

    def tick(n: int) -> None:
        state["done"] += n
        if state["done"] - state["shown"] >= max(1, total // 10) or state["done"] == total:
            state["shown"] = state["done"]
            rate = state["done"] / max(time.monotonic() - state["t0"], 1e-9)
            print(f"{desc}: {state['done']}/{total} boxes ({rate:.1f} boxes/s)", file=sys.stderr, flush=True)

    return tick


def _wait(parts: Path, n: int, world: int, timeout: float) -> None:
    """Until every chunk has its done marker; a failed rank or the timeout is a :class:`UserError`."""
    deadline = time.monotonic() + timeout
    while True:
        missing = [k for k in range(n) if not part_paths(parts, k)[1].exists()]
        if not missing:
            return
        for f in sorted(parts.glob("rank-*.failed.json")):
            info = json.loads(f.read_text(encoding="utf-8"))
            raise UserError(f"rank {info['rank']} failed: {info['error']}")
        if time.monotonic() > deadline:
            ranks = sorted({k % world for k in missing})
            raise UserError(f"{parts}: {len(missing)} chunk(s) (e.g. {missing[:5]}) of rank(s) {ranks} not done after "
                            f"{timeout:g} s; rerun the same command on every rank (finished chunks are kept)")
        time.sleep(0.2)


def _merge(box_file: BoxFile, parts: Path, n: int, out: str, settings: dict[str, Any],
           provenance: dict[str, Any], summary: Summary) -> None:
    """Add every chunk's results to the input's annotations and write ``out`` atomically."""
    anns = box_file.data["annotations"]
    for i, reason in box_file.skipped.items():
        anns[i]["autolabel_skipped"] = reason
        summary.skipped[reason] += 1
    for k in range(n):
        result, done = part_paths(parts, k)
        counts = json.loads(done.read_text(encoding="utf-8"))
        summary.images += counts["images"]
        summary.examples += counts["examples"][: max(0, 5 - len(summary.examples))]
        with open(result, encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                ann = anns[row["i"]]
                if "skipped" in row:
                    ann["autolabel_skipped"] = row["skipped"]
                    summary.skipped[row["skipped"]] += 1
                else:
                    ann.update(segmentation=row["segmentation"], mask_score=row["mask_score"], provenance=provenance)
                    summary.labelled += 1
    summary.boxes, summary.has_mask = len(anns), box_file.has_mask
    summary.merged = True
    info = box_file.data.setdefault("info", {})
    info["autolabel"] = {
        "command": "omniseg autolabel", **provenance, "input_sha256": box_file.sha256, **settings,
        "counts": {"images": summary.images, "annotations": summary.boxes, "labelled": summary.labelled,
                   "had_mask": summary.has_mask, "skipped": dict(sorted(summary.skipped.items()))},
    }
    with atomic_open(out, "w", encoding="utf-8") as f:
        json.dump(box_file.data, f, separators=(",", ":"), allow_nan=False)
