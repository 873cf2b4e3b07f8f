"""The columnar / streaming COCO reader against the slow, obvious per-record reader.

The reference below is the reader as it was before the fast path: json.load the file, then one
Python call chain per image and per annotation with a ``seen`` set for duplicate ids. Random
files mix valid rows with every kind of bad one (and rows the fast path hands to the slow one),
are written with categories last (as the official files) and read with tiny stream blocks, so
chunk boundaries fall everywhere. Records, skip counts, examples and error messages must agree.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest

from omniseg.data.errors import BadRecordError, BadRecords
from omniseg.data.formats import coco, validation
from omniseg.data.formats.coco_columns import duplicate_rows
from omniseg.data.formats.validation import (
    Invalid,
    NotStreamable,
    load_json_object,
    record_name,
    scan_json_object,
)
from omniseg.data.load import load_dataset, load_dataset_stats
from omniseg.data.records import RecordSet
from omniseg.data.stats import dataset_stats


def reference_read(path: Path, bad: BadRecords, image_root: str = "") -> RecordSet:
    """The per-record reader (pre-columns), built from the same field helpers."""
    p = str(path)
    data = load_json_object(p, ("images", "categories"))
    cats = {c.id: c for c in coco._read_categories(data["categories"], p, bad)}
    plain, coco._plain_images = coco._plain_images, lambda *a: None
    try:
        records = coco._read_images(data["images"], p, bad, set(cats), image_root)
    finally:
        coco._plain_images = plain
    anns = data.get("annotations", [])
    if not isinstance(anns, list):
        raise BadRecordError(p, "annotations", "must be a list")
    seen: set[int] = set()
    for i, ann in enumerate(anns):
        try:
            aid = coco._annotation_id(ann)
            if aid in seen:
                raise Invalid(f"duplicate annotation id {aid}")
            record, inst = coco._read_instance(ann, aid, records, cats, "coco")
        except Invalid as e:
            bad.report(p, record_name("annotation", i, ann), str(e))
            continue
        seen.add(aid)
        record.instances.append(inst)
    return RecordSet(records=list(records.values()), categories=list(cats.values()), name=path.stem)


@pytest.fixture
def tiny_blocks(monkeypatch):
    """Stream in blocks of a few dozen characters so every boundary case is hit."""
    monkeypatch.setattr(validation, "_BLOCK", 37)
    monkeypatch.setattr(validation, "_CHUNK", 160)
    monkeypatch.setattr(validation, "_BATCH", 3)


def _bad_value(rng: random.Random) -> object:
    return rng.choice([None, True, "7", 2.5, 3.0, [1], {}, 2**70, -(2**63), math.nan, math.inf, -1, 0])


def random_coco(rng: random.Random, n_img: int = 6, n_ann: int = 40) -> dict:
    cats = [{"id": c, "name": f"c{c}"} for c in (1, 2, 5)]
    images = [{"id": i, "file_name": f"{i}.jpg", "width": 20, "height": 10} for i in range(1, n_img + 1)]
    if rng.random() < 0.3:
        images[rng.randrange(n_img)][rng.choice(["id", "width", "file_name"])] = _bad_value(rng)
    if rng.random() < 0.2:
        images.append(dict(images[0], file_name="dup.jpg"))
    if rng.random() < 0.1:
        images[0]["file_name"] = "../up.jpg"
    anns = []
    for k in range(n_ann):
        w, h = rng.choice([3, 5.5, 0.25, 19]), rng.choice([2, 4.75, 9])
        x, y = rng.choice([0, 1, -0.5, -0.0, 2.25, 15, 16.5]), rng.choice([0, 1, 0.5, 5.5])
        a = {"id": rng.choice([k + 1, k + 1, rng.randint(1, 8)]), "image_id": rng.randint(1, n_img + 1),
             "category_id": rng.choice([1, 2, 5, 5, 3]), "bbox": [x, y, w, h], "area": float(w * h), "iscrowd": 0}
        r = rng.random()
        if r < 0.35:
            key = rng.choice(["id", "image_id", "category_id", "bbox", "area", "iscrowd", "score", "box_quality",
                              "segmentation"])
            a[key] = _bad_value(rng)
        elif r < 0.45:
            del a[rng.choice(["id", "image_id", "category_id", "bbox", "area", "iscrowd"])]
        elif r < 0.55:
            a.update(rng.choice([{"segmentation": []}, {"segmentation": [[1, 1, 4, 1, 4, 4]]}, {"score": 0.5},
                                 {"box_quality": "approximate"}, {"iscrowd": True}, {"iscrowd": 1},
                                 {"area": None}, {"area": 7}, {"image_id": "1"}, {"bbox": [1, 1, 2, 3]},
                                 {"box_quality": "rough"}, {"ignore": 1}]))
        elif r < 0.58:
            a = rng.choice([[1, 2], "x", 3, None])
        anns.append(a)
    return {"info": {}, "images": images, "annotations": anns, "categories": cats}


def _dump(d: dict, path: Path, rng: random.Random) -> Path:
    sep = rng.choice([(", ", ": "), (",", ":"), (" ,\n ", " :\t")])
    path.write_text(json.dumps(d, separators=sep, indent=rng.choice([None, None, 1])))
    return path


def _outcome(read, path: Path, policy: str):
    bad = BadRecords(policy)
    try:
        rs = read(path, bad)
    except BadRecordError as e:
        return ("error", str(e))
    return ("ok", rs.records, rs.categories, dict(bad.skipped), bad.examples)


def _fast(path: Path, bad: BadRecords) -> RecordSet:
    return coco.read_coco_instances(path, on_bad=bad, progress=False)


@pytest.mark.parametrize("seed", range(int(__import__("os").environ.get("COCO_SEEDS", 60))))
def test_random_files_match_reference(seed, tmp_path, tiny_blocks):
    rng = random.Random(seed)
    path = _dump(random_coco(rng, n_ann=rng.choice([0, 5, 40, 90])), tmp_path / "inst.json", rng)
    for policy in ("error", "skip"):
        assert _outcome(_fast, path, policy) == _outcome(reference_read, path, policy), policy
    ref_bad, bad = BadRecords("skip"), BadRecords("skip")
    assert coco.coco_instances_stats(path, on_bad=bad) == dataset_stats(reference_read(path, ref_bad))
    assert bad.skipped == ref_bad.skipped and bad.examples == ref_bad.examples


def test_all_valid_large_chunks_match_reference(tmp_path):
    rng = random.Random(7)
    d = random_coco(rng, n_img=50, n_ann=0)
    d["images"] = [im for im in d["images"] if isinstance(im.get("id"), int) and im["file_name"] == f"{im['id']}.jpg"]
    d["annotations"] = [{"id": k, "image_id": rng.randint(1, 50), "category_id": rng.choice([1, 2, 5]),
                         "bbox": [rng.uniform(0, 9), rng.uniform(0, 4), rng.uniform(0.1, 10), rng.uniform(0.1, 5)],
                         "area": 1.0, "iscrowd": rng.choice([0, 1])} for k in range(5000, 0, -1)]
    path = _dump(d, tmp_path / "big.json", rng)
    fast = _outcome(_fast, path, "error")
    assert fast[0] == "ok" and fast == _outcome(reference_read, path, "error")
    assert load_dataset(path).records == fast[1]
    assert load_dataset_stats(path) == dataset_stats(reference_read(path, BadRecords()))


def test_streamed_rows_failing_image_checks_are_read_again(tmp_path, tiny_blocks):
    """A plain row whose image is unknown / box is outside it fails only after the images are
    known (categories last): its message needs the row as parsed, so the file is scanned again."""
    d = {"images": [{"id": 1, "file_name": "1.jpg", "width": 20, "height": 10}], "categories": [{"id": 1, "name": "c"}]}
    d["annotations"] = [{"id": 1, "image_id": 99, "category_id": 1, "bbox": [1, 1, 2, 2]},
                        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [15, 1, 7, 2]},
                        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 2, 2]}]
    path = _dump({k: d[k] for k in ("images", "annotations", "categories")}, tmp_path / "i.json", random.Random(0))
    with pytest.raises(BadRecordError, match=r"annotation #0 \(id=1\): unknown image id 99"):
        coco.read_coco_instances(path, progress=False)
    bad = BadRecords("skip")
    rs = coco.read_coco_instances(path, on_bad=bad, progress=False)
    assert [i.id for r in rs for i in r.instances] == [1]  # id 1 free again: its first row was bad
    assert "bbox [15, 1, 7, 2] lies outside the 20x10 image by more than 1 px" in bad.examples[1]


def test_duplicate_rows_match_loop():
    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(0, 30))
        aid, aid_ok, valid = rng.integers(0, 6, n), rng.random(n) < 0.9, rng.random(n) < 0.7
        seen, want = set(), np.zeros(n, bool)
        for i in range(n):
            if aid_ok[i]:
                want[i] = aid[i] in seen
                if not want[i] and valid[i]:
                    seen.add(aid[i])
        assert (duplicate_rows(aid, aid_ok, valid) == want).all()


SCAN_CASES = [
    '{}', ' \n{ "a" : [ ] , "annotations":[]}\n', '{"annotations": [{"s": "}, {"}, {"t": "x\\"}, {"}]}',
    '{"annotations": [1, 2.5e3, "x", null, [{"a": 1}, {"b": 2}], {"c": {"d": 1}}, {"e": [{}]}], "z": 1}',
    '\ufeff{"annotations": [{"id": 1}], "images": [{"id": 1}]}', '{"annotations": 5}',
    '{"a": NaN, "annotations": [{"x": -Infinity}]}', '{"annotations": [{"k": "\\u00e9\\ud83d\\ude00 é"}]}',
]
NOT_STREAMABLE = ['', '[]', '{"a": 1,}', '{"a": 1} x', '{"a": 1, "a": 2}', '{"annotations": [1,]}',
                  '{"annotations": [{"a": 1} {"b": 2}]}', '{"a": tru}', '{"annotations": [1, 2', '\ufeff\ufeff{}']


@pytest.mark.parametrize("block", [1, 2, 5, 1 << 20])
def test_scan_json_object_matches_json(block, tmp_path, monkeypatch):
    monkeypatch.setattr(validation, "_BLOCK", block)
    monkeypatch.setattr(validation, "_CHUNK", max(block * 3, 4))
    monkeypatch.setattr(validation, "_BATCH", 2)
    for text in SCAN_CASES:
        (tmp_path / "f.json").write_text(text, encoding="utf-8")
        rows: list = []
        out = scan_json_object(tmp_path / "f.json", {"annotations": rows.extend})
        want = json.loads(text.lstrip("\ufeff"))
        if isinstance(want.get("annotations"), list):
            assert out.pop("annotations") is validation.STREAMED and rows == want.pop("annotations"), text
        assert json.dumps(out) == json.dumps(want), text  # dumps: NaN == NaN
    for text in NOT_STREAMABLE:
        (tmp_path / "f.json").write_text(text, encoding="utf-8")
        with pytest.raises(NotStreamable):
            scan_json_object(tmp_path / "f.json", {"annotations": list})
    (tmp_path / "f.json").write_bytes(b'{"a": "\xff"}')
    with pytest.raises(NotStreamable):
        scan_json_object(tmp_path / "f.json", {})
