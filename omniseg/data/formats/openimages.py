"""Open Images (V6 / V7) boxes, image-level labels and instance masks, read into records.

Files (public Open Images layout, https://storage.googleapis.com/openimages/web/download_v7.html):

* boxes CSV, header ``ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,IsOccluded,
  IsTruncated,IsGroupOf,IsDepiction,IsInside`` (V7 train adds click columns: ignored);
  coordinates normalized to [0, 1] by the image size.
* class descriptions CSV ``LabelName,DisplayName`` (``/m/011k07,Tortoise``); the official
  boxable file has no header line, other copies have one: both are read.
* optional image-level labels CSV ``ImageID,Source,LabelName,Confidence``: confidence 1 ->
  ``record.labels`` (display name), confidence 0 (verified absent) -> ``record.neg_category_ids``;
  machine-generated fractional confidences are ignored.
* optional instance segmentation CSV ``MaskPath,ImageID,LabelName,BoxID,BoxXMin,BoxXMax,BoxYMin,
  BoxYMax,PredictedIoU,Clicks`` plus binary mask PNGs (at mask resolution; resized nearest to
  the image size). A mask is attached to the box instance of the same image, class and box
  (within 1e-3 of the normalized coordinates); unmatched masks become new instances.

Category ids are 1..N in the order of the class descriptions file; ``text`` is the display
name. ``IsGroupOf`` -> ``is_crowd``. Image sizes come from ``sizes`` (ImageID -> (width,
height)) or from the image file ``<image_root>/<ImageID>.jpg``.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
from PIL import Image

from omniseg.data.errors import BadRecordError, BadRecords
from omniseg.data.formats.validation import (
    Invalid,
    confined_path,
    image_file_name,
    open_regular,
    progress_bar,
)
from omniseg.data.images import image_size
from omniseg.data.records import Category, ImageRecord, Instance, RecordSet
from omniseg.errors import UserError
from omniseg.ops.rle import rle_encode
from omniseg.utils.atomic import atomic_open

SOURCE = "openimages"
BOX_COLUMNS = (
    "ImageID",
    "Source",
    "LabelName",
    "Confidence",
    "XMin",
    "XMax",
    "YMin",
    "YMax",
    "IsOccluded",
    "IsTruncated",
    "IsGroupOf",
    "IsDepiction",
    "IsInside",
)
LABEL_COLUMNS = ("ImageID", "Source", "LabelName", "Confidence")
MASK_COLUMNS = ("MaskPath", "ImageID", "LabelName", "BoxID", "BoxXMin", "BoxXMax", "BoxYMin", "BoxYMax")
MATCH_TOL = 1e-3


def _csv_lines(path: str | os.PathLike) -> Iterator[tuple[int, list[str]]]:
    """``(line number, fields)`` of a UTF-8 CSV; undecodable text (naming the file) or a malformed line is an error."""
    with open_regular(path, "r", encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except UnicodeDecodeError as e:  # decoded in blocks: no reliable line number
                raise BadRecordError(str(path), "file", f"not UTF-8 text: {e.reason}") from e
            except csv.Error as e:
                raise BadRecordError(str(path), f"line {reader.line_num + 1}", f"unreadable CSV ({e})") from e
            yield reader.line_num, row


def read_openimages_classes(path: str | os.PathLike) -> list[tuple[str, str]]:
    """``[(LabelName, DisplayName), ...]`` in file order; a ``LabelName,DisplayName`` header is optional.

    Raises:
        BadRecordError: a line that is not ``LabelName,DisplayName`` or a repeated LabelName.
    """
    out: list[tuple[str, str]] = []
    seen: dict[str, int] = {}
    for n, row in _csv_lines(path):
        if not row or (n == 1 and [c.strip() for c in row] == ["LabelName", "DisplayName"]):
            continue
        if len(row) != 2 or not row[0].strip():
            raise BadRecordError(str(path), f"line {n}", f"expected 'LabelName,DisplayName', got {row!r}")
        mid = row[0].strip()
        if mid in seen:
            raise BadRecordError(str(path), f"line {n}", f"LabelName {mid} already on line {seen[mid]}")
        seen[mid] = n
        out.append((mid, row[1].strip()))
    return out


def _rows(
    path: str | os.PathLike, required: tuple[str, ...], bad: BadRecords, progress: bool, desc: str
) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield ``(line number, row dict)``; lines with the wrong number of fields are reported."""
    lines = _csv_lines(path)
    first = next(lines, None)
    if first is None:
        return
    header = [h.strip() for h in first[1]]
    missing = [c for c in required if c not in header]
    if missing:
        raise BadRecordError(str(path), "line 1", f"header lacks column(s) {', '.join(missing)}")
    for lineno, row in progress_bar(lines, None, desc, progress):
        if not row:
            continue
        if len(row) != len(header):
            bad.report(str(path), f"line {lineno}", f"expected {len(header)} fields, got {len(row)}")
            continue
        yield lineno, dict(zip(header, row))


