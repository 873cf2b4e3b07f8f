"""Argument helpers shared by the command modules.

Bounded values are argparse ``type=`` functions (:func:`positive_int`, :func:`non_negative_int`,
:func:`int_at_least`, :func:`unit_float`, :func:`non_empty_path`): a bad value ends the command
with argparse's usage error (exit 2) naming the flag, e.g. ``argument --limit: must be >= 0, got -1``.
"""

from __future__ import annotations

import argparse
import math
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from omniseg.data.errors import BadRecordError, BadRecords
from omniseg.errors import UsageError, UserError

if TYPE_CHECKING:  # annotations only: every command imports this module, numpy is not needed to parse flags
    import numpy as np

    from omniseg.data.records import ImageRecord, RecordSet


def add_bad_record_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--on-bad-record",
        choices=("error", "skip"),
        default="error",
        help="stop with an error naming the file and record (default), or skip bad records and report counts",
    )


def bad_records(args: argparse.Namespace) -> BadRecords:
    return BadRecords(policy=args.on_bad_record)


def report_skips(bad: BadRecords) -> None:
    if bad.total:
        print(bad.summary())


# ----------------------------------------------------------------------------- bounded numbers


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer ``>= minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    parse.__name__ = f"int_at_least_{minimum}"
    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)


def unit_float(text: str) -> float:
    """An argparse type: a finite number in [0, 1] (scores, thresholds); rejects NaN."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1], got {text!r}")
    return value


def _bounded_float(text: str, ok, bound: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and ok(value)):
        raise argparse.ArgumentTypeError(f"must be a number {bound}, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a finite number > 0 (sizes, time limits)."""
    return _bounded_float(text, lambda v: v > 0, "> 0")


def non_negative_float(text: str) -> float:
    """An argparse type: a finite number >= 0 (margins)."""
    return _bounded_float(text, lambda v: v >= 0, ">= 0")


def non_empty_path(text: str) -> str:
    """An argparse type for output paths: ``--out ""`` would silently mean the current folder."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path (give a file or folder name)")
    return text


# ----------------------------------------------------------------------------- inputs and outputs


def _real(path: str | os.PathLike) -> Path:
    return Path(os.path.realpath(path))


def _input_paths(inp: str | os.PathLike) -> tuple[set[Path], set[Path]]:
    """(files, folders) an input stands for: itself, and for a dataset folder every entry of its
    layout (:data:`omniseg.data.load.SYNTH_LAYOUT`); the folders are the ones nothing may be written into."""
    from omniseg.data.load import SYNTH_LAYOUT

    p = _real(inp)
    if not p.is_dir():
        return {p}, set()
    layout = {_real(p / v) for v in SYNTH_LAYOUT.values()}
    return {p} | layout, {q for q in layout if q.is_dir()}


def check_output_not_input(outs: str | os.PathLike | list, inputs: list, flag: str = "--out") -> None:
    """A :class:`UsageError` when an output path (``outs``: one or a list, e.g. with sidecars) is
    one of the command's ``inputs`` (None entries ignored) or a file of an input dataset folder's
    layout, or lies inside its image / PNG folder. Symlinks and ``..`` are resolved; ``-`` (standard
    output) is never an input."""
    outs = outs if isinstance(outs, list) else [outs]
    for inp in inputs:
        if inp is None:
            continue
        files, folders = _input_paths(inp)
        for out in outs:
            if os.fspath(out) == "-":
                continue
            o = _real(out)
            if o in files or any(d in o.parents for d in folders):
                raise UsageError(f"{flag}: {out} is an input of this command ({inp})")


def check_out_folder(out: str) -> None:
    """A :class:`UserError` when an output folder exists as something else (a file, a FIFO)."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"{out}: exists and is not a folder")


def check_out_file(out: str, flag: str = "--out") -> None:
    """A :class:`UsageError` for an output file named with a trailing path separator (a folder name)."""
    if out != "-" and out.endswith(("/", os.sep)):
        raise UsageError(f"{flag}: {out} names a folder; give a file name")


def load_image_or_skip(path: str | os.PathLike, bad: BadRecords, record: str = "image") -> np.ndarray | None:
    """The image at ``path``, or None when it cannot be read and ``bad`` skips (counted).

    Under the "error" policy a missing / unreadable / non-image file ends the command with one
    line ``<path>: <record>: <reason>``.
    """
    from omniseg.data.images import load_image

    path = os.fspath(path)
    try:
        return load_image(path)
    except OSError as e:  # ImageReadError, FileNotFoundError, PermissionError, ...
        reason = str(e) if e.strerror is None else e.strerror
        bad.report(path, record, reason.removeprefix(f"{path}: "))
        return None


def load_record_image_or_skip(rs: RecordSet, record: ImageRecord, bad: BadRecords) -> np.ndarray | None:
    """The image of a dataset record, checked against it (inside the image root, the declared size:
    :func:`omniseg.data.images.load_record_image`), or None when ``bad`` skips it (counted)."""
    from omniseg.data.images import load_record_image

    path = rs.image_path(record)
    try:
        return load_record_image(rs, record)
    except BadRecordError as e:
        bad.report(e.file, e.record, e.reason)
    except OSError as e:
        reason = str(e) if e.strerror is None else e.strerror
        bad.report(path, f"image {record.image_id!r}", reason.removeprefix(f"{path}: "))
    return None


_UNSAFE = re.compile(r"[^\w.-]+")


def unique_name(stem: str, suffix: str, taken: set[str], tag: object) -> str:
    """A file name ``<stem><suffix>`` not in ``taken`` (compared case-insensitively), then added to it.

    The stem is reduced to a plain name (no folders, no leading dots, at most 100 characters);
    on a collision ``_<tag>`` (e.g. the input's index), then ``_<tag>_2``, ... is appended, so
    two inputs never write the same output file.
    """
    stem = _UNSAFE.sub("_", stem).lstrip(".")[:100] or "image"
    name, k = f"{stem}{suffix}", 1
    while name.casefold() in taken:
        name = f"{stem}_{tag}{'' if k == 1 else f'_{k}'}{suffix}"
        k += 1
    taken.add(name.casefold())
    return name


@contextmanager
def removed_on_error(*folders: Path) -> Iterator[list[Path]]:
    """A list to append each output file to as it is written; if the block ends with an error
    or an interrupt, those files are removed, and so are the ``folders`` (deepest first) that did
    not exist before and are left empty: a run leaves all its outputs or none of them."""
    new_folders = [f for f in folders if not f.exists()]
    written: list[Path] = []
    try:
        yield written
    except BaseException:
        for f in reversed(written):
            f.unlink(missing_ok=True)
        for d in sorted(new_folders, key=lambda p: len(p.parts), reverse=True):
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()
        raise
