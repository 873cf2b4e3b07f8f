"""COCO panoptic format: one JSON file plus a folder of PNG segment-id maps.

Format (COCO panoptic, as published with the 2017 panoptic annotations):

* JSON ``{"images": [{"id", "file_name", "width", "height"}],
  "annotations": [{"image_id", "file_name", "segments_info": [{"id", "category_id", "area",
  "bbox", "iscrowd"}]}], "categories": [{"id", "name", "supercategory", "isthing", "color"}]}``
* one RGB PNG per annotation (``annotations[i].file_name`` inside the PNG folder); each pixel
  holds a segment id ``R + 256 * G + 256**2 * B``; 0 (black) is void / unlabeled.

The reader gives every record ``segments`` for all segments (things and stuff) and also lists
thing segments as ``instances`` (mask + tight box + crowd flag), so instance methods and the
PQ evaluator read the same file. The writer works from ``record.segments`` only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from omniseg.data.errors import BadRecordError, BadRecords
from omniseg.data.formats.validation import (
    Invalid,
    as_area,
    as_flag,
    as_image_id,
    as_int,
    finite,
    image_file_name,
    load_json_object,
    open_regular,
    progress_bar,
    require,
    short_repr,
)
from omniseg.data.records import Category, ImageRecord, Instance, RecordSet, Segment
from omniseg.errors import UserError
from omniseg.ops.rle import rle_area, rle_decode, rle_encode, rle_to_box
from omniseg.utils.atomic import atomic_dir, atomic_open

SOURCE = "coco_panoptic"


#: id of unlabelled pixels (RGB 0, 0, 0) in a COCO panoptic PNG
VOID_ID = 0


def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    """H x W x 3 uint8 color PNG -> H x W int64 segment ids (``R + 256 G + 256^2 B``)."""
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def id_to_rgb(ids: np.ndarray) -> np.ndarray:
    """H x W integer segment ids -> H x W x 3 uint8 colors (inverse of :func:`rgb_to_id`)."""
    ids = ids.astype(np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= 256**3):
        raise ValueError("panoptic segment ids must lie in [0, 256^3)")
    return np.stack([ids % 256, (ids // 256) % 256, ids // (256 * 256)], axis=-1).astype(np.uint8)


def _png_name(file_name: str) -> str:
    return Path(file_name).with_suffix(".png").name


def _read_png_ids(png_path: Path) -> np.ndarray:
    """Segment ids of a panoptic PNG (refusing folders / FIFOs without blocking)."""
    try:
        with open_regular(png_path, "rb", what="panoptic PNG") as f, Image.open(f) as png:
            return rgb_to_id(np.asarray(png.convert("RGB")))
    except FileNotFoundError:
        raise Invalid(f"panoptic PNG missing: {png_path}") from None
    except (UserError, IsADirectoryError) as e:
        raise Invalid(str(e)) from None
    except UnidentifiedImageError:  # its message shows a Python file object, not the file
        raise Invalid(f"cannot read panoptic PNG {png_path}: not an image (empty or damaged file?)") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise Invalid(f"cannot read panoptic PNG {png_path}: {e}") from None


def _segment_info(seg: Any, cats: dict[int, Category], seen: set[int]) -> tuple[int, Category, bool]:
    """``(segment id, category, iscrowd)`` of one ``segments_info`` entry, validated."""
    require(seg, ("id", "category_id"), "segment")
    sid = as_int(seg["id"], "segment id")
    if sid in seen:
        raise Invalid(f"duplicate segment id {sid}")
    cid = as_int(seg["category_id"], "category_id")
    if cid not in cats:
        raise Invalid(f"unknown category_id {cid}")
    crowd = as_flag(seg.get("iscrowd", 0), "iscrowd")
    if seg.get("area") is not None:
        as_area(seg["area"])
    if seg.get("bbox") is not None:
        if not isinstance(seg["bbox"], list) or len(seg["bbox"]) != 4:
            raise Invalid(f"bbox must be [x, y, w, h], got {short_repr(seg['bbox'])}")
        finite(seg["bbox"], "bbox")
    return sid, cats[cid], crowd


def read_coco_panoptic(
    json_path: str | os.PathLike,
    png_dir: str | os.PathLike,
    image_root: str = "",
    on_bad: BadRecords | None = None,
    progress: bool = True,
) -> RecordSet:
    """Read a COCO panoptic JSON + PNG folder.

    Args:
        json_path: the panoptic JSON.
        png_dir: folder holding the PNGs named by ``annotations[i].file_name``.
        image_root: folder of the RGB images (stored in the RecordSet; image file names must
            stay inside it).
        on_bad: bad-record policy (default: raise on the first bad record).
        progress: show a progress bar when stderr is a terminal.

    Returns:
        RecordSet with one record per JSON image; ``segments`` hold every segment, thing
        segments also appear as ``instances`` (text = category name, box from the mask).

    Bad input (reported through ``on_bad``, naming the file and the image / segment): invalid
    images and categories (as in :func:`~omniseg.data.formats.coco.read_coco_instances`),
    a missing or unreadable PNG or one outside ``png_dir``, PNG size differing from the image
    size, annotations for an unknown image, and segments with a non-integer / duplicate id, an
    unknown category id, ``iscrowd`` other than 0 / 1, a negative or non-finite ``area`` or
    ``bbox``, or an id absent from the PNG.

    Raises:
        FileNotFoundError / IsADirectoryError: ``json_path`` is missing or a folder.
        BadRecordError: malformed JSON, missing top-level keys, or (policy "error") the first
            bad record.
    """
    from omniseg.data.formats.coco import _read_categories, _read_images

    bad = on_bad if on_bad is not None else BadRecords()
    json_path, png_dir = Path(json_path), Path(png_dir)
    path = str(json_path)
    data = load_json_object(json_path, ("images", "annotations", "categories"))
    categories = _read_categories(data["categories"], path, bad)
    cats = {c.id: c for c in categories}
    records = _read_images(data["images"], path, bad, set(), image_root)
    anns = data["annotations"]
    if not isinstance(anns, list):
        raise BadRecordError(path, "annotations", "must be a list")

    png_owner: dict[str, str] = {}  # PNG name -> the image that uses it
    for i, ann in progress_bar(enumerate(anns), len(anns), "panoptic", progress):
        image_id = ann.get("image_id") if isinstance(ann, dict) else None
        where = f"image {short_repr(image_id)}" if image_id is not None else f"annotation #{i}"
        try:
            require(ann, ("image_id",), "annotation")
            rec = records.get(as_image_id(image_id))
            if rec is None:
                raise Invalid("annotation for an image not in 'images'")
            infos = ann.get("segments_info", [])
            if not isinstance(infos, list):
                raise Invalid("segments_info must be a list")
            png_name = image_file_name(ann.get("file_name", _png_name(rec.file_name)), png_dir)
            png_path = png_dir / png_name
            if png_owner.setdefault(png_name, where) != where:
                raise Invalid(f"PNG {png_name} is also the PNG of {png_owner[png_name]}")
            ids = _read_png_ids(png_path)
            if ids.shape != (rec.height, rec.width):
                raise Invalid(
                    f"PNG {png_path.name} is {ids.shape[1]}x{ids.shape[0]}, image is {rec.width}x{rec.height}"
                )
        except Invalid as e:
            bad.report(path, where, str(e))
            continue
        seen: set[int] = set()
        for k, seg in enumerate(infos):
            seg_where = f"{where} segment {short_repr(seg.get('id')) if isinstance(seg, dict) else f'#{k}'}"
            try:
                sid, cat, crowd = _segment_info(seg, cats, seen)
                m = ids == sid
                if not m.any():
                    raise Invalid(f"segment id absent from PNG {png_path.name}")
            except Invalid as e:
                bad.report(path, seg_where, str(e))
                continue
            seen.add(sid)
            rle = rle_encode(m)
            rec.segments.append(
                Segment(text=cat.name, category_id=cat.id, mask=rle, is_thing=cat.isthing, id=sid, is_crowd=crowd)
            )
            if cat.isthing:
                rec.instances.append(
                    Instance(
                        text=cat.name,
                        category_id=cat.id,
                        box=rle_to_box(rle),
                        mask=rle,
                        source=SOURCE,
                        is_crowd=crowd,
                        id=sid,
                    )
                )
        # pixels of a segment nobody describes were dropped silently before (checked when every
        # segment of the image was valid: a bad one is reported already)
        unlabelled = sorted(int(v) for v in np.unique(ids) if v != VOID_ID and int(v) not in seen)
        if unlabelled and len(seen) == len(infos):
            bad.report(path, where, f"PNG {png_path.name} has pixels of segment id(s) {unlabelled[:5]} "
                                    "that are not in segments_info")
    return RecordSet(
        records=list(records.values()), categories=categories, image_root=image_root, name=json_path.stem
    )


def _segment_ids(rec: ImageRecord) -> list[int]:
    """Ids for the record's segments: the stored id when valid and unique, else the next free one."""
    used: set[int] = set()
    ids: list[int | None] = []
    for s in rec.segments:
        sid = s.id if s.id is not None and 0 < s.id < 256**3 and s.id not in used else None
        if sid is not None:
            used.add(sid)
        ids.append(sid)
    nxt = 1
    out = []
    for sid in ids:
        if sid is None:
            while nxt in used:
                nxt += 1
            sid = nxt
            used.add(sid)
        out.append(sid)
    return out


