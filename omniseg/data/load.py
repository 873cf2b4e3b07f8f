"""Open a dataset from a path, whatever real format it is in.

``load_dataset`` is what the CLI uses for every ``GT`` / ``DATA`` argument:

* a folder written by ``omniseg data synth`` (or laid out the same way): ``instances.json``
  (COCO) + ``captions.json`` + ``narratives.jsonl`` + ``panoptic.json``/``panoptic/``,
  images in ``images/``; every file present is merged into one RecordSet;
* a COCO / LVIS instances JSON, a COCO captions JSON, a COCO panoptic JSON (PNG folder
  next to it with the same stem) -- sniffed from the JSON keys;
* a folder of images (no annotations).
"""

from __future__ import annotations

import os
from pathlib import Path

from omniseg.data.errors import BadRecords
from omniseg.data.records import RecordSet

SYNTH_LAYOUT = {
    "instances": "instances.json",
    "captions": "captions.json",
    "narratives": "narratives.jsonl",
    "panoptic": "panoptic.json",
    "panoptic_png": "panoptic",
    "images": "images",
}


def _sniff_json(path: Path) -> str:
    """'panoptic' | 'captions' | 'instances' | 'results' | 'unknown' from the JSON's shape.

    Raises:
        BadRecordError (a ValueError): the file is empty, not UTF-8 or not valid JSON; the
            message names the file and the line / column.
    """
    from omniseg.data.formats.validation import load_json_file

    data = load_json_file(path)
    if isinstance(data, list):
        return "results"
    if not isinstance(data, dict):
        return "unknown"
    anns = data.get("annotations")
    first = anns[0] if isinstance(anns, list) and anns and isinstance(anns[0], dict) else {}
    if "segments_info" in first:
        return "panoptic"
    if "caption" in first:
        return "captions"
    if "categories" in data:
        return "instances"
    if "images" in data and isinstance(anns, list):  # a captions file with no captions yet
        return "captions"
    return "unknown"


def merge_segments(into: RecordSet, panoptic: RecordSet) -> None:
    """Attach panoptic segments to the records of ``into`` with the same image id."""
    by_id = {r.image_id: r for r in into}
    for r in panoptic:
        if r.image_id in by_id:
            by_id[r.image_id].segments = r.segments
    known = {c.id for c in into.categories}
    into.categories += [c for c in panoptic.categories if c.id not in known]


def load_dataset(path: str | os.PathLike, image_root: str | None = None, on_bad: BadRecords | None = None) -> RecordSet:
    """Load ``path`` (see module docstring) into one RecordSet."""
    from omniseg.data.formats.captions import read_coco_captions
    from omniseg.data.formats.coco import read_coco_instances
    from omniseg.data.formats.folder import read_image_folder
    from omniseg.data.formats.narratives import attach_narratives
    from omniseg.data.formats.panoptic import read_coco_panoptic

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if path.is_dir():
        files = {k: path / v for k, v in SYNTH_LAYOUT.items()}
        if not files["instances"].exists():
            return read_image_folder(path, on_bad=on_bad)
        root = image_root or str(files["images"])
        rs = read_coco_instances(files["instances"], image_root=root, on_bad=on_bad)
        if files["captions"].exists():
            read_coco_captions(files["captions"], into=rs, on_bad=on_bad)
        if files["narratives"].exists():
            attach_narratives(rs, files["narratives"], on_bad=on_bad)
        if files["panoptic"].exists():
            merge_segments(rs, read_coco_panoptic(files["panoptic"], files["panoptic_png"], on_bad=on_bad))
        rs.name = path.name
        return rs
    kind = _sniff_json(path) if path.suffix.lower() == ".json" else (path.suffix or "no extension")
    root = image_root or ""
    if kind == "instances":
        return read_coco_instances(path, image_root=root, on_bad=on_bad)
    if kind == "captions":
        return read_coco_captions(path, on_bad=on_bad, image_root=root)
    if kind == "panoptic":
        return read_coco_panoptic(path, path.with_suffix(""), image_root=root, on_bad=on_bad)
    raise ValueError(
        f"{path}: cannot tell which dataset format this is ({kind}); expected a dataset folder, "
        "a COCO instances / captions / panoptic JSON or an image folder. Predictions (a COCO "
        "results list) are read with --pred."
    )
