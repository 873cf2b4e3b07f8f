"""Atomic file and folder writing: write to a temporary sibling, then rename.

An interrupted export never leaves a half-written file behind: readers see either the old
file or the complete new one (``os.replace`` is atomic on POSIX and Windows). A multi-file
export (the PNG folder of COCO panoptic) is staged the same way with :func:`atomic_dir`.

Targets:

* ``-`` is standard output (:func:`atomic_open` only; commands' ``--out -``). A stream cannot be
  replaced atomically: an error midway leaves the output written so far.
* A symlink is written *through*: the file it points to is replaced atomically and the link is
  kept (what ``open(path, "w")`` would change).
* An existing target that is not a regular file (a directory, FIFO, device, socket) is refused
  with a :class:`~omniseg.errors.UserError` naming it, as is an empty path; it is never replaced.
* Errors of the temporary file (read-only folder, disk full, file-size limit) are raised as the
  same ``OSError`` naming the target, after the temporary file is removed.

Temporary files never outlive the process. They are named
``.NAME.omniseg-<pid>-<host>-<random>.tmp`` beside the target ``NAME`` (``<host>``: 8 hex digits
of a hash of the host name; a staged folder likewise; a previous folder being replaced is moved
aside as ``....old``). Every exit path that runs Python code removes them: exceptions,
Ctrl-C (``KeyboardInterrupt``) and SIGTERM (the CLI turns it into
:class:`~omniseg.errors.Terminated`). A process killed with SIGKILL (or a machine that crashed)
cannot clean up, so before the first write into a folder each process sweeps it: temporary
siblings whose writer pid is no longer alive are removed, and a moved-aside folder whose target
is missing (killed between the two renames of :func:`atomic_dir`) is renamed back. A re-run of an
interrupted command therefore leaves nothing behind. Only temporary files of this host are swept
(in a network folder, another host's process ids mean nothing here); the sweep runs once per
folder per process (large image folders are listed once, not once per file) and only on POSIX.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import hashlib
import io
import json
import os
import re
import secrets
import shutil
import socket
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from omniseg.errors import UserError

STDOUT = "-"
_TAG = "omniseg"
_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]
_TEMP_RE = re.compile(
    rf"^\.(?P<name>.+)\.{_TAG}-(?P<pid>\d+)-(?P<host>[0-9a-f]{{8}})-[a-z0-9_]+\.(?P<kind>tmp|old)$", re.DOTALL
)
#: errors of writing the data itself (no file name attached): reported with the target's name
_WRITE_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG, errno.EIO, errno.EROFS}
_swept: set[str] = set()


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


def _target_mode(path: Path, new: int = 0o666) -> int:
    """Permissions the written file (folder: ``new=0o777``) gets: what ``open(path, "w")`` would give.

    An existing target keeps its permission bits; a new one gets ``new & ~umask`` (the temporary
    file / folder is created 0600 / 0700).
    """
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return new & ~_current_umask()


def _resolve(path: str | os.PathLike, folder: bool) -> Path:
    """The path to replace: ``path`` itself, or the file / folder a symlink points to.

    Raises:
        UserError: empty path, or an existing target of the wrong kind (never replaced).
    """
    if os.fspath(path) == "":
        raise UserError("empty output path")
    target = Path(os.path.realpath(path)) if os.path.islink(path) else Path(path)
    try:
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        return target
    if folder and not stat.S_ISDIR(mode):
        raise UserError(f"{path}: exists and is not a folder")
    if not folder and not stat.S_ISREG(mode):
        raise UserError(f"{path}: exists and is not a regular file")
    return target


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):  # another user's process, or not a pid at all: leave it
        return True
    return True


def sweep_stale_temps(folder: str | os.PathLike) -> None:
    """Remove the temporary files / folders in ``folder`` left by writers that were killed.

    Done once per folder per process (POSIX only); see the module docstring.
    """
    key = os.path.abspath(folder)
    if os.name != "posix" or key in _swept:
        return
    _swept.add(key)
    try:
        entries = list(os.scandir(key))
    except OSError:
        return
    for entry in entries:
        m = _TEMP_RE.match(entry.name)
        if m is None or m["host"] != _HOST or _alive(int(m["pid"])):
            continue
        with contextlib.suppress(OSError):  # a concurrent sweep, or not ours to remove
            target = os.path.join(key, m["name"])
            if m["kind"] == "old" and not os.path.lexists(target):
                os.rename(entry.path, target)  # killed between moving it aside and renaming the new one in
            elif entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)


def _temp_prefix(target: Path) -> str:
    return f".{target.name}.{_TAG}-{os.getpid()}-{_HOST}-"


#: how a temporary file is opened: created here (O_EXCL), never through a symlink (as tempfile.mkstemp)
_TEMP_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)


def _create_temp(target: Path, made: list[str], folder: bool = False) -> int:
    """Create a new temporary sibling of ``target`` (a file opened for writing, mode 0600: its fd is returned; or
    with ``folder`` a folder, mode 0700: -1), named as the module docstring says.

    Its name is appended to ``made`` *before* it is created: an exception raised the instant after (SIGTERM turned
    into :class:`~omniseg.errors.Terminated` by the CLI's handler, Ctrl-C) still finds the name to remove. Names
    chosen by ``tempfile`` are only known once it returns, which left that instant uncovered."""
    while True:
        name = str(target.parent / f"{_temp_prefix(target)}{secrets.token_hex(6)}.tmp")
        made.append(name)
        try:
            if folder:
                os.mkdir(name, 0o700)
                return -1
            return os.open(name, _TEMP_FLAGS, 0o600)
        except FileExistsError:  # another writer of this process took the name: draw again
            made.pop()


def _naming(e: OSError, path: str | os.PathLike, target: Path) -> OSError | None:
    """``e`` re-made to name ``path`` instead of its temporary file / folder (None: leave ``e`` as is)."""
    if isinstance(e, UserError) or not e.errno:
        return None
    name = e.filename if isinstance(e.filename, str) else None
    marker = _temp_prefix(target)
    if name is not None and (name.startswith(marker) or os.sep + marker in name):
        rest = name[name.index(marker) + len(marker):]
        inside = rest[rest.index(os.sep):] if os.sep in rest else ""  # a file in a staged folder
        return OSError(e.errno, e.strerror, os.fspath(path) + inside)
    if name is None and e.errno in _WRITE_ERRNOS:
        return OSError(e.errno, e.strerror, os.fspath(path))
    return None


@contextlib.contextmanager
def _open_stdout(mode: str, **kwargs: Any) -> Iterator[IO]:
    """Standard output as a file to write (not closed afterwards), honouring ``encoding`` / ``newline``."""
    sys.stdout.flush()
    buf = getattr(sys.stdout, "buffer", None)
    if buf is None:  # a replaced sys.stdout without a byte layer
        yield sys.stdout
        sys.stdout.flush()
    elif "b" in mode:
        yield buf
        buf.flush()
    else:
        f = io.TextIOWrapper(buf, **kwargs)
        try:
            yield f
        finally:
            f.detach()  # flushes; sys.stdout keeps its buffer


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """Open a temporary sibling of ``path`` for writing; rename over ``path`` on success.

    On any exception the temporary file is removed and ``path`` is left untouched. ``-`` is
    standard output; a symlink is written through; see the module docstring.

    Raises:
        UserError: ``path`` is empty or exists and is not a regular file.
        OSError: creating / writing the temporary file failed (names ``path``).
    """
    if "w" not in mode:
        raise ValueError("atomic_open is for writing ('w' or 'wb')")
    if os.fspath(path) == STDOUT:
        with _open_stdout(mode, **kwargs) as f:
            yield f
        return
    target = _resolve(path, folder=False)
    target.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_temps(target.parent)
    made: list[str] = []
    try:
        fd = _create_temp(target, made)
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(made[-1], _target_mode(target))
        os.replace(made[-1], target)
    except BaseException as e:
        for tmp in made:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        named = _naming(e, path, target) if isinstance(e, OSError) else None
        if named is not None:
            raise named from e
        raise


def _check_replaceable(path: str | os.PathLike, target: Path, owned: tuple[str, ...]) -> None:
    """A :class:`UserError` naming the first entry of the existing folder ``target`` that is not a
    regular file matching one of the glob patterns ``owned`` (what the writer produces): such a
    folder holds the user's own files and is never swapped away."""
    try:
        entries = sorted(os.scandir(target), key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return
    for e in entries:
        if not (e.is_file(follow_symlinks=False) and any(fnmatch.fnmatch(e.name, p) for p in owned)):
            raise UserError(f"{path}: exists and holds files this command does not write (e.g. {e.name}); "
                            "move them or choose another output")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, owned: tuple[str, ...] | None = None) -> Iterator[Path]:
    """Yield an empty temporary sibling folder of ``path``; on success it replaces ``path`` as a whole.

    Fill the yielded folder with plain writes. On success the previous folder (if any) is moved
    aside, the new one renamed in, then the old one removed: readers see the old folder or the
    complete new one (for an instant between the two renames, none). On any exception the
    temporary folder is removed and ``path`` is left untouched. A symlink to a folder is
    written through.

    An existing folder is replaced only if it holds nothing but regular files matching the glob
    patterns ``owned`` (what this writer produces; checked before and after filling; None: files
    with the suffixes of those staged, checked before the swap), so unrelated files are never lost.

    Raises:
        UserError: ``path`` is empty or exists and is not a folder, or holds other files.
    """
    target = _resolve(path, folder=True)
    if owned is not None:
        _check_replaceable(path, target, owned)
    target.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_temps(target.parent)
    made: list[str] = []
    old: Path | None = None
    try:
        _create_temp(target, made, folder=True)
        staging = Path(made[-1])
        yield staging
        if owned is None:
            owned = tuple(sorted({f"*{Path(n).suffix}" if Path(n).suffix else n for n in os.listdir(staging)}))
        _check_replaceable(path, target, owned)
        os.chmod(staging, _target_mode(target, new=0o777))
        if target.exists():
            old = staging.with_suffix(".old")
            os.rename(target, old)
        os.rename(staging, target)
    except BaseException as e:
        if old is not None and not os.path.lexists(target):
            os.rename(old, target)  # put the previous folder back
            old = None
        for tmp in made:
            shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:  # interrupted right after the new folder went in
            shutil.rmtree(old, ignore_errors=True)
        named = _naming(e, path, target) if isinstance(e, OSError) else None
        if named is not None:
            raise named from e
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = None) -> None:
    with atomic_open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=indent, allow_nan=False)  # NaN is not JSON: callers map it to null
