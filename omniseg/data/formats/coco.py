"""COCO / LVIS instance annotations and COCO results files <-> :class:`RecordSet`.

(Over 400 lines on purpose: one public format, its reader, validator and writer kept together so a
change to one side of the round trip is seen next to the other.)

Format (public COCO "instances" JSON, https://cocodataset.org/#format-data):
    ``{"images": [{"id", "file_name", "width", "height", ...}],
    "annotations": [{"id", "image_id", "category_id", "bbox": [x, y, w, h], "area", "iscrowd",
    "segmentation": polygons | RLE}], "categories": [{"id", "name", "supercategory"}]}``.
LVIS v1 uses the same layout without ``iscrowd``, with per-image ``neg_category_ids`` /
``not_exhaustive_category_ids``, per-category ``synonyms``, and images that may carry only a
``coco_url`` (the file name is then its last two path parts, e.g. ``train2017/x.jpg``).
A results file is a list of ``{"image_id", "category_id", "bbox", "score", "segmentation"?}``.

Reading validates every image / annotation (see :func:`read_coco_instances`); invalid entries
go through :class:`~omniseg.data.errors.BadRecords` (raise naming file + record, or counted skip).
Writing always emits masks as compressed RLE with text counts; polygons in a source file are
therefore rasterized once on read (same rasterizer as pycocotools' ``annToRLE``).
"""

from __future__ import annotations

import ctypes
import os
from collections import Counter
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import Any

import numpy as np

from omniseg.data.errors import BadRecordError, BadRecords
from omniseg.data.formats.coco_columns import AnnotationColumns, BoxTable, Chunk, check_rows, duplicate_rows
from omniseg.data.formats.validation import (
    MAX_ID,
    STREAMED,
    Invalid,
    NotStreamable,
    as_area,
    as_flag,
    as_image_id,
    as_int,
    as_str,
    check_json_object,
    compressed_counts,
    finite,
    image_file_name,
    load_json_file,
    number,
    progress_bar,
    record_name,
    require,
    scan_json_object,
    short_repr,
)
from omniseg.data.records import Box, Category, ImageRecord, Instance, RecordSet, defer_instances, lean_record
from omniseg.data.stats import InstanceTally, dataset_stats, tally_instances
from omniseg.ops.rle import RLE, normalize_rle, polygons_to_rle, rle_area, rle_to_box
from omniseg.utils.atomic import atomic_write_json

#: a box may stick out of the image by at most this many pixels; it is then clipped.
BOX_TOLERANCE_PX = 1.0
#: largest image side accepted: pycocotools rasterizes polygons with 32-bit pixel indices
#: (h * w must stay below 2**32), so larger sizes would give wrong masks, not an error.
MAX_IMAGE_SIDE = 50_000


def _parse_bbox(bbox: Any, width: int, height: int) -> Box:
    """COCO XYWH -> XYXY, clipped to the image when it sticks out by <= 1 px."""
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        raise Invalid(f"bbox must be [x, y, w, h], got {bbox!r}")
    x, y, w, h = finite(bbox, "bbox")
    if w <= 0 or h <= 0:
        raise Invalid(f"bbox has zero or negative size (w={w}, h={h})")
    x0, y0, x1, y1 = x, y, x + w, y + h
    tol = BOX_TOLERANCE_PX
    if x0 < -tol or y0 < -tol or x1 > width + tol or y1 > height + tol:
        raise Invalid(f"bbox {list(bbox)} lies outside the {width}x{height} image by more than {tol:g} px")
    x0, y0, x1, y1 = max(x0, 0.0), max(y0, 0.0), min(x1, float(width)), min(y1, float(height))
    if x1 <= x0 or y1 <= y0:
        raise Invalid(f"bbox {list(bbox)} has zero size after clipping to the {width}x{height} image")
    return (x0, y0, x1, y1)