def _float(row: dict[str, str], key: str) -> float:
    try:
        v = float(row[key])
    except ValueError:
        raise Invalid(f"{key} is not a number ({row[key]!r})") from None
    if not math.isfinite(v):
        raise Invalid(f"{key} is not finite ({row[key]!r})")
    return v


def _norm_box(row: dict[str, str], keys: tuple[str, str, str, str]) -> tuple[float, float, float, float]:
    """Normalized ``(xmin, xmax, ymin, ymax)``, validated."""
    xmin, xmax, ymin, ymax = (_float(row, k) for k in keys)
    if xmin > xmax:
        raise Invalid(f"{keys[0]} {xmin} > {keys[1]} {xmax}")
    if ymin > ymax:
        raise Invalid(f"{keys[2]} {ymin} > {keys[3]} {ymax}")
    if min(xmin, ymin) < 0.0 or max(xmax, ymax) > 1.0:
        raise Invalid("normalized coordinates outside [0, 1]")
    return xmin, xmax, ymin, ymax


def _flag(row: dict[str, str], key: str) -> int:
    v = row.get(key, "0").strip() or "0"
    if v not in ("0", "1", "-1"):
        raise Invalid(f"{key} must be 0, 1 or -1, got {v!r}")
    return int(v)


class _Images:
    """Records by ImageID, created on first sight with their size; images without a size are skipped."""

    def __init__(self, image_root: str, sizes: Mapping[str, tuple[int, int]] | None, bad: BadRecords):
        self.root, self.sizes, self.bad = Path(image_root), sizes or {}, bad
        self.records: dict[str, ImageRecord] = {}
        self.failed: set[str] = set()

    def get(self, image_id: str, file: str, lineno: int) -> ImageRecord | None:
        rec = self.records.get(image_id)
        if rec is not None or image_id in self.failed:
            return rec
        file_name = f"{image_id}.jpg"
        if not image_id:
            self.bad.report(file, f"line {lineno}", "empty ImageID")
            return None
        try:
            image_file_name(file_name, self.root, "ImageID file name")
            if image_id in self.sizes:
                w, h = self.sizes[image_id]
            elif os.path.lexists(self.root / file_name):
                w, h = image_size(self.root / file_name)  # after EXIF orientation; refuses FIFOs
            else:
                raise Invalid(f"no size for the image: {self.root / file_name} missing and not in sizes")
        except (Invalid, UserError, OSError) as e:
            self.failed.add(image_id)
            self.bad.report(file, f"line {lineno} (image {image_id})", str(e))
            return None
        rec = self.records[image_id] = ImageRecord(
            image_id=image_id, file_name=file_name, width=int(w), height=int(h)
        )
        return rec


