"""COCO run-length encoding helpers (thin, typed wrappers over pycocotools).

Every mask stored in an :class:`~omniseg.data.records.Instance` is a compressed RLE dict
``{"size": [h, w], "counts": str}`` with ``counts`` as text so records serialize to JSON.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

RLE = dict[str, Any]


def _as_text(rle: RLE) -> RLE:
    counts = rle["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": counts}


def _as_bytes(rle: RLE) -> RLE:
    counts = rle["counts"]
    if isinstance(counts, str):
        counts = counts.encode("ascii")
    return {"size": list(rle["size"]), "counts": counts}


def rle_encode(mask: np.ndarray) -> RLE:
    """Encode a binary mask (H x W, any dtype; nonzero = foreground) as compressed RLE."""
    if mask.ndim != 2:
        raise ValueError(f"rle_encode expects an H x W mask, got shape {mask.shape}")
    return _as_text(mask_utils.encode(np.asfortranarray(mask.astype(np.uint8) > 0).astype(np.uint8)))


def rle_decode(rle: RLE) -> np.ndarray:
    """Decode a compressed (or uncompressed, list-of-counts) RLE to an H x W uint8 {0,1} mask."""
    return np.ascontiguousarray(mask_utils.decode(to_compressed(rle)))


def to_compressed(rle: RLE) -> RLE:
    """Accept compressed RLE (str or bytes counts) or uncompressed RLE (list counts).

    Returns compressed RLE with ``bytes`` counts, as pycocotools wants it.
    """
    if isinstance(rle.get("counts"), list):
        h, w = rle["size"]
        return mask_utils.frPyObjects(rle, int(h), int(w))
    return _as_bytes(rle)


def normalize_rle(rle: RLE) -> RLE:
    """Any RLE form -> compressed RLE with text counts (the form records store)."""
    return _as_text(to_compressed(rle))


def polygons_to_rle(polygons: Sequence[Sequence[float]], height: int, width: int) -> RLE:
    """COCO polygons ``[[x0, y0, x1, y1, ...], ...]`` -> one merged compressed RLE."""
    rles = mask_utils.frPyObjects([list(map(float, p)) for p in polygons], height, width)
    return _as_text(mask_utils.merge(rles))


def rle_area(rle: RLE) -> float:
    """Number of foreground pixels."""
    return float(mask_utils.area(to_compressed(rle)))


def rle_to_box(rle: RLE) -> tuple[float, float, float, float]:
    """Tight XYXY box of the foreground (pixel-edge convention: x1 = last column + 1)."""
    x, y, w, h = mask_utils.toBbox(to_compressed(rle)).tolist()
    return (x, y, x + w, y + h)


def rle_iou(a: Sequence[RLE], b: Sequence[RLE], crowd: Sequence[bool] | None = None) -> np.ndarray:
    """Pairwise mask IoU, len(a) x len(b). ``crowd[j]`` uses COCO's crowd IoU for b[j]."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    iscrowd = [int(c) for c in (crowd if crowd is not None else [False] * len(b))]
    return np.asarray(mask_utils.iou([to_compressed(r) for r in a], [to_compressed(r) for r in b], iscrowd))