def _parse_segmentation(seg: Any, width: int, height: int) -> RLE | None:
    """Polygons / compressed RLE / uncompressed RLE -> compressed RLE (text counts).

    An empty polygon list means "no mask" (box-only annotation) and gives None.
    """
    if isinstance(seg, list):
        if not seg:
            return None
        polys = []
        for i, poly in enumerate(seg):
            if not isinstance(poly, list):
                raise Invalid(
                    f"segmentation polygon {i} must be a list of numbers, got {type(poly).__name__}"
                )
            coords = finite(poly, f"segmentation polygon {i}")
            if len(coords) < 6:
                raise Invalid(f"segmentation polygon {i} has {len(coords)} numbers (< 3 points)")
            if len(coords) % 2:
                raise Invalid(f"segmentation polygon {i} has an odd number of coordinates ({len(coords)})")
            xs, ys = coords[0::2], coords[1::2]
            # far-away points overflow pycocotools' int rasterizer; real polygons hug the image
            if min(xs) < -width or max(xs) > 2 * width or min(ys) < -height or max(ys) > 2 * height:
                raise Invalid(f"segmentation polygon {i} has a point far outside the {width}x{height} image")
            polys.append(coords)
        return polygons_to_rle(polys, height, width)
    if isinstance(seg, dict):
        if "size" not in seg or "counts" not in seg:
            raise Invalid("RLE segmentation needs 'size' and 'counts'")
        size = seg["size"]
        if not isinstance(size, (list, tuple)) or len(size) != 2:
            raise Invalid(f"RLE size must be [h, w], got {size!r}")
        h, w = as_int(size[0], "RLE size"), as_int(size[1], "RLE size")
        if (h, w) != (height, width):
            raise Invalid(f"RLE size [{h}, {w}] does not match the image size [{height}, {width}] (h, w)")
        counts = seg["counts"]
        if isinstance(counts, list):
            # pycocotools decodes a wrong-length uncompressed RLE without complaint: check it here.
            if any(isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in counts):
                raise Invalid("uncompressed RLE counts must be non-negative integers")
            if sum(counts) != h * w:
                raise Invalid(f"uncompressed RLE counts sum to {sum(counts)}, expected h*w = {h * w}")
        elif isinstance(counts, (str, bytes)):
            try:
                runs = compressed_counts(counts if isinstance(counts, str) else counts.decode("ascii"))
            except UnicodeError as e:
                raise Invalid(f"compressed RLE counts are not ASCII: {e}") from e
            if (runs < 0).any() or int(runs.sum()) != h * w:
                raise Invalid(
                    f"compressed RLE runs sum to {int(runs.sum())} (or are negative), expected h*w = {h * w}"
                )
        else:
            raise Invalid(f"RLE counts must be a string or a list, got {type(counts).__name__}")
        return normalize_rle({"size": [h, w], "counts": counts})
    raise Invalid(f"segmentation must be polygons or RLE, got {type(seg).__name__}")


def _geometry(entry: dict, width: int, height: int) -> tuple[Box, RLE | None]:
    """Box and mask of an annotation / result; the box comes from the mask when ``bbox`` is absent."""
    if "bbox" not in entry and "segmentation" not in entry:
        raise Invalid("missing required key 'bbox' (and no 'segmentation')")
    mask = _parse_segmentation(entry["segmentation"], width, height) if "segmentation" in entry else None
    if "bbox" in entry:
        box = _parse_bbox(entry["bbox"], width, height)
    elif mask is not None and rle_area(mask) > 0:
        box = rle_to_box(mask)
    else:
        raise Invalid("no 'bbox' and an empty segmentation")
    return box, mask


# ----------------------------------------------------------------------------- reading


def _file_name(img: dict, image_root: str) -> str:
    """The image's file name, confined to ``image_root`` (no absolute paths, no escaping ``..``)."""
    if "file_name" in img:
        return image_file_name(img["file_name"], image_root)
    if isinstance(img.get("coco_url"), str) and img["coco_url"]:
        name = "/".join(img["coco_url"].rstrip("/").split("/")[-2:])  # LVIS: .../train2017/x.jpg
        return image_file_name(name, image_root, "file name from coco_url")
    raise Invalid("missing required key 'file_name' (or LVIS 'coco_url')")


def _optional_str(entry: dict, key: str) -> str:
    """``entry[key]`` as a string; absent or null gives ""."""
    value = entry.get(key)
    return "" if value is None else as_str(value, key)


def _read_categories(entries: Any, path: str, bad: BadRecords) -> list[Category]:
    if not isinstance(entries, list):
        raise BadRecordError(path, "categories", "must be a list")
    cats: dict[int, Category] = {}
    for i, c in enumerate(entries):
        rec = record_name("category", i, c)
        try:
            require(c, ("id", "name"), "category")
            cid = as_int(c["id"], "id")
            if cid in cats:
                raise Invalid(f"duplicate category id {cid}")
            syn = c.get("synonyms", [])
            if not isinstance(syn, list) or not all(isinstance(s, str) for s in syn):
                raise Invalid("synonyms must be a list of strings")
            cats[cid] = Category(
                id=cid,
                name=as_str(c["name"], "name", nonempty=True),
                supercategory=_optional_str(c, "supercategory"),
                synonyms=list(syn),
                isthing=as_flag(c.get("isthing", 1), "isthing"),
                frequency=_optional_str(c, "frequency"),
            )
        except Invalid as e:
            bad.report(path, rec, str(e))
    return list(cats.values())


