"""Property-based fuzz of the COCO instances, COCO captions and Localized Narratives readers.

Each example starts from a small valid file in the public format and mutates it (wrong types,
deleted keys, NaN / inf, huge integers, nested garbage, path tricks) or writes random bytes.
The property, under the default "error" policy: the reader returns records that satisfy the
data model's invariants, or raises :class:`BadRecordError` (a :class:`UserError`) whose message
names the file -- never any other exception. Under the "skip" policy a record-level problem
never raises; only a file-level one (not JSON, a top-level key missing or of the wrong type) may.

Derandomized (the same examples on every run, so CI cannot flake) and without an example
database (nothing written to the checkout).
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from omniseg.data.errors import BadRecordError, BadRecords
from omniseg.data.formats.captions import read_coco_captions
from omniseg.data.formats.coco import read_coco_instances
from omniseg.data.formats.narratives import iter_narratives
from omniseg.data.records import RecordSet
from omniseg.errors import UserError

FUZZ = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

#: records naming the whole file or a top-level key: the only errors the skip policy may raise
FILE_LEVEL = {"file", "images", "annotations", "categories"}

IMAGES = [
    {"id": 1, "file_name": "a.jpg", "width": 10, "height": 8},
    {"id": 2, "file_name": "sub/b.jpg", "width": 6, "height": 5},
]
COCO = {
    "images": IMAGES,
    "annotations": [
        {"id": 10, "image_id": 1, "category_id": 1, "bbox": [1, 1, 3, 3], "area": 9.0, "iscrowd": 0,
         "segmentation": [[1, 1, 4, 1, 4, 4, 1, 4]]},
        {"id": 11, "image_id": 2, "category_id": 2, "bbox": [0, 0, 5, 4], "area": 10, "iscrowd": 1,
         "segmentation": {"size": [5, 6], "counts": [0, 5, 25]}},
        {"id": 12, "image_id": 2, "category_id": 1, "bbox": [0.5, 0.5, 2, 1.5], "segmentation": []},
    ],
    "categories": [{"id": 1, "name": "cat", "supercategory": "animal"}, {"id": 2, "name": "dog"}],
}
CAPTIONS = {
    "images": IMAGES,
    "annotations": [
        {"id": 100, "image_id": 1, "caption": "A cat."},
        {"id": 101, "image_id": 2, "caption": "A dog on a rug."},
    ],
}
NARRATIVE = {
    "dataset_id": "mscoco_val2017", "image_id": "137576", "annotator_id": 93, "caption": "Cows.",
    "timed_caption": [{"utterance": "Cows", "start_time": 0.0, "end_time": 0.4}],
    "traces": [[{"x": 0.2, "y": -0.05, "t": 0.02}, {"x": 1.01, "y": 0.5, "t": 0.06}]],
    "voice_recording": "x.ogg",
}

# values chosen to hit every type / range check, then arbitrary JSON
SPECIAL = st.sampled_from([
    0, 1, -1, 2, "0", "1", "", "x", True, False, None, 0.5, -0.0, 1e308, -1e308, 2**63, -(2**63) - 1, 10**400,
    math.nan, math.inf, -math.inf, [], {}, [1, 2, 3, 4], [1, 1, 0, 0], [[1, 1, 4, 1, 4, 4]],
    {"size": [8, 10], "counts": "04"}, {"size": [8, 10], "counts": [80]}, "../../../../etc/passwd",
    "/etc/passwd", "a/../../x.jpg", "nul\x00.jpg", "\ud800",
])
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
)
JSON = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=10,
)
VALUES = st.one_of(SPECIAL, SPECIAL, JSON)
#: file names that must never reach the file system as given (and two that may)
PATH_TRICKS = st.sampled_from([
    "../../../../etc/passwd", "/etc/passwd", "a/../../x.jpg", "..", ".", "nul\x00.jpg", "\ud800.jpg", "",
    "sub/../../fuzz.json", "sub/../a.jpg", "http://h/../../x.jpg",
])


def _value(key: Any, data: st.DataObject) -> Any:
    """A replacement value for ``key``: path tricks for file names half of the time, else anything."""
    if key in ("file_name", "coco_url") and data.draw(st.booleans()):
        return data.draw(PATH_TRICKS)
    return copy.deepcopy(data.draw(VALUES))  # SPECIAL holds shared lists / dicts


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path (tuple of keys / indices) into a JSON value below the root, parents first."""
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, prefix + (i,))
    return out


