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

import io
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from omniseg.data.errors import BadRecords
from omniseg.data.formats.validation import progress_bar
from omniseg.data.records import Category, ImageRecord, Instance, RecordSet, Segment
from omniseg.ops.rle import rle_area, rle_decode, rle_encode, rle_to_box
from omniseg.utils.atomic import atomic_write_bytes, atomic_write_json

SOURCE = "coco_panoptic"


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
        image_root: folder of the RGB images (stored in the RecordSet).
        on_bad: bad-record policy (default: raise on the first bad record).
        progress: show a progress bar when stderr is a terminal.

    Returns:
        RecordSet with one record per JSON image; ``segments`` hold every segment, thing
        segments also appear as ``instances`` (text = category name, box from the mask).

    Bad input (reported through ``on_bad``, naming the file and the image / segment):
    missing PNG, PNG size differing from the image size, a JSON segment id absent from the
    PNG, an unknown category id, annotations for an unknown image.
    """
    bad = on_bad if on_bad is not None else BadRecords()
    json_path, png_dir = Path(json_path), Path(png_dir)
    with open(json_path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{json_path}: not valid JSON (line {e.lineno}): {e.msg}") from None
    if not isinstance(data, dict) or not {"images", "annotations", "categories"} <= set(data):
        raise ValueError(f"{json_path}: a COCO panoptic JSON needs 'images', 'annotations', 'categories'")

    categories = []
    for c in data["categories"]:
        try:
            categories.append(
                Category(
                    id=int(c["id"]),
                    name=str(c["name"]),
                    supercategory=str(c.get("supercategory", "")),
                    isthing=bool(c.get("isthing", 1)),
                )
            )
        except (KeyError, TypeError, ValueError) as e:
            bad.report(str(json_path), f"category {c!r}", f"malformed category ({e})")
    cats = {c.id: c for c in categories}

    records: dict[int | str, ImageRecord] = {}
    for im in data["images"]:
        try:
            rec = ImageRecord(
                image_id=im["id"],
                file_name=str(im["file_name"]),
                width=int(im["width"]),
                height=int(im["height"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            bad.report(
                str(json_path),
                f"image {im.get('id', '?') if isinstance(im, dict) else im!r}",
                f"malformed image entry ({e})",
            )
            continue
        if rec.image_id in records:
            bad.report(str(json_path), f"image {rec.image_id}", "duplicate image id")
            continue
        records[rec.image_id] = rec

    anns = data["annotations"]
    for ann in progress_bar(anns, len(anns), "panoptic", progress):
        image_id = ann.get("image_id")
        where = f"image {image_id}"
        rec = records.get(image_id) if isinstance(image_id, (int, str)) else None
        if rec is None:
            bad.report(str(json_path), where, "annotation for an image not in 'images'")
            continue
        png_path = png_dir / str(ann.get("file_name", _png_name(rec.file_name)))
        if not png_path.is_file():
            bad.report(str(json_path), where, f"panoptic PNG missing: {png_path}")
            continue
        with Image.open(png_path) as png:
            ids = rgb_to_id(np.asarray(png.convert("RGB")))
        if ids.shape != (rec.height, rec.width):
            bad.report(
                str(json_path),
                where,
                f"PNG {png_path.name} is {ids.shape[1]}x{ids.shape[0]}, image is {rec.width}x{rec.height}",
            )
            continue
        for seg in ann.get("segments_info", []):
            seg_where = f"{where} segment {seg.get('id')}"
            if not isinstance(seg.get("id"), int) or isinstance(seg.get("id"), bool):
                bad.report(str(json_path), seg_where, "segment id missing or not an integer")
                continue
            cat = cats.get(seg.get("category_id"))
            if cat is None:
                bad.report(str(json_path), seg_where, f"unknown category_id {seg.get('category_id')}")
                continue
            m = ids == int(seg["id"])
            if not m.any():
                bad.report(str(json_path), seg_where, f"segment id absent from PNG {png_path.name}")
                continue
            rle = rle_encode(m)
            crowd = bool(seg.get("iscrowd", 0))
            rec.segments.append(
                Segment(
                    text=cat.name,
                    category_id=cat.id,
                    mask=rle,
                    is_thing=cat.isthing,
                    id=int(seg["id"]),
                    is_crowd=crowd,
                )
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
                        id=int(seg["id"]),
                    )
                )
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


def write_coco_panoptic(
    json_path: str | os.PathLike, png_dir: str | os.PathLike, rs: RecordSet, progress: bool = True
) -> None:
    """Write ``rs`` (from ``record.segments``) as a COCO panoptic JSON + PNG folder.

    Every file is written atomically. Segments must not overlap and their masks must have the
    record's size; a violation raises ``ValueError`` naming the image and segment. Segment ids
    are kept when valid and unique, otherwise renumbered.
    """
    json_path, png_dir = Path(json_path), Path(png_dir)
    images, annotations = [], []
    for rec in progress_bar(rs.records, len(rs.records), "write panoptic", progress):
        ids = np.zeros((rec.height, rec.width), dtype=np.int64)
        infos = []
        for seg, sid in zip(rec.segments, _segment_ids(rec)):
            m = rle_decode(seg.mask).astype(bool)
            if m.shape != ids.shape:
                raise ValueError(
                    f"image {rec.image_id} segment {seg.id}: mask is {m.shape[::-1]}, "
                    f"image is {rec.width}x{rec.height}"
                )
            if (ids[m] != 0).any():
                raise ValueError(
                    f"image {rec.image_id} segment {seg.id}: overlaps another segment "
                    "(panoptic segments must be disjoint)"
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
        buf = io.BytesIO()
        Image.fromarray(id_to_rgb(ids)).save(buf, format="PNG")
        atomic_write_bytes(png_dir / png_name, buf.getvalue())
        images.append(
            {"id": rec.image_id, "file_name": rec.file_name, "width": rec.width, "height": rec.height}
        )
        annotations.append({"image_id": rec.image_id, "file_name": png_name, "segments_info": infos})
    categories = [
        {"id": c.id, "name": c.name, "supercategory": c.supercategory, "isthing": int(c.isthing)}
        for c in rs.categories
    ]
    atomic_write_json(json_path, {"images": images, "annotations": annotations, "categories": categories})