def _id_list(img: dict, key: str, cat_ids: set[int]) -> list[int]:
    values = img.get(key, [])
    if not isinstance(values, list):
        raise Invalid(f"{key} must be a list")
    ids = [as_int(v, key) for v in values]
    unknown = sorted(set(ids) - cat_ids)
    if unknown:
        raise Invalid(f"{key} names unknown category id(s) {unknown[:5]}")
    return ids


def _plain_name(name: Any) -> bool:
    """A file name that certainly passes ``image_file_name`` with an empty root."""
    return type(name) is str and name.isascii() and name != "" and "\0" not in name \
        and not name.startswith("/") and ".." not in name


def _check_file_names(names: list[str], image_root: str) -> None:
    """``image_file_name(name, image_root)`` for every name, raising its :class:`Invalid`.

    A plain name (:func:`_plain_name`) whose path, resolved as ``confined_path`` resolves it (one
    realpath per folder, an lstat per file for symbolic links), starts with the resolved root
    certainly passes and is not checked again: the pathlib objects per name cost more than making
    the records (~12 us a name, 2.5 s per 100K images). Every other name gets the full check.
    """
    root_real = os.path.realpath(image_root)
    inside = root_real.rstrip(os.sep) + os.sep
    parents: dict[str, str] = {}
    split, join, islink = os.path.split, os.path.join, os.path.islink
    for name in names:
        full = None  # the resolved path, when the shortcut applies
        if _plain_name(name):
            if os.sep not in name:  # a name in the root itself (COCO's): its folder is the root
                full = inside + name if name != "." else None
            else:
                head, tail = split(name)
                if tail not in ("", ".", ".."):
                    parent = parents.get(head) if head else root_real
                    if parent is None:
                        parent = parents[head] = os.path.realpath(join(root_real, head))
                    full = join(parent, tail)
        if full is not None:
            if islink(full):
                full = os.path.realpath(full)
            if full.startswith(inside):
                continue
        image_file_name(name, image_root)


def _plain_images(entries: list, image_root: str) -> dict[Any, ImageRecord] | None:
    """The records when every image is plain (unique int ids, int sizes within bounds, a plain
    ``file_name``, no LVIS id lists), else None: the per-image reader then reports what is wrong."""
    if not set(map(type, entries)) <= {dict} or any(
        "neg_category_ids" in e or "not_exhaustive_category_ids" in e for e in entries
    ):
        return None
    try:
        ids, ws, hs, names = (list(map(itemgetter(k), entries)) for k in ("id", "width", "height", "file_name"))
    except KeyError:
        return None
    if not set(map(type, ids)) | set(map(type, ws)) | set(map(type, hs)) <= {int}:
        return None
    if len(set(ids)) != len(ids) or any(abs(i) > MAX_ID for i in ids):
        return None
    if (ws and (min(ws) <= 0 or min(hs) <= 0 or max(max(ws), max(hs)) > MAX_IMAGE_SIDE)):
        return None
    if image_root:
        if not set(map(type, names)) <= {str}:
            return None
        try:
            _check_file_names(names, image_root)
        except Invalid:
            return None
    elif not all(map(_plain_name, names)):
        return None
    sizes: dict[int, int] = {}  # one int object per distinct size, not two per image (~100 MB at 1.5M images)
    ws, hs = [sizes.setdefault(w, w) for w in ws], [sizes.setdefault(h, h) for h in hs]
    return dict(zip(ids, map(lean_record, ids, names, ws, hs)))


def _read_images(
    entries: Any, path: str, bad: BadRecords, cat_ids: set[int], image_root: str = ""
) -> dict[Any, ImageRecord]:
    """Image records by id; ``file_name`` s must stay inside ``image_root`` (see ``image_file_name``)."""
    if not isinstance(entries, list):
        raise BadRecordError(path, "images", "must be a list")
    fast = _plain_images(entries, image_root)
    if fast is not None:
        return fast
    records: dict[Any, ImageRecord] = {}
    for i, img in enumerate(entries):
        rec = record_name("image", i, img)
        try:
            require(img, ("id", "width", "height"), "image")
            iid = as_image_id(img["id"])
            if iid in records:
                raise Invalid(f"duplicate image id {iid!r}")
            w, h = as_int(img["width"], "width"), as_int(img["height"], "height")
            if w <= 0 or h <= 0:
                raise Invalid(f"image size must be positive, got {w}x{h}")
            if max(w, h) > MAX_IMAGE_SIDE:
                raise Invalid(f"image size {w}x{h} exceeds the supported {MAX_IMAGE_SIDE} px per side")
            records[iid] = ImageRecord(
                image_id=iid,
                file_name=_file_name(img, image_root),
                width=w,
                height=h,
                neg_category_ids=_id_list(img, "neg_category_ids", cat_ids),
                not_exhaustive_category_ids=_id_list(img, "not_exhaustive_category_ids", cat_ids),
            )
        except Invalid as e:
            bad.report(path, rec, str(e))
    return records


