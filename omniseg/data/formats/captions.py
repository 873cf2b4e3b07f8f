"""COCO captions files (``captions_train2017.json``) <-> ``ImageRecord.captions``.

Format: ``{"images": [{"id", "file_name", "width", "height", ...}],
"annotations": [{"id", "image_id", "caption"}]}`` (info / licenses optional).
Caption ids are not kept (records hold plain strings); they are renumbered 1..N on write.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omniseg.data.errors import BadRecordError, BadRecords
from omniseg.data.formats.coco import _read_images
from omniseg.data.formats.validation import (
    Invalid,
    as_image_id,
    as_int,
    as_str,
    load_json_object,
    progress_bar,
    record_name,
    require,
)
from omniseg.data.records import RecordSet
from omniseg.utils.atomic import atomic_write_json


def read_coco_captions(
    path: str | os.PathLike,
    into: RecordSet | None = None,
    on_bad: BadRecords | None = None,
    *,
    image_root: str = "",
    progress: bool = True,
) -> RecordSet:
    """Read COCO captions.

    Args:
        path: captions JSON.
        into: when given, captions are appended **in place** to its records with the same
            ``image_id`` and ``into`` is returned (the file's ``images`` list is then not
            needed). When None, records are created from the file's ``images``.
        on_bad: bad-record policy. Invalid entries: missing keys, caption ids that are not
            integers, duplicate caption ids, unknown image ids, captions that are not non-empty
            strings (and invalid images -- e.g. a ``file_name`` outside ``image_root`` -- when
            records are created from the file).
        image_root: ``image_root`` of the created RecordSet (ignored with ``into``).
        progress: show a progress bar on a terminal.

    Raises:
        FileNotFoundError: missing file.
        BadRecordError: empty / malformed file, missing top-level keys, or (policy "error") the
            first invalid entry, naming the file and the entry.
    """
    path = str(path)
    bad = on_bad if on_bad is not None else BadRecords()
    data = load_json_object(path, ("annotations",) if into is not None else ("images", "annotations"))
    if into is None:
        records = _read_images(data["images"], path, bad, set(), image_root)
        rs = RecordSet(records=list(records.values()), image_root=image_root, name=Path(path).stem)
    else:
        rs = into
        records = {r.image_id: r for r in into.records}
    anns = data["annotations"]
    if not isinstance(anns, list):
        raise BadRecordError(path, "annotations", "must be a list")
    seen: set[int] = set()
    for i, ann in progress_bar(enumerate(anns), len(anns), "captions", progress):
        try:
            require(ann, ("id", "image_id", "caption"), "caption annotation")
            cid = as_int(ann["id"], "id")
            if cid in seen:
                raise Invalid(f"duplicate caption id {cid}")
            iid = as_image_id(ann["image_id"])
            if iid not in records:
                raise Invalid(f"unknown image id {iid!r}")
            text = as_str(ann["caption"], "caption", nonempty=True)
        except Invalid as e:
            bad.report(path, record_name("caption", i, ann), str(e))
            continue
        seen.add(cid)
        records[iid].captions.append(text)
    return rs


def to_coco_captions_dict(rs: RecordSet) -> dict[str, Any]:
    """RecordSet -> COCO captions dict: every image, one annotation per caption (ids 1..N)."""
    images, annotations = [], []
    for r in rs.records:
        images.append({"id": r.image_id, "file_name": r.file_name, "width": r.width, "height": r.height})
        for text in r.captions:
            annotations.append({"image_id": r.image_id, "id": len(annotations) + 1, "caption": text})
    return {"info": {"description": rs.name}, "licenses": [], "images": images, "annotations": annotations}


def write_coco_captions(path: str | os.PathLike, rs: RecordSet) -> None:
    """Write :func:`to_coco_captions_dict` atomically."""
    atomic_write_json(path, to_coco_captions_dict(rs))
