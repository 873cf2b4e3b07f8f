"""A folder of images -> RecordSet (image records with sizes, no annotations).

Used for inference / auto-labeling on unlabeled images. Every regular file below ``root``
is a candidate; hidden files and folders (name starting with ".", e.g. ``.DS_Store``) are
ignored by convention. Files that are not readable images go through the bad-record policy.
Records are sorted by relative path (POSIX separators) and numbered 1..N in that order, so
the same folder always gives the same ids.
"""

from __future__ import annotations

import os
from pathlib import Path

from omniseg.data.errors import BadRecords
from omniseg.data.formats.validation import progress_bar
from omniseg.data.images import image_size, load_image
from omniseg.data.records import ImageRecord, RecordSet


def list_files(root: str | os.PathLike, recursive: bool = True) -> list[str]:
    """Relative POSIX paths of the non-hidden regular files below ``root``, sorted."""
    root = Path(root)
    out = []
    if recursive:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel = Path(dirpath).relative_to(root)
            out += [(rel / f).as_posix() for f in filenames if not f.startswith(".")]
    else:
        out = [p.name for p in root.iterdir() if p.is_file() and not p.name.startswith(".")]
    return sorted(out)


def read_image_folder(
    root: str | os.PathLike,
    recursive: bool = True,
    on_bad: BadRecords | None = None,
    *,
    verify: bool = False,
    progress: bool = True,
) -> RecordSet:
    """Image records for every image file below ``root`` (``image_root`` = root).

    Args:
        root: folder to scan.
        recursive: descend into sub-folders.
        on_bad: policy for files that are not images ("error" raises naming the file,
            "skip" counts them).
        verify: fully decode each image (catches truncated files; slow). By default only the
            header is read, for the size after EXIF orientation.
        progress: show a progress bar on a terminal.

    Raises:
        FileNotFoundError / NotADirectoryError: ``root`` is missing or not a folder.
        BadRecordError: (policy "error") a file is not a readable image.
    """
    root_s = os.fspath(root)
    if not os.path.exists(root_s):
        raise FileNotFoundError(f"{root_s}: no such image folder")
    if not os.path.isdir(root_s):
        raise NotADirectoryError(f"{root_s}: not a folder")
    bad = on_bad if on_bad is not None else BadRecords()
    files = list_files(root_s, recursive)
    records = []
    for rel in progress_bar(files, len(files), "images", progress):
        path = os.path.join(root_s, rel)
        try:
            if verify:
                h, w = load_image(path).shape[:2]
            else:
                w, h = image_size(path)
        except OSError as e:
            bad.report(root_s, rel, f"not a readable image ({e})")
            continue
        records.append(ImageRecord(image_id=len(records) + 1, file_name=rel, width=w, height=h))
    return RecordSet(records=records, image_root=root_s, name=Path(root_s).name)