def _annotation_id(ann: Any) -> int:
    """The checks before the duplicate-id check: an object with the required keys and an integer id."""
    require(ann, ("id", "image_id", "category_id"), "annotation")
    return as_int(ann["id"], "id")


def _read_instance(
    ann: dict, aid: int, records: dict[Any, ImageRecord], cats: dict[int, Category], source: str
) -> tuple[ImageRecord, Instance]:
    """The checks after the duplicate-id check, and the instance (``aid`` from :func:`_annotation_id`)."""
    iid = as_image_id(ann["image_id"])
    if iid not in records:
        raise Invalid(f"unknown image id {iid!r}")
    cid = as_int(ann["category_id"], "category_id")
    if cid not in cats:
        raise Invalid(f"unknown category id {cid}")
    record = records[iid]
    box, mask = _geometry(ann, record.width, record.height)
    score = ann.get("score")
    if score is not None:
        score = number(score, "score")
    quality = ann.get("box_quality", "exact")
    if quality not in ("exact", "approximate"):
        raise Invalid(f"box_quality must be 'exact' or 'approximate', got {short_repr(quality)}")
    inst = Instance(
        text=cats[cid].name,
        category_id=cid,
        box=box,
        box_quality=quality,
        mask=mask,
        source=source,
        is_crowd=as_flag(ann.get("iscrowd", 0), "iscrowd"),
        score=score,
        id=aid,
        area=as_area(ann["area"]) if ann.get("area") is not None else None,
    )
    return record, inst


#: annotations from which a read gives the C heap's free pages back (:func:`_release_freed_memory`)
_TRIM_ROWS = 100_000


def _release_freed_memory() -> None:
    """Give the C heap's free pages back to the system (glibc ``malloc_trim``; elsewhere a no-op).

    The column chunks of a streamed file are small numpy buffers freed in the middle of the heap,
    where the allocator keeps them and Python's own allocator (its arenas) cannot reuse them:
    ~75 MB per 1M boxes of resident memory that is no longer used.
    """
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


@dataclass
class CocoScan:
    """A COCO JSON file parsed once: ``data`` is the top-level value; when it is an object whose
    ``annotations`` is an array, that entry is :data:`STREAMED` and the rows are in ``columns``."""

    path: str
    data: Any
    columns: AnnotationColumns | None
    _rows: list | None = None  # the parsed annotations, when the file was not streamed

    def rows(self, wanted: set[int]) -> dict[int, Any]:
        """Annotations ``wanted`` (indices) as parsed; a streamed file is scanned again for them."""
        if not wanted:
            return {}
        if self._rows is not None:
            return {i: self._rows[i] for i in wanted}
        found: dict[int, Any] = {}
        seen = [0]

        def pick(rows: list) -> None:
            base, seen[0] = seen[0], seen[0] + len(rows)
            found.update((i, rows[i - base]) for i in wanted if base <= i < seen[0])

        scan_json_object(self.path, {"annotations": pick})
        return found


def scan_coco_json(path: str | os.PathLike) -> CocoScan:
    """Parse a COCO-style JSON file once, keeping plain box annotations as columns (streaming).

    A file the streaming scanner does not take (malformed, duplicate top-level keys, ...) is
    read whole with :func:`load_json_file`, which raises what is wrong, naming the file.
    """
    path = str(path)
    cols = AnnotationColumns()
    try:
        data = scan_json_object(path, {"annotations": cols.add})
        return CocoScan(path, data, cols if data.get("annotations") is STREAMED else None)
    except NotStreamable:
        pass
    data = load_json_file(path)
    anns = data.get("annotations") if isinstance(data, dict) else None
    if not isinstance(anns, list):
        return CocoScan(path, data, None)
    cols = AnnotationColumns()
    for s in range(0, len(anns), 8192):
        cols.add(anns[s:s + 8192])
    return CocoScan(path, {**data, "annotations": STREAMED}, cols, anns)


