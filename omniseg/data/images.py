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
"""

from __future__ import annotations

import os
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from omniseg.errors import UserError

#: EXIF tag 0x0112 values that swap width and height (transpose / 90 degree rotations)
_SWAP_ORIENTATIONS = {5, 6, 7, 8}
_EXIF_ORIENTATION = 0x0112
_16BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}


class ImageReadError(UserError, OSError):
    """A file could not be read as an image; the message names the file."""


def _open(path: str | os.PathLike) -> Image.Image:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such image file")
    if os.path.isdir(path):
        raise ImageReadError(f"{path}: is a directory, not an image")
    try:
        return Image.open(path)
    except UnidentifiedImageError as e:
        raise ImageReadError(f"{path}: not a recognized image file") from e
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ImageReadError(f"{path}: cannot open image: {e}") from e


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


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as an H x W x 3 uint8 RGB array (see module notes for conversions).

    Raises:
        FileNotFoundError: missing file.
        ImageReadError: not an image, truncated / corrupt data or an unsupported mode; the
            message names the file.
    """
    path = os.fspath(path)
    with _open(path) as im:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "Corrupt EXIF data" etc.
                im.load()
                upright = ImageOps.exif_transpose(im)
            arr = _to_rgb(upright if upright is not None else im)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise ImageReadError(f"{path}: cannot decode image ({im.format} {im.mode}): {e}") from e
    return np.ascontiguousarray(arr)
