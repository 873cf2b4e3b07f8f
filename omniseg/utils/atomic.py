"""Atomic file writing: write to a temporary file in the same folder, then rename.

An interrupted export never leaves a half-written file behind: readers see either the
old file or the complete new one (``os.replace`` is atomic on POSIX and Windows).
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


def _current_umask() -> int:
    """The process umask, read at call time (a program may change it after import).

    Linux reports it in /proc/self/status, which is safe with threads; elsewhere it is read with
    the classic set-and-restore, which briefly changes the process umask.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _target_mode(path: Path) -> int:
    """Permissions the written file gets: what ``open(path, "w")`` would give.

    An existing file keeps its permission bits; a new one gets ``0o666 & ~umask`` (mkstemp
    alone would leave it 0600).
    """
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return 0o666 & ~_current_umask()


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """Open a temporary sibling of ``path`` for writing; rename over ``path`` on success.

    On any exception the temporary file is removed and ``path`` is left untouched.
    """
    if "w" not in mode:
        raise ValueError("atomic_open is for writing ('w' or 'wb')")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _target_mode(path))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = None) -> None:
    with atomic_open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=indent, allow_nan=False)  # NaN is not JSON: callers map it to null