@dataclass
class _Validated:
    """A validated instances file: records (without instances yet), categories, and the taken
    annotations: fast-path rows as column chunks (``taken`` mask per chunk) plus per-record
    reader results ``extra`` (row index -> (record index, instance))."""

    records: list[ImageRecord]
    categories: list[Category]
    chunks: list[Chunk]
    taken: list[np.ndarray]
    extra: dict[int, tuple[int, Instance]]
    rows: int = 0  # annotations in the file

    def instances(self, source: str) -> None:
        """Attach the instances to the records, in file order (consumes the columns).

        Fast-path rows go into one :class:`~omniseg.data.formats.coco_columns.BoxTable` and each
        record's instances are deferred to it (:func:`~omniseg.data.records.defer_instances`:
        made on first read, ~55 bytes a box until then); a record that also has per-record
        reader results gets its merged list at once.
        """
        names = {c.id: c.name for c in self.categories}
        chunks, takens = self.chunks, self.taken
        self.chunks, self.taken = [], []  # each chunk is freed once its rows are taken out
        keys = ["index", "rec", "xyxy", "ids", "cat_ids", "crowd", "area"]
        keys += ["score"] * any(ch.score is not None for ch in chunks)
        keys += ["approx"] * any(ch.approx is not None for ch in chunks)
        fill = {"score": np.nan, "approx": False}
        parts: dict[str, list[np.ndarray]] = {k: [] for k in keys}
        chunks.reverse()
        takens.reverse()
        while chunks:
            ch, taken = chunks.pop(), takens.pop()
            if not taken.any():
                continue
            for k in keys:
                col = ch.index if k == "index" else getattr(ch, k)
                col = np.full(len(taken), fill[k]) if col is None else col
                parts[k].append(col if taken.all() else col[taken])
        n_rec = len(self.records)
        rec = np.concatenate(parts.pop("rec")) if parts["rec"] else np.zeros(0, np.int64)
        order = None if (rec[1:] >= rec[:-1]).all() else np.argsort(rec, kind="stable")  # file order kept
        offsets = np.zeros(n_rec + 1, np.int64)
        np.cumsum(np.bincount(rec, minlength=n_rec), out=offsets[1:])
        del rec
        cols: dict[str, np.ndarray | None] = {"score": None, "approx": None}
        for k in keys[2:] if not self.extra else keys[:1] + keys[2:]:  # one column at a time: small peaks
            got = parts.pop(k)
            a = np.concatenate(got) if got else np.zeros((0, 4) if k == "xyxy" else 0)
            got.clear()
            cols[k] = a if order is None else a[order]
            del a
        cat = cols["cat_ids"]
        if cat is not None and len(cat) and -(2**31) <= cat.min() and cat.max() < 2**31:
            cols["cat_ids"] = cat.astype(np.int32)
        index = cols.pop("index", None)
        table = BoxTable(names, source, offsets, cols)
        del cat, cols, order
        counts = np.diff(offsets)
        mixed: dict[int, list[tuple[int, Instance]]] = {}
        for i, (r, inst) in self.extra.items():
            mixed.setdefault(r, []).append((i, inst))
        for r, items in mixed.items():
            s, e = int(offsets[r]), int(offsets[r + 1])
            items += zip(index[s:e].tolist(), table.make(r))  # type: ignore[index]
            items.sort(key=itemgetter(0))
            self.records[r].instances.extend(inst for _, inst in items)
            counts[r] = 0
        for r in np.flatnonzero(counts).tolist():
            defer_instances(self.records[r], table, r)

    def tally(self) -> InstanceTally:
        """Instance counts of :func:`~omniseg.data.stats.dataset_stats` without making the instances."""
        t = tally_instances(inst for _, inst in self.extra.values())
        for ch, taken in zip(self.chunks, self.taken):
            n = int(taken.sum())
            approx = int(ch.approx[taken].sum()) if ch.approx is not None else 0
            t.instances += n
            t.instances_exact_box += n - approx
            t.instances_approximate_box += approx
            t.box_only += n - approx
            t.crowd += int(ch.crowd[taken].sum())
            t.category_ids.update(np.unique(ch.cat_ids[taken]).tolist())
        return t


