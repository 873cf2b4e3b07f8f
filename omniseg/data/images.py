"""Image loading: any common file -> H x W x 3 uint8 RGB, as the annotations see it.

Conventions:
    * EXIF orientation is applied (COCO / LVIS sizes and annotations refer to the upright
      image), both by :func:`load_image` and by :func:`image_size`.
    * Alpha (RGBA, LA, palette with transparency) is composited on black:
      ``rgb * alpha / 255``. Fully transparent pixels are therefore black whatever color they
      store, so two files that look the same give the same array.
    * 16-bit images ('I;16*' and 32-bit 'I', which Pillow uses for 16-bit PNGs) are scaled from
      [0, 65535] to [0, 255] (``round(v / 257)``), never clipped; 'I' values outside
      [0, 65535] are clipped to that range first.
    * Bilevel ('1'), grayscale ('L'), CMYK, YCbCr, LAB, HSV are converted by Pillow.
    * Only regular files are read: a FIFO, socket or device named ``x.png`` is refused at once
      (reading it could block forever).

:func:`load_record_image` is what every command loading a record's image goes through: the
file must lie inside the record set's image root, and its decoded size must be the size the
annotations declare.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from omniseg.data.errors import BadRecordError
from omniseg.data.formats.validation import Invalid, confined_path, open_regular
from omniseg.data.records import ImageRecord, RecordSet
from omniseg.errors import UserError

#: EXIF tag 0x0112 values that swap width and height (transpose / 90 degree rotations)
_SWAP_ORIENTATIONS = {5, 6, 7, 8}
_EXIF_ORIENTATION = 0x0112
_16BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}


class ImageReadError(UserError, OSError):
    """A file could not be read as an image; the message names the file."""


@contextmanager
def _open(path: str | os.PathLike) -> Iterator[Image.Image]:
    """The image at ``path``, opened without blocking (see :func:`open_regular`) and closed after."""
    path = os.fspath(path)
    try:
        f = open_regular(path, "rb", what="image file", error=ImageReadError)
    except IsADirectoryError:
        raise ImageReadError(f"{path}: is a directory, not an image") from None
    with f:
        try:
            im = Image.open(f)
        except UnidentifiedImageError as e:
            raise ImageReadError(f"{path}: not a recognized image file") from e
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise ImageReadError(f"{path}: cannot open image: {e}") from e
        with im:
            yield im


def _orientation(im: Image.Image) -> int:
    try:
        return int(im.getexif().get(_EXIF_ORIENTATION, 1) or 1)
    except Exception:  # malformed EXIF blocks: Pillow ignores them when decoding too
        return 1


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(width, height)`` of the upright image (EXIF orientation applied) without decoding pixels.

    Raises:
        FileNotFoundError: missing file.
        ImageReadError: not an image (message names the file).
    """
    with _open(path) as im:
        w, h = im.size
        if _orientation(im) in _SWAP_ORIENTATIONS:
            w, h = h, w
    return int(w), int(h)


def _alpha_on_black(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    out = (rgb.astype(np.uint32) * alpha[..., None].astype(np.uint32) + 127) // 255
    return out.astype(np.uint8)


def _to_rgb(im: Image.Image) -> np.ndarray:
    mode = im.mode
    if mode == "RGB":
        return np.asarray(im, dtype=np.uint8)
    if mode in _16BIT_MODES:
        a = np.asarray(im).astype(np.int64)
        a = np.clip(a, 0, 65535)
        gray = ((a + 128) // 257).astype(np.uint8)  # round(v / 257): 65535 -> 255, 257 -> 1
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        mode = im.mode
        if mode == "RGB":
            return np.asarray(im, dtype=np.uint8)
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = np.asarray(im.convert("RGBA"), dtype=np.uint8)
        return _alpha_on_black(rgba[..., :3], rgba[..., 3])
    if mode == "F":
        raise ValueError("floating-point ('F') images have no defined 8-bit range")
    return np.asarray(im.convert("RGB"), dtype=np.uint8)


def _load(path: str) -> tuple[np.ndarray, int]:
    """The upright RGB array and the file's EXIF orientation (1 = none)."""
    with _open(path) as im:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "Corrupt EXIF data" etc.
                orientation = _orientation(im)
                im.load()
                upright = ImageOps.exif_transpose(im)
            arr = _to_rgb(upright if upright is not None else im)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise ImageReadError(f"{path}: cannot decode image ({im.format} {im.mode}): {e}") from e
    return np.ascontiguousarray(arr), orientation


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as an H x W x 3 uint8 RGB array (see module notes for conversions).

    Raises:
        FileNotFoundError: missing file.
        ImageReadError: a folder, FIFO / socket / device (refused without blocking), not an
            image, truncated / corrupt data or an unsupported mode; the message names the file.
    """
    return _load(os.fspath(path))[0]


def load_record_image(rs: RecordSet, record: ImageRecord) -> np.ndarray:
    """The image of ``record`` (H x W x 3 uint8, EXIF orientation applied), checked against the record.

    * The file, ``rs.image_path(record)``, must resolve (``..`` and symbolic links followed)
      inside ``rs.image_root`` when the set has one; it is never opened otherwise. (An absolute
      ``file_name``, which no reader produces, is used as it is.)
    * Its upright size must be the ``width`` x ``height`` the annotations declare: boxes and
      masks drawn or trained at another scale would be silently wrong. When the declared size is
      the size *before* the EXIF rotation, the message says so (annotations made on the raw
      pixels of a rotated photo).

    Raises:
        FileNotFoundError / ImageReadError: missing or unreadable file (see :func:`load_image`).
        BadRecordError: the file lies outside the image root, or its size differs from the
            record's; the message names the image file, the record and both sizes.
    """
    path = rs.image_path(record)
    where = f"image {record.image_id!r}"
    if rs.image_root and not os.path.isabs(record.file_name):
        try:
            confined_path(rs.image_root, record.file_name)
        except Invalid as e:
            raise BadRecordError(path, where, str(e)) from None
    arr, orientation = _load(path)
    h, w = arr.shape[:2]
    if (w, h) != (record.width, record.height):
        reason = (f"the image is {w}x{h} (width x height, after EXIF orientation) but the annotations "
                  f"declare {record.width}x{record.height}")
        if orientation in _SWAP_ORIENTATIONS and (h, w) == (record.width, record.height):
            reason += (f"; the declared {record.width}x{record.height} matches the image before its EXIF "
                       f"rotation (orientation {orientation}): annotations must refer to the upright image")
        raise BadRecordError(path, where, reason)
    return arr
