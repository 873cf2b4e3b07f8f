"""Shared parsing checks for the JSON / CSV readers: typed field access that raises
:class:`Invalid` with a reason (the reader turns it into a BadRecords report naming the file
and the record), opening input files without blocking on FIFOs / devices, JSON loading with
line/column errors, image file names confined to the image root, compressed-RLE validation, and a
streaming scanner for large JSON objects (:func:`scan_json_object`).

Field rules shared by every reader: ids are integers (not bools, not strings, not fractional
floats) within int64; flags such as ``iscrowd`` are 0 / 1 (int or bool); ``area`` is finite
and >= 0; coordinates and scores are finite numbers.
"""

from __future__ import annotations

import codecs
import functools
import json
import json.scanner
import math
import os
import re
import stat
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

import numpy as np
from tqdm import tqdm

from omniseg.data.errors import BadRecordError
from omniseg.errors import UserError

#: ids must fit a signed 64-bit integer (torch.long, numpy int64)
MAX_ID = 2**63 - 1


class Invalid(Exception):
    """Internal: the entry being parsed is invalid; the message is the reason."""


class NotRegularFileError(UserError, OSError):
    """An input path is a FIFO, socket or device: reading it could block forever, so it is refused."""


def file_kind(mode: int) -> str:
    """What a non-regular ``st_mode`` is, for messages ("a FIFO", "a socket", ...)."""
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(
    path: str | os.PathLike,
    mode: str = "rb",
    *,
    encoding: str | None = None,
    newline: str | None = None,
    what: str = "file",
    error: type[OSError] = NotRegularFileError,
) -> IO:
    """Open an existing regular file for reading without ever blocking.

    The file is opened with ``O_NONBLOCK`` (a FIFO without a writer would otherwise block the
    open) and checked with ``fstat`` on the open descriptor, so nothing can be swapped in
    between the check and the read.

    Raises:
        FileNotFoundError: no such file ("<path>: no such <what>").
        IsADirectoryError: ``path`` is a folder ("<path>: is a directory, not a <what>").
        error: (default :class:`NotRegularFileError`) a FIFO, socket or device.
        OSError: e.g. permission denied (the message names the file).
    """
    path = os.fspath(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such {what}") from None
    except IsADirectoryError:
        raise IsADirectoryError(f"{path}: is a directory, not a {what}") from None
    except OSError as e:  # e.g. ENXIO for a socket, EACCES
        try:
            mode = os.stat(path).st_mode
        except OSError:
            mode = stat.S_IFREG
        if not stat.S_ISREG(mode):
            raise error(f"{path}: not a regular file ({file_kind(mode)}); refusing to read it") from None
        raise type(e)(f"{path}: cannot open: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(f"{path}: is a directory, not a {what}")
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{path}: not a regular file ({file_kind(st.st_mode)}); refusing to read it")
        return os.fdopen(fd, mode, encoding=encoding, newline=newline)
    except BaseException:
        os.close(fd)
        raise


def parse_json(text: str | bytes) -> Any:
    """``json.loads`` whose every failure is :class:`Invalid` with a reason.

    Besides malformed JSON this covers integers longer than Python's 4300-digit limit
    (``ValueError``), nesting deeper than the recursion limit and undecodable bytes.
    """
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise Invalid(f"malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from e
    except UnicodeDecodeError as e:
        raise Invalid(f"not UTF-8 text (byte {e.start}): {e.reason}") from e
    except RecursionError as e:
        raise Invalid("malformed JSON: nested too deeply") from e
    except ValueError as e:  # "Exceeds the limit (4300 digits) for integer string conversion"
        limit = sys.get_int_max_str_digits()
        data = text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")
        long = re.search(rb"\d{%d,}" % (limit + 1), data)
        if long is None:
            raise Invalid(f"malformed JSON: {e}") from e
        line = long.string.count(b"\n", 0, long.start()) + 1
        raise Invalid(f"malformed JSON at line {line}: number with too many digits (more than {limit})") from e


def load_json_file(path: str | os.PathLike) -> Any:
    """Load a JSON file with errors that name the file (and line/column when malformed).

    Raises:
        FileNotFoundError: the file does not exist.
        IsADirectoryError: ``path`` is a folder.
        NotRegularFileError: ``path`` is a FIFO / socket / device (never read: it could block).
        BadRecordError: the file is empty or not valid JSON.
    """
    path = str(path)
    try:
        with open_regular(path, "r", encoding="utf-8-sig") as f:  # -sig: tolerate a byte-order mark
            text = f.read()
    except UnicodeDecodeError as e:
        raise BadRecordError(path, "file", f"not UTF-8 text (byte {e.start}): {e.reason}") from e
    if not text.strip():
        raise BadRecordError(path, "file", "empty file")
    try:
        return parse_json(text)
    except Invalid as e:
        raise BadRecordError(path, "file", str(e)) from e


def load_json_object(path: str | os.PathLike, required: tuple[str, ...]) -> dict:
    """:func:`load_json_file` for files whose top level is an object with the ``required`` keys.

    Raises:
        BadRecordError: not an object, or a required top-level key is missing (naming the file).
    """
    return check_json_object(path, load_json_file(path), required)


def check_json_object(path: str | os.PathLike, data: Any, required: tuple[str, ...]) -> dict:
    """``data`` if it is an object with the ``required`` keys (see :func:`load_json_object`)."""
    if not isinstance(data, dict):
        raise BadRecordError(str(path), "file", f"expected a JSON object, got {type(data).__name__}")
    missing = [k for k in required if k not in data]
    if missing:
        raise BadRecordError(str(path), "file", f"missing required top-level key(s) {missing}")
    return data


def progress_bar(it: Iterable, total: int | None, desc: str, progress: bool) -> Iterable:
    """A tqdm bar over ``it``, shown only when ``progress`` and stderr is a terminal."""
    return tqdm(it, total=total, desc=desc, disable=not progress or not sys.stderr.isatty(), leave=False)


def require(entry: Any, keys: tuple[str, ...], what: str) -> None:
    if not isinstance(entry, dict):
        raise Invalid(f"{what} must be a JSON object, got {type(entry).__name__}")
    missing = [k for k in keys if k not in entry]
    if missing:
        raise Invalid(f"missing required key(s) {missing}")


def short_repr(value: Any, limit: int = 60) -> str:
    """``repr`` cut to ``limit`` characters (hostile files hold huge values)."""
    r = repr(value)
    return r if len(r) <= limit else r[: limit - 3] + "..."


def record_name(kind: str, index: int, entry: Any, key: str = "id") -> str:
    """How messages name entry ``index`` of a list: ``annotation #3 (id=17)``."""
    value = entry.get(key) if isinstance(entry, dict) else None
    return f"{kind} #{index} ({key}={value if isinstance(value, (int, float)) else short_repr(value)})"


def as_int(value: Any, key: str) -> int:
    """An integer (an integral float such as ``3.0`` is accepted) within int64; bools and strings are not."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise Invalid(f"{key} must be an integer, got {short_repr(value)}")
    if abs(value) > MAX_ID:
        raise Invalid(f"{key} {short_repr(value)} is out of range (more than 64 bits)")
    return value


def as_image_id(value: Any) -> int | str:
    """Image ids are integers in COCO / LVIS; strings are accepted for COCO-style custom sets."""
    if isinstance(value, str) and value:
        return value
    return as_int(value, "image id")


def as_flag(value: Any, key: str) -> bool:
    """A 0 / 1 flag (``iscrowd``, ``isthing``): an int or a bool. ``"0"`` is an error, not True."""
    if isinstance(value, (bool, int)) and value in (0, 1):
        return bool(value)
    raise Invalid(f"{key} must be 0 or 1, got {short_repr(value)}")


def as_str(value: Any, key: str, *, nonempty: bool = False) -> str:
    """A JSON string (``nonempty``: with a non-blank character)."""
    if not isinstance(value, str) or (nonempty and not value.strip()):
        raise Invalid(f"{key} must be a {'non-empty ' if nonempty else ''}string, got {short_repr(value)}")
    return value


def number(value: Any, key: str) -> float:
    """A finite int or float (not a bool) as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Invalid(f"{key} must be a number, got {short_repr(value)}")
    try:
        v = float(value)
    except OverflowError:  # an integer beyond the float range
        v = math.inf
    if not math.isfinite(v):
        raise Invalid(f"{key} is non-finite ({short_repr(value)})")
    return v


def as_area(value: Any, key: str = "area") -> float:
    """A finite, non-negative area (a negative one would move the object to another size range)."""
    v = number(value, key)
    if v < 0:
        raise Invalid(f"{key} must be >= 0, got {short_repr(value)}")
    return v


def finite(values: Iterable[Any], what: str) -> list[float]:
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise Invalid(f"{what} must hold numbers, got {short_repr(v)}")
        try:
            f = float(v)
        except OverflowError:
            f = math.inf
        if not math.isfinite(f):
            raise Invalid(f"{what} has a non-finite coordinate ({short_repr(v)})")
        out.append(f)
    return out


@functools.lru_cache(maxsize=4096)
def _real_dir(path: str) -> str:
    return os.path.realpath(path)


def _resolve(root_real: str, name: str, cache: bool) -> str:
    """``os.path.realpath(root_real / name)``; folders are cached (one lstat per file, not per part)."""
    head, tail = os.path.split(name)
    if not cache or tail in ("", ".", ".."):
        return os.path.realpath(os.path.join(root_real, name))
    parent = _real_dir(os.path.join(root_real, head)) if head else root_real
    full = os.path.join(parent, tail)
    return os.path.realpath(full) if os.path.islink(full) else full


def confined_path(root: str | os.PathLike, name: str, *, cache: bool = False, key: str = "file_name") -> str:
    """``root / name`` after checking that it stays inside ``root``.

    ``..`` parts and symbolic links are resolved (as opening the file would) and the result
    must lie inside the resolved ``root``. With an empty ``root`` the name must not be absolute
    nor climb out of the working folder with ``..``. ``cache``: cache resolved folders (for
    readers checking many names at once). ``key`` names the field in messages.

    Raises:
        Invalid: absolute name, NUL character, or the name resolves outside ``root``.
    """
    if "\0" in name:
        raise Invalid(f"{key} {short_repr(name)} contains a NUL character")
    try:
        os.fsencode(name)
    except UnicodeError:  # e.g. a lone surrogate from a "\ud800" JSON escape
        raise Invalid(f"{key} {short_repr(name)} cannot be a file name (invalid Unicode)") from None
    if os.path.isabs(name):
        raise Invalid(f"{key} {short_repr(name)} is an absolute path; it must be relative to the image root")
    root = os.fspath(root)
    if not root:
        norm = os.path.normpath(name)
        if norm == ".." or norm.startswith(".." + os.sep):
            raise Invalid(f"{key} {short_repr(name)} points outside the image root")
        return name
    root_real = _real_dir(root) if cache else os.path.realpath(root)
    full = _resolve(root_real, name, cache)
    if not Path(full).is_relative_to(root_real):
        raise Invalid(f"{key} {short_repr(name)} resolves outside the image root {root} (to {full})")
    return os.path.join(root, name)


def image_file_name(value: Any, root: str | os.PathLike, key: str = "file_name") -> str:
    """A record's image file name: a non-empty string confined to ``root`` (see :func:`confined_path`)."""
    if not isinstance(value, str) or not value:
        raise Invalid(f"{key} must be a non-empty string, got {short_repr(value)}")
    confined_path(root, value, cache=True, key=key)
    return value


def compressed_counts(counts: str) -> np.ndarray:
    """Run lengths of a COCO compressed RLE string (inverse of pycocotools' ``rleToString``).

    Format (pycocotools ``maskApi.c``): each run is a little-endian sequence of 5-bit groups,
    one char per group (``chr(48 + bits)``, bit 0x20 = "more groups follow", bit 0x10 of the last
    group = sign); from the fourth run on the stored value is the delta to the run two before.
    Checked here because pycocotools decodes a string whose runs do not add up to h*w silently.
    """
    c = np.frombuffer(counts.encode("ascii"), np.uint8).astype(np.int64) - 48
    if c.size == 0:
        return c
    if c.min() < 0 or c.max() > 63:
        raise Invalid("compressed RLE counts contain characters outside '0'..'o'")
    more = (c & 0x20) != 0
    if more[-1]:
        raise Invalid("compressed RLE counts end in the middle of a number")
    ends = np.flatnonzero(~more)
    starts = np.concatenate([[0], ends[:-1] + 1])
    k = np.arange(c.size) - np.repeat(starts, ends - starts + 1)  # group index within its number
    if k.max() > 11:  # > 60 bits: no real run length; would overflow int64 below
        raise Invalid("compressed RLE counts hold a number longer than 12 characters")
    vals = np.add.reduceat((c & 0x1F) << (5 * k), starts)
    neg = (c[ends] & 0x10) != 0
    vals[neg] |= -1 << (5 * (k[ends][neg] + 1))  # sign-extend
    vals[3::2] += np.cumsum(vals[1::2])[:-1][: vals[3::2].size]
    vals[4::2] += np.cumsum(vals[2::2])[:-1][: vals[4::2].size]
    return vals


# ----------------------------------------------------------------------------- streaming JSON


class NotStreamable(Exception):
    """Internal: the file is not a plain JSON object the streaming scanner can read (malformed,
    not UTF-8, duplicate top-level keys, ...). The caller then reads it with :func:`load_json_file`,
    which reports exactly what is wrong."""


#: marks a top-level key whose array was handed to a consumer instead of being kept
STREAMED = object()
_WS = re.compile(r"[ \t\n\r]*")  # JSON whitespace (as json.decoder.WHITESPACE)
#: "}" "," "{" between two object elements of an array (a real boundary unless inside a string
#: or nested value; a wrong guess makes the chunk fail to parse, never parse differently)
_BOUNDARY = re.compile(r"\}[ \t\n\r]*,[ \t\n\r]*\{")
_SCAN = json.scanner.make_scanner(json.JSONDecoder())  # the C scanner json.loads uses
_BLOCK = 1 << 23  # characters read at a time
_CHUNK = 1 << 20  # characters of array elements parsed per json.loads call
_BATCH = 8192  # elements per consumer call when scanning one element at a time


class _Text:
    """The UTF-8 text of an open binary file, decoded block by block; ``buf[pos:]`` is unread."""

    def __init__(self, f: IO[bytes]):
        self.f, self.buf, self.pos, self.eof = f, "", 0, False
        self.dec = codecs.getincrementaldecoder("utf-8-sig")()  # -sig: as load_json_file

    def more(self, at_least: int = _BLOCK) -> bool:
        """Append at least ``at_least`` more characters (fewer at the end); False at EOF."""
        if self.eof:
            return False
        parts, got = [], 0
        while got < at_least:
            data = self.f.read(max(at_least - got, _BLOCK))
            try:
                text = self.dec.decode(data, final=not data)
            except UnicodeDecodeError:
                raise NotStreamable from None
            parts.append(text)
            got += len(text)
            if not data:
                self.eof = True
                break
        self.buf = self.buf[self.pos:] + "".join(parts)
        self.pos = 0
        return True

    def peek(self) -> str:
        """The next non-whitespace character ("" at the end of the file); skips to it."""
        while True:
            self.pos = _WS.match(self.buf, self.pos).end()  # type: ignore[union-attr]
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self.more():
                return ""

    def value(self) -> Any:
        """Parse the JSON value at ``pos`` (reading more while it may continue past the buffer)."""
        while True:
            try:
                obj, end = _SCAN(self.buf, self.pos)
                if end < len(self.buf) or self.eof:  # a number at the buffer end may go on
                    self.pos = end
                    return obj
            except (StopIteration, ValueError, RecursionError):
                if self.eof:
                    raise NotStreamable from None
            if not self.more(max(len(self.buf) - self.pos, _BLOCK)):  # doubling: linear in all
                raise NotStreamable

    def array(self, consume: Callable[[list], None]) -> None:
        """Parse the array at ``pos`` (its "[") and hand its elements to ``consume`` in order,
        a list at a time: object elements are cut at ``}, {`` boundaries and parsed ~1 MB per
        ``json.loads``; where that fails (a cut inside a string, non-object elements) the
        elements are scanned one by one."""
        self.pos += 1
        if self.peek() == "]":
            self.pos += 1
            return
        while True:
            if len(self.buf) - self.pos < 2 * _CHUNK:
                self.more()
            end = min(len(self.buf), self.pos + _CHUNK)
            k, m = end, None
            for _ in range(64):  # the last boundary before ``end``
                k = self.buf.rfind("}", self.pos, k)
                if k < 0:
                    break
                m = _BOUNDARY.match(self.buf, k)
                if m:
                    break
            if m is not None:
                try:
                    rows = json.loads("[" + self.buf[self.pos:k + 1] + "]")
                except (ValueError, RecursionError):
                    rows = None
                if rows is not None:
                    consume(rows)
                    self.pos = m.end() - 1
                    continue
            if self._one_by_one(consume, end):
                return

    def _one_by_one(self, consume: Callable[[list], None], until: int) -> bool:
        """Scan elements singly from ``pos`` (an element start) past ``until``; True at the array's end."""
        rows: list = []
        while True:
            rows.append(self.value())
            c = self.peek()
            self.pos += 1
            if c == "]":
                consume(rows)
                return True
            if c != ",":
                raise NotStreamable
            self.peek()
            if self.pos > until or len(rows) >= _BATCH:
                consume(rows)
                return False


def scan_json_object(path: str | os.PathLike, stream: dict[str, Callable[[list], None]]) -> dict:
    """Read a JSON object file without holding the arrays named in ``stream``.

    The top-level object is read in blocks; the value of each key in ``stream`` that is an
    array is passed, element lists in file order, to its consumer and recorded as
    :data:`STREAMED` (other keys, and stream keys whose value is not an array, keep their
    value). Values are those ``json.loads`` gives (same C scanner).

    Raises:
        FileNotFoundError / IsADirectoryError / NotRegularFileError / OSError: as
            :func:`open_regular`.
        NotStreamable: anything :func:`load_json_file` would reject or read differently (bad
            UTF-8 or JSON, not an object, duplicate top-level keys, trailing data): call that.
    """
    with open_regular(path, "rb") as f:
        t = _Text(f)
        if t.peek() != "{":
            raise NotStreamable
        t.pos += 1
        out: dict = {}
        c = t.peek()
        if c == "}":
            t.pos += 1
        while c != "}":
            if c != '"':
                raise NotStreamable
            key = t.value()
            if key in out:  # json keeps the last value: leave that to the ordinary reader
                raise NotStreamable
            if t.peek() != ":":
                raise NotStreamable
            t.pos += 1
            if key in stream and t.peek() == "[":
                t.array(stream[key])
                out[key] = STREAMED
            else:
                t.peek()
                out[key] = t.value()
            c = t.peek()
            t.pos += 1
            if c == ",":
                c = t.peek()
                if c == "}":  # trailing comma
                    raise NotStreamable
            elif c != "}":
                raise NotStreamable
        if t.peek() != "":
            raise NotStreamable  # extra data after the object
    return out