def read_openimages(
    boxes_csv: str | os.PathLike,
    classes_csv: str | os.PathLike,
    image_root: str,
    labels_csv: str | os.PathLike | None = None,
    masks_csv: str | os.PathLike | None = None,
    mask_dir: str | os.PathLike | None = None,
    on_bad: BadRecords | None = None,
    sizes: Mapping[str, tuple[int, int]] | None = None,
    progress: bool = True,
) -> RecordSet:
    """Read Open Images boxes (+ optional image-level labels and instance masks) into records.

    Args:
        boxes_csv: the boxes CSV.
        classes_csv: class descriptions (``LabelName,DisplayName``, header optional).
        image_root: folder of ``<ImageID>.jpg`` images (for sizes; stored in the RecordSet).
        labels_csv: optional image-level labels CSV.
        masks_csv: optional instance segmentation CSV; needs ``mask_dir``.
        mask_dir: folder holding the ``MaskPath`` PNGs.
        on_bad: bad-record policy (default: raise on the first bad record).
        sizes: optional ``ImageID -> (width, height)``, used instead of opening images.
        progress: progress bars when stderr is a terminal.

    Bad rows (reported through ``on_bad`` naming the file and line): wrong field count,
    unknown LabelName, non-numeric / NaN coordinates, XMin > XMax or YMin > YMax, coordinates
    outside [0, 1], flags other than 0 / 1 / -1, a missing or unreadable mask PNG, an ImageID or
    MaskPath that would leave ``image_root`` / ``mask_dir``, an image whose size cannot be found.
    """
    bad = on_bad if on_bad is not None else BadRecords()
    classes = read_openimages_classes(classes_csv)
    categories = [Category(id=i + 1, name=name) for i, (_, name) in enumerate(classes)]
    by_mid = {mid: cat for (mid, _), cat in zip(classes, categories)}
    images = _Images(image_root, sizes, bad)

    def category(row: dict[str, str]) -> Category:
        cat = by_mid.get(row["LabelName"].strip())
        if cat is None:
            raise Invalid(f"unknown LabelName {row['LabelName']!r}")
        return cat

    boxes_norm: dict[int, tuple[float, float, float, float]] = {}  # id(instance) -> normalized box
    for lineno, row in _rows(boxes_csv, BOX_COLUMNS, bad, progress, "openimages boxes"):
        try:
            cat = category(row)
            xmin, xmax, ymin, ymax = _norm_box(row, ("XMin", "XMax", "YMin", "YMax"))
            crowd = _flag(row, "IsGroupOf") == 1
            _float(row, "Confidence")
        except Invalid as e:
            bad.report(str(boxes_csv), f"line {lineno}", str(e))
            continue
        rec = images.get(row["ImageID"].strip(), str(boxes_csv), lineno)
        if rec is None:
            continue
        inst = Instance(
            text=cat.name,
            category_id=cat.id,
            box=(xmin * rec.width, ymin * rec.height, xmax * rec.width, ymax * rec.height),
            source=SOURCE,
            is_crowd=crowd,
        )
        rec.instances.append(inst)
        boxes_norm[id(inst)] = (xmin, xmax, ymin, ymax)

    if labels_csv is not None:
        for lineno, row in _rows(labels_csv, LABEL_COLUMNS, bad, progress, "openimages labels"):
            try:
                cat = category(row)
                conf = _float(row, "Confidence")
            except Invalid as e:
                bad.report(str(labels_csv), f"line {lineno}", str(e))
                continue
            rec = images.get(row["ImageID"].strip(), str(labels_csv), lineno)
            if rec is None:
                continue
            if conf == 1.0 and cat.name not in rec.labels:
                rec.labels.append(cat.name)
            elif conf == 0.0 and cat.id not in rec.neg_category_ids:
                rec.neg_category_ids.append(cat.id)

    if masks_csv is not None:
        if mask_dir is None:
            raise ValueError(f"{masks_csv}: masks_csv needs mask_dir (the folder of mask PNGs)")
        for lineno, row in _rows(masks_csv, MASK_COLUMNS, bad, progress, "openimages masks"):
            try:
                cat = category(row)
                nb = _norm_box(row, ("BoxXMin", "BoxXMax", "BoxYMin", "BoxYMax"))
                png = Path(confined_path(mask_dir, row["MaskPath"].strip(), key="MaskPath"))
                if not os.path.lexists(png):
                    raise Invalid(f"mask PNG missing: {png}")
            except Invalid as e:
                bad.report(str(masks_csv), f"line {lineno}", str(e))
                continue
            rec = images.get(row["ImageID"].strip(), str(masks_csv), lineno)
            if rec is None:
                continue
            try:
                with open_regular(png, "rb", what="mask PNG") as f, Image.open(f) as im:
                    m = im.convert("L").resize((rec.width, rec.height), Image.Resampling.NEAREST)
            except (UserError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
                bad.report(str(masks_csv), f"line {lineno}", f"cannot read mask PNG {png}: {e}")
                continue
            mask = rle_encode(np.asarray(m) > 0)
            match = next(
                (
                    i
                    for i in rec.instances
                    if i.category_id == cat.id
                    and i.mask is None
                    and id(i) in boxes_norm
                    and max(abs(a - b) for a, b in zip(boxes_norm[id(i)], nb)) <= MATCH_TOL
                ),
                None,
            )
            if match is not None:
                match.mask = mask
            else:
                rec.instances.append(
                    Instance(
                        text=cat.name,
                        category_id=cat.id,
                        mask=mask,
                        source=SOURCE,
                        box=(nb[0] * rec.width, nb[2] * rec.height, nb[1] * rec.width, nb[3] * rec.height),
                    )
                )
    return RecordSet(
        records=list(images.records.values()),
        categories=categories,
        image_root=image_root,
        name=Path(boxes_csv).stem,
    )


def default_label_names(rs: RecordSet) -> dict[int, str]:
    """Stand-in LabelNames (``/omniseg/<id>``) for datasets without Open Images MIDs."""
    return {c.id: f"/omniseg/{c.id}" for c in rs.categories}


def label_names_from_classes(classes_csv: str | os.PathLike) -> dict[int, str]:
    """``category id -> LabelName`` exactly as :func:`read_openimages` numbers the classes."""
    return {i + 1: mid for i, (mid, _) in enumerate(read_openimages_classes(classes_csv))}


def write_openimages_classes(
    path: str | os.PathLike, rs: RecordSet, label_names: Mapping[int, str] | None = None
) -> None:
    """Write the class descriptions CSV (no header, as the official boxable file), atomically."""
    names = label_names if label_names is not None else default_label_names(rs)
    with atomic_open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        for c in rs.categories:
            w.writerow([names[c.id], c.name])


def write_openimages_boxes(
    path: str | os.PathLike,
    rs: RecordSet,
    label_names: Mapping[int, str] | None = None,
    source: str = "xclick",
) -> int:
    """Write every boxed instance of ``rs`` as an Open Images boxes CSV (atomically).

    Args:
        path: output CSV.
        rs: records; instances without a box or category id are not written.
        label_names: category id -> LabelName (MID); default :func:`default_label_names`.
        source: value of the ``Source`` column.

    Returns:
        number of rows written. Confidence is the instance score (1 for ground truth);
        IsGroupOf comes from ``is_crowd``; the other flags are unknown to records and written 0.
    """
    names = label_names if label_names is not None else default_label_names(rs)
    n = 0
    with atomic_open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(BOX_COLUMNS)
        for rec in rs.records:
            for inst in rec.instances:
                if inst.box is None or inst.category_id is None:
                    continue
                x0, y0, x1, y1 = inst.box
                conf = 1 if inst.score is None else inst.score
                w.writerow(
                    [
                        rec.image_id,
                        source,
                        names[inst.category_id],
                        conf,
                        repr(x0 / rec.width),
                        repr(x1 / rec.width),
                        repr(y0 / rec.height),
                        repr(y1 / rec.height),
                        0,
                        0,
                        int(inst.is_crowd),
                        0,
                        0,
                    ]
                )
                n += 1
    return n