def _keys(node: Any) -> set[str]:
    """Every object key used anywhere in a JSON value (the field vocabulary of a format)."""
    if isinstance(node, dict):
        return set(node).union(*(_keys(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_keys(v) for v in node))
    return set()


def _mutate(doc: Any, data: st.DataObject, max_ops: int = 4) -> Any:
    """Apply 1..max_ops random edits.

    "set" (the most frequent) gives one object one of its own fields, or an optional field of
    the format (LVIS / pseudo-label extras, keys of other objects), with a value of any type;
    "replace" / "delete" hit any node.
    """
    if data.draw(st.integers(0, 29)) == 0:  # rarely: a document of another shape altogether
        return copy.deepcopy(data.draw(VALUES))
    extras = sorted(_keys(doc) | {"coco_url", "score", "box_quality", "isthing", "synonyms", "neg_category_ids"})
    doc = copy.deepcopy(doc)
    for _ in range(data.draw(st.sampled_from([1, 1, 1, 2, max_ops]))):  # mostly one edit: the rest stays valid
        paths = _paths(doc)
        if not paths:
            break
        op = data.draw(st.sampled_from(["set", "set", "replace", "delete"]))
        if op == "set":
            objects = [p for p in [(), *paths] if isinstance(_get(doc, p), dict)]
            if not objects:
                continue
            obj = _get(doc, data.draw(st.sampled_from(objects)))
            own = sorted(obj) if obj and data.draw(st.integers(0, 3)) else extras
            key = data.draw(st.sampled_from(own))
            obj[key] = _value(key, data)
            continue
        path = data.draw(st.sampled_from(paths))
        parent = _get(doc, path[:-1])
        if op == "replace":
            parent[path[-1]] = _value(path[-1], data)
        else:
            del parent[path[-1]]
    return doc


def _get(doc: Any, path: tuple) -> Any:
    for key in path:
        doc = doc[key]
    return doc


def _dump(doc: Any) -> bytes:
    """JSON text as Python writes it (NaN / Infinity included); lone surrogates kept as escapes."""
    return json.dumps(doc, allow_nan=True).encode("utf-8")


def _check_error(e: BaseException, path: Path) -> None:
    assert isinstance(e, BadRecordError) and isinstance(e, UserError), repr(e)
    assert str(path) in str(e), str(e)


def _read_both(read: Callable[[BadRecords], Any], path: Path, check: Callable[[Any], None]) -> None:
    """The property under both policies (see module docstring)."""
    try:
        check(read(BadRecords("error")))
    except BadRecordError as e:
        _check_error(e, path)
    try:
        check(read(BadRecords("skip")))
    except BadRecordError as e:
        _check_error(e, path)
        assert e.record in FILE_LEVEL, f"skip policy raised for a record: {e}"


def _check_recordset(rs: RecordSet) -> None:
    """Invariants of what the COCO readers return."""
    cats = {c.id for c in rs.categories}
    for c in rs.categories:
        assert isinstance(c.id, int) and not isinstance(c.id, bool) and isinstance(c.name, str) and c.name
        assert isinstance(c.isthing, bool) and isinstance(c.supercategory, str)
    for r in rs.records:
        assert isinstance(r.image_id, (int, str)) and not isinstance(r.image_id, bool)
        assert isinstance(r.width, int) and isinstance(r.height, int) and r.width > 0 and r.height > 0
        assert isinstance(r.file_name, str) and r.file_name and not os.path.isabs(r.file_name)
        assert b"\x00" not in os.fsencode(r.file_name)  # a name the file system can take
        assert not os.path.normpath(r.file_name).startswith("..")
        assert all(isinstance(c, str) and c.strip() for c in r.captions)
        for i in r.instances:
            assert i.category_id in cats and isinstance(i.is_crowd, bool)
            assert isinstance(i.id, int) and not isinstance(i.id, bool)
            assert i.area is None or (math.isfinite(i.area) and i.area >= 0)
            assert i.score is None or math.isfinite(i.score)
            x0, y0, x1, y1 = i.box
            assert all(isinstance(v, float) and math.isfinite(v) for v in i.box)
            assert 0 <= x0 < x1 <= r.width and 0 <= y0 < y1 <= r.height
            assert i.mask is None or list(i.mask["size"]) == [r.height, r.width]


@pytest.fixture
def target(tmp_path: Path) -> Path:
    (tmp_path / "images" / "sub").mkdir(parents=True)
    return tmp_path / "fuzz.json"


@FUZZ
@given(data=st.data())
def test_coco_instances_fuzz(target: Path, data: st.DataObject) -> None:
    if data.draw(st.integers(0, 9)) == 0:
        target.write_bytes(data.draw(st.binary(max_size=64)))
    else:
        target.write_bytes(_dump(_mutate(COCO, data)))
    root = str(target.parent / "images")
    _read_both(lambda bad: read_coco_instances(target, root, on_bad=bad, progress=False), target, _check_recordset)


@FUZZ
@given(data=st.data())
def test_coco_captions_fuzz(target: Path, data: st.DataObject) -> None:
    if data.draw(st.integers(0, 9)) == 0:
        target.write_bytes(data.draw(st.binary(max_size=64)))
    else:
        target.write_bytes(_dump(_mutate(CAPTIONS, data)))
    root = str(target.parent / "images")
    _read_both(lambda bad: read_coco_captions(target, on_bad=bad, image_root=root, progress=False),
               target, _check_recordset)


def _check_narratives(items: list) -> None:
    for image_id, n in items:
        assert isinstance(image_id, str) and image_id
        assert isinstance(n.caption, str) and isinstance(n.dataset_id, str) and isinstance(n.voice_recording, str)
        for u in n.timed_caption:
            assert isinstance(u.utterance, str) and math.isfinite(u.start_time) and u.start_time <= u.end_time
        for p in (p for seg in n.traces for p in seg):
            assert all(isinstance(v, float) and math.isfinite(v) for v in (p.x, p.y, p.t))


@FUZZ
@given(data=st.data())
def test_narratives_fuzz(target: Path, data: st.DataObject) -> None:
    lines = []
    for kind in data.draw(st.lists(st.sampled_from(["valid", "mutated", "mutated", "bytes"]), min_size=1, max_size=5)):
        if kind == "bytes":
            lines.append(data.draw(st.binary(max_size=40)))
        else:
            lines.append(_dump(NARRATIVE if kind == "valid" else _mutate(NARRATIVE, data)))
    path = target.with_suffix(".jsonl")
    path.write_bytes(b"\n".join(lines) + b"\n")
    _read_both(lambda bad: list(iter_narratives(path, on_bad=bad, progress=False)), path, _check_narratives)


def test_fuzz_bases_are_valid(target: Path) -> None:
    """The unmutated files read without error (so the fuzz starts from valid input)."""
    target.write_bytes(_dump(COCO))
    rs = read_coco_instances(target, str(target.parent / "images"), progress=False)
    assert sum(len(r.instances) for r in rs) == 3
    _check_recordset(rs)
    target.write_bytes(_dump(CAPTIONS))
    assert sum(len(r.captions) for r in read_coco_captions(target, progress=False)) == 2
    target.write_bytes(_dump(NARRATIVE))
    assert len(list(iter_narratives(target, progress=False))) == 1
