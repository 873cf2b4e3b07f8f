"""Open a dataset from a path, whatever real format it is in.

``load_dataset`` is what the CLI uses for every ``GT`` / ``DATA`` argument:

* a folder written by ``omniseg data synth`` (or laid out the same way): ``instances.json``
  (COCO) + ``captions.json`` + ``narratives.jsonl`` + ``panoptic.json``/``panoptic/``,
  images in ``images/``; every file present is merged into one RecordSet;
* a COCO / LVIS instances JSON, a COCO captions JSON, a COCO panoptic JSON (PNG folder
  next to it with the same stem) -- sniffed from the JSON keys;
* a folder of images (no annotations).

Where the images of an annotations file are (:func:`image_root_candidates`): the ``image_root``
given (``data.train_images=`` / ``data.val_images=`` on the command line), else the first of
these folders that holds the file's first image: the JSON's own folder, ``images/`` under it,
and for the COCO layout ``annotations/instances_<split>.json`` the folder ``<split>/`` next to
``annotations/`` (a dataset folder: its ``images/``, then the folder itself). When none holds
it, the first candidate is used and ``require_images=True`` names the missing image and every
folder tried.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NoReturn

from omniseg.data.errors import BadRecords
from omniseg.data.records import RecordSet
from omniseg.errors import UserError

SYNTH_LAYOUT = {
    "instances": "instances.json",
    "captions": "captions.json",
    "narratives": "narratives.jsonl",
    "panoptic": "panoptic.json",
    "panoptic_png": "panoptic",
    "images": "images",
}


class MissingImagesError(UserError, FileNotFoundError):
    """Image files of an annotations file are not where they were looked for; the message names the
    first missing image and every folder tried."""


class UnknownFormatError(UserError, ValueError):
    """The path is not a dataset this command can read; the message says what it is and what is needed."""


NEEDED = ("a dataset folder, a COCO instances / captions / panoptic JSON or an image folder")

#: annotation keys that tell the JSON kinds apart (COCO data format)
_KIND_KEYS = {"panoptic": ("segments_info",), "captions": ("caption",), "instances": ("bbox", "segmentation")}


def _sniff(data: Any, first_annotation: dict | None = None) -> tuple[str, str]:
    """``(kind, detail)`` of decoded JSON: kind is 'panoptic' | 'captions' | 'instances' |
    'results' | 'unknown'; ``detail`` says why a file is 'unknown'.

    The kind is decided from the keys of the first annotation (``segments_info`` / ``caption``
    / ``bbox`` or ``segmentation``), so an instances file without ``categories`` is still read
    as instances (and its reader names the missing key). Without annotations to look at, a
    ``categories`` list means instances and ``images`` alone means captions. When the
    annotations were streamed (``data["annotations"]`` is ``STREAMED``, see
    :func:`~omniseg.data.formats.coco.scan_coco_json`), ``first_annotation`` is the first object.
    """
    from omniseg.data.formats.validation import STREAMED

    if isinstance(data, list):
        return "results", "a JSON list"
    if not isinstance(data, dict):
        return "unknown", f"the top level is a JSON {type(data).__name__}, not an object"
    anns = data.get("annotations")
    if anns is STREAMED:
        anns = [first_annotation] if first_annotation is not None else []
    if anns is not None and not isinstance(anns, list):
        return "unknown", f"'annotations' is a {type(anns).__name__}, not a list"
    first = next((a for a in anns or [] if isinstance(a, dict)), None)
    if first is not None:
        for kind, keys in _KIND_KEYS.items():
            if any(k in first for k in keys):
                return kind, ""
        wanted = "; ".join(f"{' or '.join(map(repr, keys))} ({kind})" for kind, keys in _KIND_KEYS.items())
        return "unknown", f"the first annotation has none of the keys {wanted}"
    if "categories" in data:
        return "instances", ""
    if "images" in data and anns is not None:  # a captions file with no captions yet
        return "captions", ""
    keys = ", ".join(map(repr, list(data)[:8])) or "none"
    return "unknown", f"top-level keys {keys}; a dataset JSON has 'images' and 'annotations'"


def _sniff_json(path: Path) -> str:
    """'panoptic' | 'captions' | 'instances' | 'results' | 'unknown' from the JSON's shape (see :func:`_sniff`).

    Raises:
        BadRecordError (a ValueError): the file is empty, not UTF-8 or not valid JSON; the
            message names the file and the line / column.
    """
    from omniseg.data.formats.validation import load_json_file

    return _sniff(load_json_file(path))[0]


def _json_kind(path: Path) -> tuple[str, str, Any]:
    """``(kind, detail, scan)`` of a dataset JSON file (see :func:`_sniff`), parsed once.

    Raises:
        UnknownFormatError: ``path`` does not end in ``.json``.
        BadRecordError / OSError: the file cannot be read as JSON (naming it).
    """
    from omniseg.data.formats.coco import scan_coco_json

    if path.suffix.lower() != ".json":
        raise UnknownFormatError(
            f"{path}: not a dataset file ({path.suffix or 'no extension'}); expected {NEEDED}"
        )
    scan = scan_coco_json(path)
    first = scan.columns.first_dict if scan.columns is not None else None
    return (*_sniff(scan.data, first), scan)


def load_dataset_stats(path: str | os.PathLike, on_bad: BadRecords | None = None) -> dict[str, int | float]:
    """``dataset_stats(load_dataset(path))``; a COCO instances JSON is counted without making
    per-instance objects (:func:`~omniseg.data.formats.coco.coco_instances_stats`: same checks,
    same bad-record reports, a fraction of the memory)."""
    from omniseg.data.stats import dataset_stats

    p = Path(path)
    if p.is_file() and p.suffix.lower() == ".json":
        from omniseg.data.formats.coco import coco_instances_stats

        kind, _, scan = _json_kind(p)
        if kind == "instances":
            return coco_instances_stats(p, on_bad=on_bad, scan=scan)
        del scan
    return dataset_stats(load_dataset(path, on_bad=on_bad))


def merge_segments(into: RecordSet, panoptic: RecordSet) -> None:
    """Attach panoptic segments to the records of ``into`` with the same image id."""
    by_id = {r.image_id: r for r in into}
    for r in panoptic:
        if r.image_id in by_id:
            by_id[r.image_id].segments = r.segments
    known = {c.id for c in into.categories}
    into.categories += [c for c in panoptic.categories if c.id not in known]


def image_root_candidates(annotations: Path, in_folder: bool = False) -> list[Path]:
    """The folders an annotations file's images are looked for in, in order (module docstring).

    Args:
        annotations: the JSON file.
        in_folder: it is the ``instances.json`` of a dataset folder (``images/`` comes first).
    """
    here = annotations.parent
    if in_folder:
        return [here / SYNTH_LAYOUT["images"], here]
    out = [here, here / SYNTH_LAYOUT["images"]]
    kind, sep, split = annotations.stem.partition("_")
    if here.name == "annotations" and sep and split and kind in ("instances", "captions", "panoptic"):
        out.append(here.parent / split)
    return out


def _first_file_name(data: Any) -> str | None:
    images = data.get("images") if isinstance(data, dict) else None
    for img in images if isinstance(images, list) else []:
        if isinstance(img, dict) and isinstance(img.get("file_name"), str) and img["file_name"]:
            return img["file_name"]
    return None


def pick_image_root(candidates: list[Path], data: Any) -> str:
    """The first candidate folder holding the first image named in ``data`` (decoded COCO JSON);
    the first candidate when none does."""
    name = _first_file_name(data)
    if name is not None and not os.path.isabs(name):
        for root in candidates:
            if (root / name).is_file():
                return str(root)
    return str(candidates[0])


def check_images(rs: RecordSet, tried: list[str], source: str | os.PathLike) -> None:
    """Every record's image file must exist.

    Raises:
        MissingImagesError: one line naming ``source``, the first missing image, how many are
            missing and the folders ``tried``.
    """
    missing = [r for r in rs.records if not os.path.isfile(rs.image_path(r))]
    if missing:
        where = ", ".join(tried) if tried else "the current folder"
        more = f" (and {len(missing) - 1} more of {len(rs)})" if len(missing) > 1 else ""
        raise MissingImagesError(f"{source}: image {missing[0].file_name!r} (image id {missing[0].image_id}){more} "
                                 f"is not in {where}")


def load_dataset(
    path: str | os.PathLike, image_root: str | None = None, on_bad: BadRecords | None = None,
    require_images: bool = False,
) -> RecordSet:
    """Load ``path`` (see module docstring) into one RecordSet.

    A JSON file is parsed once (streaming, see :func:`~omniseg.data.formats.coco.scan_coco_json`)
    for both telling its kind and reading it as instances.

    Args:
        image_root: the images' folder (default: looked for, see the module docstring).
        require_images: check that every record's image file exists (:func:`check_images`).

    Raises:
        MissingImagesError: ``require_images`` and an image file is missing.
        FileNotFoundError: nothing at ``path``.
        IsADirectoryError: ``path`` is a folder named like a file (``x.json``).
        UnknownFormatError: ``path`` is a COCO results file, a JSON of another shape or a file
            of another type (the message says which and what is needed).
        BadRecordError / OSError: from the readers (naming the file and record).
    """
    from omniseg.data.formats.captions import read_coco_captions
    from omniseg.data.formats.coco import read_coco_instances, scan_coco_json
    from omniseg.data.formats.folder import read_image_folder
    from omniseg.data.formats.narratives import attach_narratives
    from omniseg.data.formats.panoptic import read_coco_panoptic

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if path.is_dir() and path.suffix.lower() in (".json", ".jsonl", ".csv"):
        raise IsADirectoryError(f"{path}: is a directory, not a {path.suffix} file")
    if path.is_dir():
        files = {k: path / v for k, v in SYNTH_LAYOUT.items()}
        if not files["instances"].exists():
            return read_image_folder(path, on_bad=on_bad)
        candidates = [Path(image_root)] if image_root else image_root_candidates(files["instances"], in_folder=True)
        scan = scan_coco_json(files["instances"])
        root = image_root or pick_image_root(candidates, scan.data)
        rs = read_coco_instances(files["instances"], image_root=root, on_bad=on_bad, scan=scan)
        del scan
        if files["captions"].exists():
            read_coco_captions(files["captions"], into=rs, on_bad=on_bad)
        if files["narratives"].exists():
            attach_narratives(rs, files["narratives"], on_bad=on_bad)
        if files["panoptic"].exists():
            merge_segments(rs, read_coco_panoptic(files["panoptic"], files["panoptic_png"], on_bad=on_bad))
        rs.name = path.name
    else:
        kind, detail, scan = _json_kind(path)
        candidates = [Path(image_root)] if image_root else image_root_candidates(path)
        root = image_root or pick_image_root(candidates, scan.data)
        if kind == "instances":
            rs = read_coco_instances(path, image_root=root, on_bad=on_bad, scan=scan)
        elif kind == "captions":
            del scan  # the other readers parse the file themselves
            rs = read_coco_captions(path, on_bad=on_bad, image_root=root)
        elif kind == "panoptic":
            del scan
            rs = read_coco_panoptic(path, path.with_suffix(""), image_root=root, on_bad=on_bad)
        else:
            _refuse(path, kind, detail)
    if require_images:
        check_images(rs, [str(c) for c in candidates], path)
    return rs


def _refuse(path: Path, kind: str, detail: str) -> NoReturn:
    """Raise the :class:`UnknownFormatError` for a JSON that is not a dataset."""
    if kind == "results":
        raise UnknownFormatError(
            f"{path}: a COCO results file (a JSON list of detections), not a dataset; this command "
            f"needs {NEEDED} (results are read by `omniseg eval GT --pred {path}`)"
        )
    raise UnknownFormatError(f"{path}: cannot tell which dataset format this is ({detail}); expected {NEEDED}")
