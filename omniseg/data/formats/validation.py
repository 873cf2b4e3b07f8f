"""Shared parsing checks for the JSON / CSV readers: typed field access that raises
:class:`Invalid` with a reason (the reader turns it into a BadRecords report naming the file
and the record), JSON loading with line/column errors, and compressed-RLE validation."""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Iterable
from typing import Any

import numpy as np
from tqdm import tqdm

from omniseg.data.errors import BadRecordError


class Invalid(Exception):
    """Internal: the entry being parsed is invalid; the message is the reason."""


def load_json_file(path: str | os.PathLike) -> Any:
    """Load a JSON file with errors that name the file (and line/column when malformed).

    Raises:
        FileNotFoundError: the file does not exist.
        BadRecordError: the file is empty or not valid JSON.
    """
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with open(path, encoding="utf-8-sig") as f:  # -sig: tolerate a byte-order mark
            text = f.read()
    except UnicodeDecodeError as e:
        raise BadRecordError(path, "file", f"not UTF-8 text (byte {e.start}): {e.reason}") from e
    if not text.strip():
        raise BadRecordError(path, "file", "empty file")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise BadRecordError(
            path, "file", f"malformed JSON at line {e.lineno} column {e.colno}: {e.msg}"
        ) from e


def load_json_object(path: str | os.PathLike, required: tuple[str, ...]) -> dict:
    """:func:`load_json_file` for files whose top level is an object with the ``required`` keys.

    Raises:
        BadRecordError: not an object, or a required top-level key is missing (naming the file).
    """
    data = load_json_file(path)
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


def as_int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise Invalid(f"{key} must be an integer, got {value!r}")
    return value


def as_image_id(value: Any) -> int | str:
    """Image ids are integers in COCO / LVIS; strings are accepted for COCO-style custom sets."""
    if isinstance(value, str) and value:
        return value
    return as_int(value, "image id")


def finite(values: Iterable[Any], what: str) -> list[float]:
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise Invalid(f"{what} must hold numbers, got {v!r}")
        if not math.isfinite(v):
            raise Invalid(f"{what} has a non-finite coordinate ({v})")
        out.append(float(v))
    return out


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
