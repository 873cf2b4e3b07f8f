"""Fixtures for the data readers: tiny files in the exact public COCO / LVIS / captions formats."""

from __future__ import annotations

import copy
import json
import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest


def ref_encode_uncompressed(mask: np.ndarray) -> list[int]:
    """Slow reference encoder (inverse of :func:`ref_decode_uncompressed`); first run counts zeros."""
    flat = mask.T.reshape(-1).tolist()
    counts, value, run = [], 0, 0
    for v in flat:
        if v == value:
            run += 1
        else:
            counts.append(run)
            value, run = v, 1
    counts.append(run)
    return counts


# image 1: 10 wide x 8 high; image 2: 6 wide x 5 high
CROWD_MASK = np.zeros((5, 6), dtype=np.uint8)
CROWD_MASK[1:4, 2:5] = 1
CROWD_MASK[0, 0] = 1


def _coco() -> dict[str, Any]:
    return {
        "info": {"description": "tiny", "year": 2017},
        "licenses": [{"id": 1, "name": "x", "url": ""}],
        "images": [
            {"id": 1, "file_name": "a.jpg", "width": 10, "height": 8, "license": 1},
            {"id": 2, "file_name": "b.jpg", "width": 6, "height": 5, "license": 1},
        ],
        "annotations": [
            # polygon square, corners (1,1)-(4,4): 3 x 3 pixels
            {
                "id": 10,
                "image_id": 1,
                "category_id": 1,
                "bbox": [1, 1, 3, 3],
                "area": 9.0,
                "iscrowd": 0,
                "segmentation": [[1, 1, 4, 1, 4, 4, 1, 4]],
            },
            # two polygons merged into one mask
            {
                "id": 11,
                "image_id": 1,
                "category_id": 2,
                "bbox": [5, 1, 5, 6],
                "area": 12.0,
                "iscrowd": 0,
                "segmentation": [[5, 1, 7, 1, 7, 3, 5, 3], [8, 5, 10, 5, 10, 7, 8, 7]],
            },
            # crowd region as uncompressed RLE (as in real COCO files)
            {
                "id": 12,
                "image_id": 2,
                "category_id": 1,
                "bbox": [0, 0, 5, 4],
                "area": 10.0,
                "iscrowd": 1,
                "segmentation": {"size": [5, 6], "counts": ref_encode_uncompressed(CROWD_MASK)},
            },
            # box-only annotation
            {
                "id": 13,
                "image_id": 2,
                "category_id": 2,
                "bbox": [0.5, 0.5, 2, 1.5],
                "area": 3.0,
                "iscrowd": 0,
                "segmentation": [],
            },
        ],
        "categories": [
            {"id": 1, "name": "cat", "supercategory": "animal"},
            {"id": 2, "name": "dog", "supercategory": "animal"},
        ],
    }


def _lvis() -> dict[str, Any]:
    return {
        "info": {"description": "tiny lvis"},
        "licenses": [],
        "images": [
            {
                "id": 7,
                "coco_url": "http://images.cocodataset.org/train2017/000000000007.jpg",
                "width": 10,
                "height": 8,
                "neg_category_ids": [3],
                "not_exhaustive_category_ids": [1],
                "license": 1,
            },
            {
                "id": 8,
                "coco_url": "http://images.cocodataset.org/val2017/000000000008.jpg",
                "width": 6,
                "height": 5,
                "neg_category_ids": [],
                "not_exhaustive_category_ids": [],
            },
        ],
        "annotations": [
            {
                "id": 1,
                "image_id": 7,
                "category_id": 1,
                "bbox": [1, 1, 3, 3],
                "area": 9.0,
                "segmentation": [[1, 1, 4, 1, 4, 4, 1, 4]],
            },
            {
                "id": 2,
                "image_id": 8,
                "category_id": 2,
                "bbox": [1, 0, 2, 2],
                "area": 4.0,
                "segmentation": [[1, 0, 3, 0, 3, 2, 1, 2]],
            },
        ],
        "categories": [
            {
                "id": 1,
                "name": "aerosol_can",
                "synonyms": ["aerosol_can", "spray_can"],
                "frequency": "c",
                "synset": "aerosol.n.02",
                "def": "a dispenser",
                "image_count": 1,
                "instance_count": 1,
            },
            {
                "id": 2,
                "name": "air_conditioner",
                "synonyms": ["air_conditioner"],
                "frequency": "f",
                "synset": "air_conditioner.n.01",
                "def": "a machine",
                "image_count": 1,
                "instance_count": 1,
            },
            {
                "id": 3,
                "name": "airplane",
                "synonyms": ["airplane", "aeroplane"],
                "frequency": "r",
                "synset": "airplane.n.01",
                "def": "a plane",
                "image_count": 0,
                "instance_count": 0,
            },
        ],
    }


@pytest.fixture
def coco_dict() -> dict[str, Any]:
    """A fresh tiny COCO instances dict (edit freely)."""
    return copy.deepcopy(_coco())


@pytest.fixture
def lvis_dict() -> dict[str, Any]:
    """A fresh tiny LVIS v1 dict (no iscrowd, coco_url instead of file_name)."""
    return copy.deepcopy(_lvis())


@pytest.fixture
def captions_dict() -> dict[str, Any]:
    """A tiny COCO captions dict over the same two images as :func:`coco_dict`."""
    coco = _coco()
    return {
        "info": coco["info"],
        "licenses": coco["licenses"],
        "images": copy.deepcopy(coco["images"]),
        "annotations": [
            {"image_id": 1, "id": 100, "caption": "A cat next to a dog."},
            {"image_id": 1, "id": 101, "caption": "Two pets on a rug."},
            {"image_id": 2, "id": 102, "caption": "A cat crowd."},
        ],
    }


@pytest.fixture
def write_json(tmp_path: Path) -> Callable[..., Path]:
    """``write_json(obj, name="x.json") -> path`` inside tmp_path."""

    def _write(obj: Any, name: str = "annotations.json") -> Path:
        p = tmp_path / name
        p.write_text(json.dumps(obj))
        return p

    return _write


@pytest.fixture
def coco_mini() -> Path:
    """The shared coco-mini folder (env OMNISEG_COCO_MINI or ../shared/data/coco-mini); skips if absent."""
    env = os.environ.get("OMNISEG_COCO_MINI")
    root = Path(env) if env else (Path(__file__).parents[2] / "../shared/data/coco-mini").resolve()
    if not (root / "annotations" / "instances_train2017.json").is_file():
        pytest.skip(f"coco-mini not found at {root} (set OMNISEG_COCO_MINI to its folder)")
    return root


@pytest.fixture
def no_hang() -> Callable[..., Any]:
    """``with no_hang(5): ...`` fails with TimeoutError instead of hanging the suite (FIFO tests)."""

    @contextmanager
    def within(seconds: int = 5) -> Iterator[None]:
        def _raise(signum: int, frame: Any) -> None:
            raise TimeoutError(f"blocked for more than {seconds} s")

        old = signal.signal(signal.SIGALRM, _raise)
        signal.alarm(seconds)
        try:
            yield
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, old)

    return within