class PanopticWriteError(UserError, ValueError):
    """``rs`` cannot be written as COCO panoptic (overlapping segments, wrong mask size, PNG name clash)."""


def write_coco_panoptic(
    json_path: str | os.PathLike, png_dir: str | os.PathLike, rs: RecordSet, progress: bool = True
) -> None:
    """Write ``rs`` (from ``record.segments``) as a COCO panoptic JSON + PNG folder.

    The PNGs are written to a staged folder and the JSON to a temporary file; both are complete
    on disk before the folder replaces ``png_dir`` as a whole (:func:`atomic_dir`) and then the
    JSON is renamed over ``json_path``. An interrupted or failed export (disk full included)
    leaves the previous JSON and folder (or nothing), never a partial folder; only a kill between
    the two renames leaves the new folder beside the previous JSON.
    Segments must not overlap, their masks must have the record's size and two images may not
    map to the same PNG name; a violation raises :class:`PanopticWriteError` naming the JSON,
    the image and the segment. Segment ids are kept when valid and unique, otherwise renumbered.
    """
    json_path, png_dir = Path(json_path), Path(png_dir)
    images, annotations = [], []
    png_owner: dict[str, int | str] = {}
    with atomic_open(json_path, "w", encoding="utf-8") as json_file, atomic_dir(png_dir) as staging:
        for rec in progress_bar(rs.records, len(rs.records), "write panoptic", progress):
            where = f"{json_path}: image {rec.image_id}"
            ids = np.zeros((rec.height, rec.width), dtype=np.int64)
            infos = []
            for seg, sid in zip(rec.segments, _segment_ids(rec)):
                m = rle_decode(seg.mask).astype(bool)
                if m.shape != ids.shape:
                    raise PanopticWriteError(
                        f"{where} segment {seg.id}: mask is {m.shape[::-1]}, image is {rec.width}x{rec.height}"
                    )
                if (ids[m] != 0).any():
                    raise PanopticWriteError(
                        f"{where} segment {seg.id}: overlaps another segment (panoptic segments must be disjoint)"
                    )
                ids[m] = sid
                rle = rle_encode(m)
                x0, y0, x1, y1 = rle_to_box(rle)
                infos.append(
                    {
                        "id": int(sid),
                        "category_id": seg.category_id,
                        "area": int(rle_area(rle)),
                        "bbox": [x0, y0, x1 - x0, y1 - y0],
                        "iscrowd": int(seg.is_crowd),
                    }
                )
            png_name = _png_name(rec.file_name)
            if png_name in png_owner:
                raise PanopticWriteError(f"{where}: its PNG {png_name} is also image {png_owner[png_name]}'s")
            png_owner[png_name] = rec.image_id
            # plain writes: the staged folder as a whole is renamed into place
            Image.fromarray(id_to_rgb(ids)).save(staging / png_name, format="PNG")
            images.append(
                {"id": rec.image_id, "file_name": rec.file_name, "width": rec.width, "height": rec.height}
            )
            annotations.append({"image_id": rec.image_id, "file_name": png_name, "segments_info": infos})
        categories = [
            {"id": c.id, "name": c.name, "supercategory": c.supercategory, "isthing": int(c.isthing)}
            for c in rs.categories
        ]
        data = {"images": images, "annotations": annotations, "categories": categories}
        json.dump(data, json_file, allow_nan=False)
        json_file.flush()
        os.fsync(json_file.fileno())  # a full disk fails here, before the folder is replaced