def _validate(
    scan: CocoScan, image_root: str, bad: BadRecords, source: str, progress: bool
) -> _Validated:
    path = scan.path
    data = check_json_object(path, scan.data, ("images", "categories"))
    categories = _read_categories(data["categories"], path, bad)
    cats = {c.id: c for c in categories}
    records = _read_images(data["images"], path, bad, set(cats), image_root)
    data["images"] = None  # the scan is used up: free the parsed image objects (GBs at Open Images scale)
    cols = scan.columns
    if cols is None:
        anns = data.get("annotations", [])
        if not isinstance(anns, list):
            raise BadRecordError(path, "annotations", "must be a list")
        cols = AnnotationColumns()  # an absent key: no annotations
    chunks, cols.chunks = cols.chunks, []  # the scan is used up: its columns go to the result
    rec_list = list(records.values())
    rec_index = {k: i for i, k in enumerate(records)}
    int_keys = [(k, i) for k, i in rec_index.items() if type(k) is int]
    keys = np.array([k for k, _ in int_keys], np.int64).reshape(-1)
    recs = np.array([i for _, i in int_keys], np.int64).reshape(-1)
    order = np.argsort(keys)
    keys, recs = keys[order], recs[order]
    width = np.array([r.width for r in rec_list], np.int64).reshape(-1)
    height = np.array([r.height for r in rec_list], np.int64).reshape(-1)
    cat_ids = np.array(sorted(cats), np.int64).reshape(-1)
    n = cols.n
    aid, aid_ok, valid = np.zeros(n, np.int64), np.zeros(n, bool), np.zeros(n, bool)
    slow = set(cols.raw)
    for ch in progress_bar(chunks, len(chunks), "annotations", progress):
        check_rows(ch, keys, recs, width, height, cat_ids, BOX_TOLERANCE_PX)
        idx = ch.index
        aid[idx], aid_ok[idx], valid[idx] = ch.ids, True, ch.ok  # type: ignore[assignment]
        slow.update(idx[~ch.ok].tolist())  # type: ignore[operator]
    # rows for the per-record reader: as parsed (streamed rows that failed a check are read again)
    raw = dict(cols.raw)
    raw.update(scan.rows(slow - raw.keys()))
    errors: dict[int, str] = {}
    extra: dict[int, tuple[int, Instance]] = {}
    for i in sorted(slow):
        try:
            aid[i], aid_ok[i] = _annotation_id(raw[i]), True
            record, inst = _read_instance(raw[i], int(aid[i]), records, cats, source)
        except Invalid as e:
            errors[i], valid[i] = str(e), False
            continue
        valid[i] = True
        extra[i] = (rec_index[record.image_id], inst)
    dup = duplicate_rows(aid, aid_ok, valid)
    taken_all = aid_ok & valid & ~dup
    for i in np.flatnonzero(~taken_all).tolist():
        ann = raw.get(i, {"id": int(aid[i])})
        reason = f"duplicate annotation id {int(aid[i])}" if dup[i] else errors[i]
        bad.report(path, record_name("annotation", i, ann), reason)
    taken = [taken_all[ch.index] & ch.ok for ch in chunks]  # type: ignore[operator]
    extra = {i: v for i, v in extra.items() if taken_all[i]}
    return _Validated(rec_list, categories, chunks, taken, extra, n)


def read_coco_instances(
    path: str | os.PathLike,
    image_root: str = "",
    on_bad: BadRecords | None = None,
    source: str = "coco",
    *,
    progress: bool = True,
    scan: CocoScan | None = None,
) -> RecordSet:
    """Read a COCO or LVIS instances JSON into records (one per image, in file order).

    Every instance gets ``text`` = category name, ``category_id``, an XYXY ``box`` (from the
    file's XYWH bbox, clipped when it sticks out by <= 1 px), a compressed-RLE ``mask`` (from
    polygons / compressed / uncompressed RLE; None for ``"segmentation": []``), ``is_crowd``,
    ``id`` and ``source``. Extra keys ``score`` / ``box_quality`` (written for pseudo labels by
    :func:`to_coco_dict`) are read back.

    Invalid entries (reported through ``on_bad``): missing keys, wrongly typed fields (ids that
    are not integers, ``iscrowd`` other than 0 / 1, a negative or non-finite ``area`` or
    ``score``, a non-string name), duplicate image / annotation / category ids, unknown image or
    category ids, an image ``file_name`` that is absolute or resolves outside ``image_root``,
    zero/negative or out-of-image boxes, NaN/inf coordinates, polygons with < 3 points, RLE whose
    size differs from the image's, RLE (uncompressed or compressed) whose runs do not sum to h*w.
    Skipping an image also skips its annotations (each counted as "unknown image id").

    The file is parsed once, streaming; plain box annotations are checked as numpy columns
    (:mod:`~omniseg.data.formats.coco_columns`), the rest one by one, with the same messages.
    Plain box instances stay in those columns until a record's ``instances`` is first read
    (:class:`~omniseg.data.records.DeferredInstances`; the same objects, made then), and plain
    images get lean records (:func:`~omniseg.data.records.lean_record`): an Open Images scale file
    (15M boxes) loads in ~2.8 GB instead of ~9 GB.
    ``scan``: the file already parsed by :func:`scan_coco_json` (``load_dataset`` sniffs it).

    Raises:
        FileNotFoundError: missing file.
        BadRecordError: empty / malformed file, missing top-level keys, or (policy "error") the
            first invalid entry, naming the file and the entry.
    """
    path = str(path)
    bad = on_bad if on_bad is not None else BadRecords()
    v = _validate(scan or scan_coco_json(path), image_root, bad, source, progress)
    v.instances(source)
    if v.rows >= _TRIM_ROWS:
        _release_freed_memory()
    return RecordSet(records=v.records, categories=v.categories, image_root=image_root, name=Path(path).stem)


