"""A folder of images -> RecordSet (image records with sizes, no annotations).

Used for inference / auto-labeling on unlabeled images. Every file below ``root`` is a
candidate; hidden files and folders (name starting with ".", e.g. ``.DS_Store``) are ignored by
convention. FIFOs, sockets, devices and broken links are never opened (reading a FIFO would
block) and always skipped with a counted reason; files that are not readable images and
symbolic links resolving outside ``root`` go through the bad-record policy.
Records are sorted by relative path (POSIX separators) and numbered 1..N in that order, so
the same folder always gives the same ids.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from omniseg.data.errors import BadRecords
from omniseg.data.formats.validation import Invalid, confined_path, file_kind, progress_bar
from omniseg.data.images import image_size, load_image
from omniseg.data.records import ImageRecord, RecordSet


def _entries(root: Path, recursive: bool) -> list[str]:
    """Relative POSIX paths of the non-hidden non-folder entries below ``root``, sorted."""
    out = []
    if recursive:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel = Path(dirpath).relative_to(root)
            out += [(rel / f).as_posix() for f in filenames if not f.startswith(".")]
    else:
        out = [p.name for p in root.iterdir() if not p.is_dir() and not p.name.startswith(".")]
    return sorted(out)


def _not_regular(path: str) -> str | None:
    """Why ``path`` (symbolic links followed) is not a regular file, or None when it is one."""
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        return f"cannot stat ({e.strerror})" + (" (broken symbolic link)" if os.path.islink(path) else "")
    return None if stat.S_ISREG(mode) else f"not a regular file ({file_kind(mode)})"


def list_files(root: str | os.PathLike, recursive: bool = True) -> list[str]:
    """Relative POSIX paths of the non-hidden regular files below ``root``, sorted."""
    root = Path(root)
    return [f for f in _entries(root, recursive) if _not_regular(os.path.join(root, f)) is None]


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
        on_bad: policy for files that are not images and symbolic links resolving outside
            ``root`` ("error" raises naming the file, "skip" counts them). Entries that are not
            regular files (FIFOs, sockets, devices, broken links) are never opened and always
            skipped, counted in ``on_bad.skipped`` whatever its policy.
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
    files = _entries(Path(root_s), recursive)
    records = []
    for rel in progress_bar(files, len(files), "images", progress):
        path = os.path.join(root_s, rel)
        reason = _not_regular(path)
        if reason is not None:  # never opened (a FIFO would block): always a counted skip
            bad.skip(root_s, rel, reason)
            continue
        try:
            confined_path(root_s, rel, cache=True)
        except Invalid:
            bad.report(root_s, rel, f"symbolic link to {os.path.realpath(path)}, outside the image folder")
            continue
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
