"""The columnar / streaming COCO reader against the slow, obvious per-record reader.

The reference below is the reader as it was before the fast path: json.load the file, then one
Python call chain per image and per annotation with a ``seen`` set for duplicate ids. Random
files mix valid rows with every kind of bad one (and rows the fast path hands to the slow one),
are written with categories last (as the official files) and read with tiny stream blocks, so
chunk boundaries fall everywhere. Records, skip counts, examples and error messages must agree.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import pickle
import random
import threading
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
from omniseg.data.records import (
    DeferredInstances,
    ImageRecord,
    Instance,
    RecordSet,
    instance_count,
    lean_record,
)
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


def _deferred(rs: RecordSet) -> list[bool]:
    return [type(r._instances) is DeferredInstances for r in rs]


@pytest.mark.parametrize("seed", range(int(__import__("os").environ.get("COCO_SEEDS", 60))))
def test_random_files_match_reference(seed, tmp_path, tiny_blocks):
    rng = random.Random(seed)
    path = _dump(random_coco(rng, n_ann=rng.choice([0, 5, 40, 90])), tmp_path / "inst.json", rng)
    for policy in ("error", "skip"):
        assert _outcome(_fast, path, policy) == _outcome(reference_read, path, policy), policy
    # deferred instances: counted without being made, read in any order, pickled unmade
    ref = reference_read(path, BadRecords("skip"))
    rs = _fast(path, BadRecords("skip"))
    assert [instance_count(r) for r in rs] == [len(r.instances) for r in ref]
    assert all(instance_count(r) for r, d in zip(rs, _deferred(rs)) if d)
    again = pickle.loads(pickle.dumps(rs))
    assert _deferred(again) == _deferred(rs)
    order = list(range(len(rs)))
    rng.shuffle(order)
    assert [rs.records[k].instances for k in order] == [ref.records[k].instances for k in order]
    assert not any(_deferred(rs)) and rs.records == ref.records and again.records == ref.records
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


def _plain_file(tmp_path: Path, cat_id: int = 3) -> Path:
    d = {"images": [{"id": i, "file_name": f"{i}.jpg", "width": 20, "height": 10} for i in (1, 2, 3)],
         "annotations": [{"id": k, "image_id": 1 + k % 2, "category_id": cat_id, "bbox": [1, 1, 2 + k, 3],
                          "area": 6.0, "iscrowd": k % 3 == 0} for k in range(1, 7)],
         "categories": [{"id": cat_id, "name": "c"}]}
    path = tmp_path / "plain.json"
    path.write_text(json.dumps(d))
    return path


def test_deferred_instances_behave_as_a_list(tmp_path):
    """Reading ``instances`` makes them once and keeps them: changes stick, copies made before
    share the list (as they share a list), deep copies / pickles / replace() give equal records."""
    path = _plain_file(tmp_path)
    ref = reference_read(path, BadRecords())
    rs = _fast(path, BadRecords())
    assert _deferred(rs) == [True, True, False]  # image 3 has no boxes: a plain empty list
    r0, r1 = rs.records[0], rs.records[1]
    shallow, deep = copy.copy(r0), copy.deepcopy(r0)
    pickled = pickle.loads(pickle.dumps([r0, shallow]))
    assert repr(r0) == repr(ref.records[0]) and r0 == ref.records[0]
    got = r0.instances
    assert got is r0.instances and shallow.instances is got and got == ref.records[0].instances
    assert deep == r0 and deep.instances is not got and deep.instances[0] is not got[0]
    assert pickled[0] == r0 and pickled[1].instances is pickled[0].instances
    got.append(Instance(text="x"))
    got[0].category_id = 99
    assert r0.instances[-1].text == "x" and r0.instances[0].category_id == 99 and instance_count(r0) == 4
    assert dataclasses.replace(r1).instances is r1.instances
    r1.instances = []
    assert r1.instances == [] and instance_count(r1) == 0
    assert not rs.records[2].instances and rs.records[2].instances is rs.records[2].instances


def test_lean_records_behave_as_plain_ones():
    """The image reader's records make their empty lists on first read; to every reader, copier and
    pickler they are the records ``ImageRecord(id, name, w, h)`` gives."""
    fields = ("instances", "captions", "narratives", "segments", "labels", "neg_category_ids",
              "not_exhaustive_category_ids")
    plain, lean = ImageRecord(7, "a.jpg", 20, 10), lean_record(7, "a.jpg", 20, 10)
    assert repr(lean) == repr(plain) and lean == plain and plain == lean and instance_count(lean) == 0
    for make in (copy.deepcopy, lambda r: pickle.loads(pickle.dumps(r)), dataclasses.replace):
        assert make(lean_record(7, "a.jpg", 20, 10)) == plain
    assert dataclasses.asdict(lean_record(7, "a.jpg", 20, 10)) == dataclasses.asdict(plain)
    for name in fields:
        for r in (plain, lean_record(7, "a.jpg", 20, 10)):
            shallow = copy.copy(r)  # a shallow copy shares the lists, made or not
            getattr(shallow, name).append(1)
            assert getattr(r, name) == [1] and getattr(r, name) is getattr(shallow, name)
            setattr(r, name, None)  # any value can be set and is read back
            assert getattr(r, name) is None and getattr(shallow, name) == [1]
    twins = pickle.loads(pickle.dumps([lean, lean]))
    twins[0].captions.append("x")
    assert twins[1].captions == ["x"] and lean.captions == []


def test_deferred_instances_made_once_across_threads(tmp_path):
    rs = _fast(_plain_file(tmp_path), BadRecords())
    seen: list[list] = []
    barrier = threading.Barrier(8)

    def read() -> None:
        barrier.wait()
        seen.append([r.instances for r in rs])

    threads = [threading.Thread(target=read) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(all(a is b for a, b in zip(s, seen[0])) for s in seen)


def test_deferred_store_freed_and_wide_category_ids(tmp_path):
    """Category ids beyond int32 keep their values; a made record drops its store reference."""
    for cid in (2**40, -(2**31) - 1, 2**31 - 1):
        path = _plain_file(tmp_path, cat_id=cid)
        rs = _fast(path, BadRecords())
        cell = rs.records[0]._instances
        assert cell.store is not None and rs.records == reference_read(path, BadRecords()).records
        assert cell.store is None and {i.category_id for r in rs for i in r.instances} == {cid}


def test_records_mixing_fast_and_per_record_rows_keep_file_order(tmp_path, tiny_blocks):
    """Masks go to the per-record reader, plain boxes to the columns: one record gets both, in file order,
    with its annotations out of image order in the file."""
    poly = [[1, 1, 6, 1, 6, 5]]
    anns = [{"id": 10, "image_id": 2, "category_id": 1, "bbox": [1, 1, 2, 2]},
            {"id": 11, "image_id": 1, "category_id": 1, "bbox": [1, 1, 2, 2], "segmentation": poly},
            {"id": 12, "image_id": 1, "category_id": 1, "bbox": [2, 1, 2, 2]},
            {"id": 13, "image_id": 2, "category_id": 1, "bbox": [3, 1, 2, 2], "score": 0.25},
            {"id": 14, "image_id": 1, "category_id": 1, "bbox": [3, 1, 2, 2], "box_quality": "approximate"},
            {"id": 15, "image_id": 1, "category_id": 1, "bbox": [4, 1, 2, 2], "segmentation": poly}]
    d = {"images": [{"id": i, "file_name": f"{i}.jpg", "width": 20, "height": 10} for i in (1, 2)],
         "annotations": anns, "categories": [{"id": 1, "name": "c"}]}
    path = tmp_path / "mixed.json"
    path.write_text(json.dumps(d))
    rs = _fast(path, BadRecords())
    assert _deferred(rs) == [False, True]
    assert [[i.id for i in r.instances] for r in rs] == [[11, 12, 14, 15], [10, 13]]
    assert rs.records == reference_read(path, BadRecords()).records


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


def test_file_name_shortcut_matches_image_file_name(tmp_path, monkeypatch):
    """The plain-name shortcut of the image reader accepts and rejects exactly as ``image_file_name``:
    symbolic links to files / folders inside and outside the root, odd names, a root that is a link."""
    root, out = tmp_path / "root", tmp_path / "out"
    (root / "sub").mkdir(parents=True)
    out.mkdir()
    (root / "a.jpg").write_bytes(b"")
    (out / "o.jpg").write_bytes(b"")
    (root / "in_link.jpg").symlink_to(root / "a.jpg")
    (root / "out_link.jpg").symlink_to(out / "o.jpg")
    (root / "out_dir").symlink_to(out)
    (root / "sub" / "up.jpg").symlink_to("../a.jpg")
    (root / "dangling.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (tmp_path / "root_link").symlink_to(root)
    (root / "rootx").mkdir()
    names = ["a.jpg", "x.jpg", "sub/x.jpg", "sub/up.jpg", "in_link.jpg", "out_link.jpg", "out_dir/o.jpg",
             "out_dir/x.jpg", "dangling.jpg", "sub/./x.jpg", "sub//x.jpg", "./x.jpg", "sub/", "sub/.", ".",
             "../x.jpg", "sub/../../x.jpg", "/abs.jpg", "é.jpg", "a\0b.jpg", "nosuch/x.jpg", "rootx/y.jpg",
             "sub/..", "..x.jpg", "x..jpg"]
    monkeypatch.chdir(tmp_path)
    for image_root in (str(root), str(tmp_path / "root_link"), "root", "root/", str(root / "sub"), "/"):
        for name in names:
            try:
                want = ("ok", validation.image_file_name(name, image_root))
            except Invalid as e:
                want = ("invalid", str(e))
            try:
                coco._check_file_names([name], image_root)
                got = ("ok", name)
            except Invalid as e:
                got = ("invalid", str(e))
            assert got == want, (image_root, name)
    rng = random.Random(0)
    for _ in range(50):  # batches: the first bad name is the one named
        batch = rng.sample(names, 6)
        try:
            for name in batch:
                validation.image_file_name(name, str(root))
            want = "ok"
        except Invalid as e:
            want = str(e)
        try:
            coco._check_file_names(batch, str(root))
            got = "ok"
        except Invalid as e:
            got = str(e)
        assert got == want, batch