def coco_instances_stats(
    path: str | os.PathLike,
    image_root: str = "",
    on_bad: BadRecords | None = None,
    *,
    scan: CocoScan | None = None,
) -> dict[str, int | float]:
    """:func:`~omniseg.data.stats.dataset_stats` of :func:`read_coco_instances`, without making
    the per-instance objects (the same validation and bad-record reports)."""
    bad = on_bad if on_bad is not None else BadRecords()
    v = _validate(scan or scan_coco_json(path), image_root, bad, "coco", False)
    if v.rows >= _TRIM_ROWS:
        _release_freed_memory()
    rs = RecordSet(records=v.records, categories=v.categories, image_root=image_root, name=Path(path).stem)
    return dataset_stats(rs, v.tally())


def read_coco_results(
    path: str | os.PathLike,
    gt: RecordSet,
    on_bad: BadRecords | None = None,
    source: str = "prediction",
    *,
    progress: bool = True,
) -> RecordSet:
    """Read a COCO results list; predictions are attached to copies of ``gt``'s images.

    Returns a RecordSet with ``gt``'s categories and one record per gt image (same order, same
    id / file / size, no captions etc.) whose instances are the predictions (``score`` set,
    ``id`` None). Results naming an unknown image / category or with bad geometry go through
    ``on_bad``.
    """
    path = str(path)
    bad = on_bad if on_bad is not None else BadRecords()
    data = load_json_file(path)
    if not isinstance(data, list):
        raise BadRecordError(path, "file", f"a results file is a JSON list, got {type(data).__name__}")
    cats = gt.category_by_id()
    records: dict[Any, ImageRecord] = {
        r.image_id: ImageRecord(image_id=r.image_id, file_name=r.file_name, width=r.width, height=r.height)
        for r in gt.records
    }
    for i, res in progress_bar(enumerate(data), len(data), "results", progress):
        try:
            require(res, ("image_id", "category_id", "score"), "result")
            iid = as_image_id(res["image_id"])
            if iid not in records:
                raise Invalid(f"unknown image id {iid!r}")
            cid = as_int(res["category_id"], "category_id")
            if cid not in cats:
                raise Invalid(f"unknown category id {cid}")
            score = number(res["score"], "score")
            record = records[iid]
            box, mask = _geometry(res, record.width, record.height)
        except Invalid as e:
            bad.report(path, record_name("result", i, res, "image_id"), str(e))
            continue
        record.instances.append(
            Instance(text=cats[cid].name, category_id=cid, box=box, mask=mask, source=source, score=score)
        )
    return RecordSet(
        records=list(records.values()),
        categories=list(gt.categories),
        image_root=gt.image_root,
        name=Path(path).stem,
    )


# ----------------------------------------------------------------------------- writing


def _xywh(box: Box) -> list[float]:
    x0, y0, x1, y1 = (float(v) for v in box)
    # rounding to 1e-6 px drops float noise such as 66.42999999999995 from x1 - x0
    return [round(x0, 6), round(y0, 6), round(x1 - x0, 6), round(y1 - y0, 6)]


def _category_id(inst: Instance, by_name: dict[str, Category], where: str) -> int:
    if inst.category_id is not None:
        return int(inst.category_id)
    if inst.text in by_name:
        return by_name[inst.text].id
    raise ValueError(f"{where}: instance {inst.text!r} has no category_id and its text names no category")


def _box_and_mask(inst: Instance, where: str) -> tuple[list[float], RLE | None]:
    mask = normalize_rle(inst.mask) if inst.mask is not None else None
    if inst.box is not None:
        return _xywh(inst.box), mask
    if mask is not None:
        return _xywh(rle_to_box(mask)), mask
    raise ValueError(f"{where}: instance {inst.text!r} has neither a box nor a mask; COCO cannot hold it")


def _is_lvis(rs: RecordSet) -> bool:
    return any(c.synonyms for c in rs.categories) or any(
        r.neg_category_ids or r.not_exhaustive_category_ids for r in rs.records
    )


def to_coco_dict(rs: RecordSet) -> dict:
    """RecordSet -> COCO instances dict (LVIS keys when the set has synonyms / negative ids).

    Annotation ids are kept when every instance has a unique one, otherwise renumbered 1..N.
    ``area`` is the mask's pixel count (box area for box-only instances, which are written
    without a ``segmentation`` key: nothing is fabricated). Instances without a category id are
    matched to a category by name; ``score`` and a non-exact ``box_quality`` are kept as extra keys.

    Raises:
        ValueError: an instance has no category (id or name) or neither box nor mask.
    """
    ids = [r.image_id for r in rs.records]
    if len(set(ids)) != len(ids):
        dup = sorted(str(i) for i, n in Counter(ids).items() if n > 1)[:5]
        raise ValueError(f"record set {rs.name!r} has duplicate image ids {dup}")
    lvis = _is_lvis(rs)
    by_name = rs.category_by_name()
    all_ids = [i.id for r in rs.records for i in r.instances]
    keep_ids = None not in all_ids and len(set(all_ids)) == len(all_ids)
    images, annotations = [], []
    for r in rs.records:
        img: dict[str, Any] = {
            "id": r.image_id,
            "file_name": r.file_name,
            "width": r.width,
            "height": r.height,
        }
        if lvis:
            img["neg_category_ids"] = list(r.neg_category_ids)
            img["not_exhaustive_category_ids"] = list(r.not_exhaustive_category_ids)
        images.append(img)
        for inst in r.instances:
            where = f"image {r.image_id!r}"
            bbox, mask = _box_and_mask(inst, where)
            ann: dict[str, Any] = {
                "id": inst.id if keep_ids else len(annotations) + 1,
                "image_id": r.image_id,
                "category_id": _category_id(inst, by_name, where),
                "bbox": bbox,
                "area": inst.area if inst.area is not None else (rle_area(mask) if mask is not None else bbox[2] * bbox[3]),
                "iscrowd": int(inst.is_crowd),
            }
            if mask is not None:
                ann["segmentation"] = mask
            if inst.score is not None:
                ann["score"] = float(inst.score)
            if inst.box_quality != "exact":
                ann["box_quality"] = inst.box_quality
            annotations.append(ann)
    categories = []
    for c in rs.categories:
        cat: dict[str, Any] = {"id": c.id, "name": c.name, "supercategory": c.supercategory}
        if lvis:
            cat["synonyms"] = list(c.synonyms)
            if c.frequency:
                cat["frequency"] = c.frequency
        if not c.isthing:
            cat["isthing"] = 0
        categories.append(cat)
    return {
        "info": {"description": rs.name},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }


def to_coco_results(rs: RecordSet) -> list[dict]:
    """Instances with a score (predictions / pseudo labels) -> COCO results list.

    Ground-truth instances (``score is None``) are left out. Each entry has ``image_id``,
    ``category_id``, ``bbox`` (XYWH), ``score`` and ``segmentation`` (compressed RLE) when the
    instance has a mask.
    """
    by_name = rs.category_by_name()
    out = []
    for r in rs.records:
        for inst in r.instances:
            if inst.score is None:
                continue
            where = f"image {r.image_id!r}"
            bbox, mask = _box_and_mask(inst, where)
            res: dict[str, Any] = {
                "image_id": r.image_id,
                "category_id": _category_id(inst, by_name, where),
                "bbox": bbox,
                "score": float(inst.score),
            }
            if mask is not None:
                res["segmentation"] = mask
            out.append(res)
    return out


def write_coco_instances(path: str | os.PathLike, rs: RecordSet) -> None:
    """Write :func:`to_coco_dict` atomically."""
    atomic_write_json(path, to_coco_dict(rs))


def write_coco_results(path: str | os.PathLike, rs: RecordSet) -> None:
    """Write :func:`to_coco_results` atomically."""
    atomic_write_json(path, to_coco_results(rs))
