"""COCO / LVIS instances and results: reading, validation, writing, round trips."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO

from omniseg.data.errors import BadRecordError, BadRecords
from omniseg.data.formats.coco import (
    compressed_counts,
    read_coco_instances,
    read_coco_results,
    to_coco_dict,
    to_coco_results,
    write_coco_instances,
    write_coco_results,
)
from omniseg.data.records import Category, ImageRecord, Instance, RecordSet
from omniseg.ops.rle import rle_decode, rle_encode


def ref_decode_uncompressed(counts: list[int], h: int, w: int) -> np.ndarray:
    """Slow reference: alternating 0/1 runs in column-major order."""
    flat: list[int] = []
    for k, c in enumerate(counts):
        flat.extend([k % 2] * c)
    return np.array(flat, dtype=np.uint8).reshape(w, h).T


def rect_mask(h: int, w: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """Slow reference rasterizer for an axis-aligned polygon with integer corners: pixel centers inside."""
    m = np.zeros((h, w), dtype=np.uint8)
    for y in range(h):
        for x in range(w):
            if x0 <= x + 0.5 <= x1 and y0 <= y + 0.5 <= y1:
                m[y, x] = 1
    return m


def ref_counts(mask: np.ndarray) -> list[int]:
    """Slow reference run lengths (column-major, first run counts zeros)."""
    counts, value, run = [], 0, 0
    for v in mask.T.reshape(-1).tolist():
        if v == value:
            run += 1
        else:
            counts.append(run)
            value, run = v, 1
    return counts + [run]


def by_id(rs: RecordSet) -> dict:
    return {i.id: i for r in rs for i in r.instances}


# ----------------------------------------------------------------------------- reading


def test_read_coco_instances_hand_worked(coco_dict, write_json):
    path = write_json(coco_dict)
    rs = read_coco_instances(path, image_root="/imgs")
    assert [r.image_id for r in rs] == [1, 2]
    assert [(r.file_name, r.width, r.height) for r in rs] == [("a.jpg", 10, 8), ("b.jpg", 6, 5)]
    assert rs.image_root == "/imgs" and rs.image_path(rs.records[0]) == "/imgs/a.jpg"
    assert [(c.id, c.name, c.supercategory) for c in rs.categories] == [
        (1, "cat", "animal"),
        (2, "dog", "animal"),
    ]
    inst = by_id(rs)
    assert [len(r.instances) for r in rs] == [2, 2]
    sq = inst[10]
    assert (sq.text, sq.category_id, sq.box, sq.is_crowd, sq.source, sq.score) == (
        "cat",
        1,
        (1.0, 1.0, 4.0, 4.0),
        False,
        "coco",
        None,
    )
    assert isinstance(sq.mask["counts"], str) and sq.mask["size"] == [8, 10]
    np.testing.assert_array_equal(rle_decode(sq.mask), rect_mask(8, 10, 1, 1, 4, 4))
    assert rle_decode(sq.mask).sum() == 9
    two = rect_mask(8, 10, 5, 1, 7, 3) | rect_mask(8, 10, 8, 5, 10, 7)
    np.testing.assert_array_equal(rle_decode(inst[11].mask), two)
    assert inst[11].box == (5.0, 1.0, 10.0, 7.0)
    crowd = inst[12]
    assert crowd.is_crowd
    counts = coco_dict["annotations"][2]["segmentation"]["counts"]
    ref = ref_decode_uncompressed(counts, 5, 6)
    assert ref.sum() == 10
    np.testing.assert_array_equal(rle_decode(crowd.mask), ref)
    assert inst[13].mask is None and inst[13].box == (0.5, 0.5, 2.5, 2.0)


def test_read_compressed_rle_and_bbox_from_mask(coco_dict, write_json):
    m = np.zeros((8, 10), np.uint8)
    m[2:5, 3:7] = 1
    coco_dict["annotations"] = [
        {"id": 1, "image_id": 1, "category_id": 2, "iscrowd": 0, "segmentation": rle_encode(m)}  # no bbox
    ]
    inst = read_coco_instances(write_json(coco_dict)).records[0].instances[0]
    np.testing.assert_array_equal(rle_decode(inst.mask), m)
    assert inst.box == (3.0, 2.0, 7.0, 5.0)


def test_read_lvis(lvis_dict, write_json):
    rs = read_coco_instances(write_json(lvis_dict), source="lvis")
    r7, r8 = rs.records
    assert r7.file_name == "train2017/000000000007.jpg" and r8.file_name == "val2017/000000000008.jpg"
    assert r7.neg_category_ids == [3] and r7.not_exhaustive_category_ids == [1]
    assert r8.neg_category_ids == [] and r8.not_exhaustive_category_ids == []
    assert rs.categories[0].synonyms == ["aerosol_can", "spray_can"]
    inst = r7.instances[0]
    assert (inst.text, inst.is_crowd, inst.source) == ("aerosol_can", False, "lvis")
    np.testing.assert_array_equal(rle_decode(inst.mask), rect_mask(8, 10, 1, 1, 4, 4))


def test_lvis_round_trip(lvis_dict, write_json, tmp_path):
    rs = read_coco_instances(write_json(lvis_dict))
    out = tmp_path / "lvis_out.json"
    write_coco_instances(out, rs)
    d = json.loads(out.read_text())
    assert d["images"][0]["neg_category_ids"] == [3] and d["images"][1]["not_exhaustive_category_ids"] == []
    assert d["categories"][2]["synonyms"] == ["airplane", "aeroplane"]
    back = read_coco_instances(out)
    assert [(r.image_id, r.file_name, r.neg_category_ids, r.not_exhaustive_category_ids) for r in back] == [
        (r.image_id, r.file_name, r.neg_category_ids, r.not_exhaustive_category_ids) for r in rs
    ]
    for a, b in zip(by_id(rs).values(), by_id(back).values()):
        np.testing.assert_array_equal(rle_decode(a.mask), rle_decode(b.mask))


def test_plain_coco_has_no_lvis_keys(coco_dict, write_json):
    d = to_coco_dict(read_coco_instances(write_json(coco_dict)))
    assert "neg_category_ids" not in d["images"][0] and "synonyms" not in d["categories"][0]


def test_compressed_counts_hand_worked_and_reference():
    # hand-encoded: 25 needs two 5-bit groups; from the 4th run on deltas (4-2=2, 20-3=17, 1-5=-4)
    assert compressed_counts("23i0").tolist() == [2, 3, 25]
    assert compressed_counts("1232a0").tolist() == [1, 2, 3, 4, 20]
    assert compressed_counts("153La0").tolist() == [1, 5, 3, 1, 20]
    assert compressed_counts("").tolist() == []
    rng = np.random.default_rng(0)
    for h, w, p in [(5, 6, 0.5), (40, 33, 0.05), (17, 90, 0.9), (3, 3, 0.0), (3, 3, 1.0)]:
        m = (rng.random((h, w)) < p).astype(np.uint8)
        assert compressed_counts(rle_encode(m)["counts"]).tolist() == ref_counts(m)


@pytest.mark.parametrize(
    "counts, reason",
    [
        ("23", "runs sum to 5"),
        ("i", "middle of a number"),
        ("23~", "outside"),
        ("2" + "o" * 13 + "0", "longer than 12"),
        ("23i0" + "0" * 3, "sum to"),
    ],
)
def test_bad_compressed_rle(coco_dict, write_json, counts, reason):
    _ann(coco_dict, 12)["segmentation"] = {"size": [5, 6], "counts": counts}
    with pytest.raises(BadRecordError, match=reason):
        read_coco_instances(write_json(coco_dict))


# ----------------------------------------------------------------------------- writing


def test_to_coco_dict_values(coco_dict, write_json):
    d = to_coco_dict(read_coco_instances(write_json(coco_dict)))
    anns = {a["id"]: a for a in d["annotations"]}
    assert anns[10]["bbox"] == [1.0, 1.0, 3.0, 3.0] and anns[10]["area"] == 9.0 and anns[10]["iscrowd"] == 0
    assert isinstance(anns[10]["segmentation"]["counts"], str)
    assert anns[12]["iscrowd"] == 1 and anns[12]["area"] == 10.0
    assert "segmentation" not in anns[13]  # box-only stays box-only
    assert anns[13]["bbox"] == [0.5, 0.5, 2.0, 1.5] and anns[13]["area"] == pytest.approx(3.0)
    assert [c["name"] for c in d["categories"]] == ["cat", "dog"]
    json.dumps(d)  # serializable


def test_round_trip_and_pycocotools_agree(coco_dict, write_json, tmp_path):
    src = write_json(coco_dict)
    rs = read_coco_instances(src)
    out = tmp_path / "out.json"
    write_coco_instances(out, rs)
    back = read_coco_instances(out)
    a, b = by_id(rs), by_id(back)
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k].text, a[k].category_id, a[k].is_crowd) == (b[k].text, b[k].category_id, b[k].is_crowd)
        assert b[k].box == pytest.approx(a[k].box)
        if a[k].mask is not None:
            np.testing.assert_array_equal(rle_decode(a[k].mask), rle_decode(b[k].mask))
    # the reference library reads both files to the same pixels
    orig, ours = COCO(str(src)), COCO(str(out))
    for aid in (10, 11, 12):
        np.testing.assert_array_equal(orig.annToMask(orig.anns[aid]), ours.annToMask(ours.anns[aid]))


def test_category_by_name_renumbered_ids_and_errors():
    m = np.zeros((4, 4), np.uint8)
    m[1:3, 1:3] = 1
    rs = RecordSet(
        records=[
            ImageRecord(
                1,
                "x.png",
                4,
                4,
                instances=[
                    Instance("dog", mask=rle_encode(m)),  # no category id, no box, no ann id
                    Instance("dog", category_id=5, box=(0, 0, 2, 2), box_quality="approximate", score=0.5),
                ],
            )
        ],
        categories=[Category(5, "dog")],
    )
    d = to_coco_dict(rs)
    a0, a1 = d["annotations"]
    assert (a0["id"], a1["id"]) == (1, 2) and a0["category_id"] == 5
    assert a0["bbox"] == [1.0, 1.0, 2.0, 2.0] and a0["area"] == 4.0
    assert a1["score"] == 0.5 and a1["box_quality"] == "approximate" and "box_quality" not in a0
    rs.records[0].instances.append(Instance("unicorn", box=(0, 0, 1, 1)))
    with pytest.raises(ValueError, match="unicorn"):
        to_coco_dict(rs)
    rs.records[0].instances[-1] = Instance("dog", category_id=5)
    with pytest.raises(ValueError, match="neither a box nor a mask"):
        to_coco_dict(rs)


def test_pseudo_labels_keep_score_and_quality(tmp_path):
    rs = RecordSet(
        records=[
            ImageRecord(
                3,
                "x.png",
                4,
                4,
                instances=[
                    Instance(
                        "dog", category_id=5, box=(0, 0, 2, 2), box_quality="approximate", score=0.25, id=9
                    )
                ],
            )
        ],
        categories=[Category(5, "dog")],
    )
    write_coco_instances(tmp_path / "p.json", rs)
    inst = read_coco_instances(tmp_path / "p.json", source="pseudo").records[0].instances[0]
    assert (inst.score, inst.box_quality, inst.id, inst.source) == (0.25, "approximate", 9, "pseudo")


# ----------------------------------------------------------------------------- results


def test_results_round_trip(coco_dict, write_json, tmp_path):
    gt = read_coco_instances(write_json(coco_dict))
    m = np.zeros((8, 10), np.uint8)
    m[0:2, 0:3] = 1
    pred = RecordSet(
        records=[
            ImageRecord(
                1,
                "a.jpg",
                10,
                8,
                instances=[
                    Instance("cat", category_id=1, box=(0, 0, 3, 2), mask=rle_encode(m), score=0.9),
                    Instance("dog", category_id=2, box=(1, 1, 2, 2), score=0.4),
                    Instance("dog", category_id=2, box=(1, 1, 2, 2)),  # ground truth: not a result
                ],
            )
        ],
        categories=gt.categories,
    )
    res = to_coco_results(pred)
    assert len(res) == 2
    assert res[0]["bbox"] == [0.0, 0.0, 3.0, 2.0] and res[0]["score"] == 0.9 and res[0]["image_id"] == 1
    assert isinstance(res[0]["segmentation"]["counts"], str) and "segmentation" not in res[1]
    path = tmp_path / "res.json"
    write_coco_results(path, pred)
    back = read_coco_results(path, gt)
    assert [r.image_id for r in back] == [1, 2] and back.records[1].instances == []
    p0, p1 = back.records[0].instances
    assert (p0.score, p0.text, p0.box, p0.id) == (0.9, "cat", (0.0, 0.0, 3.0, 2.0), None)
    np.testing.assert_array_equal(rle_decode(p0.mask), m)
    assert p1.mask is None and p1.score == 0.4
    assert gt.records[0].instances[0].score is None  # gt untouched
    COCO(str(write_json(coco_dict, "gt.json"))).loadRes(str(path))  # the reference library accepts it


def test_results_validation(coco_dict, write_json):
    gt = read_coco_instances(write_json(coco_dict))
    good = {"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}
    cases = [
        ({**good, "image_id": 99}, "unknown image id"),
        ({**good, "category_id": 99}, "unknown category id"),
        ({**good, "score": math.nan}, "non-finite"),
        ({k: v for k, v in good.items() if k != "score"}, "missing required key"),
        ({**good, "image_id": [1]}, "image id must be"),
        ({**good, "bbox": [0, 0, 1, 1], "segmentation": {"size": [4, 4], "counts": "04"}}, "does not match"),
    ]
    for bad_res, reason in cases:
        path = write_json([good, bad_res], "res.json")
        with pytest.raises(BadRecordError, match=reason) as e:
            read_coco_results(path, gt)
        assert "res.json" in str(e.value) and "result #1" in str(e.value)
        bad = BadRecords("skip")
        rs = read_coco_results(path, gt, on_bad=bad)
        assert bad.total == 1 and len(rs.records[0].instances) == 1
    with pytest.raises(BadRecordError, match="JSON list"):
        read_coco_results(write_json(coco_dict, "notalist.json"), gt)


# ----------------------------------------------------------------------------- validation


def test_missing_empty_malformed_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        read_coco_instances(tmp_path / "nope.json")
    (tmp_path / "empty.json").write_text("  \n")
    with pytest.raises(BadRecordError, match="empty file") as e:
        read_coco_instances(tmp_path / "empty.json")
    assert "empty.json" in str(e.value)
    (tmp_path / "bad.json").write_text('{"images": [],\n  "categories": [}')
    with pytest.raises(BadRecordError, match="line 2 column 18"):
        read_coco_instances(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(BadRecordError, match="JSON object"):
        read_coco_instances(tmp_path / "list.json")


def test_missing_top_level_key(coco_dict, write_json):
    del coco_dict["images"]
    with pytest.raises(BadRecordError, match=r"missing required top-level key\(s\) \['images'\]"):
        read_coco_instances(write_json(coco_dict))


def _ann(d, aid):
    return next(a for a in d["annotations"] if a["id"] == aid)


# (mutation, reason substring, record substring, ann ids left after skipping, skip count)
ANN_CASES = {
    "missing key": (lambda d: _ann(d, 10).pop("category_id"), "missing required key", "annotation #0"),
    "dup ann id": (lambda d: _ann(d, 11).update(id=10), "duplicate annotation id 10", "annotation #1"),
    "unknown image": (lambda d: _ann(d, 11).update(image_id=5), "unknown image id 5", "id=11"),
    "unknown cat": (lambda d: _ann(d, 11).update(category_id=9), "unknown category id 9", "id=11"),
    "zero width": (lambda d: _ann(d, 10).update(bbox=[1, 1, 0, 3]), "zero or negative size", "id=10"),
    "neg height": (lambda d: _ann(d, 10).update(bbox=[1, 1, 3, -2]), "zero or negative size", "id=10"),
    "outside": (lambda d: _ann(d, 10).update(bbox=[8, 1, 3.5, 3]), "outside the 10x8 image", "id=10"),
    "negative xy": (lambda d: _ann(d, 10).update(bbox=[-1.5, 1, 3, 3]), "outside", "id=10"),
    "nan bbox": (lambda d: _ann(d, 10).update(bbox=[1, math.nan, 3, 3]), "non-finite", "id=10"),
    "inf polygon": (lambda d: _ann(d, 10)["segmentation"][0].__setitem__(2, math.inf), "non-finite", "id=10"),
    "short polygon": (lambda d: _ann(d, 11)["segmentation"].append([1, 1, 2, 2]), "< 3 points", "id=11"),
    "odd polygon": (lambda d: _ann(d, 11)["segmentation"][0].append(3), "odd number", "id=11"),
    "rle size": (
        lambda d: _ann(d, 12)["segmentation"].update(size=[6, 5]),
        "does not match the image size",
        "id=12",
    ),
    "rle sum": (
        lambda d: _ann(d, 12)["segmentation"]["counts"].append(3),
        "sum to 33, expected h*w = 30",
        "id=12",
    ),
    "rle garbage": (
        lambda d: _ann(d, 12).update(segmentation={"size": [5, 6], "counts": 5}),
        "counts must be",
        "id=12",
    ),
    # strict field types: a string "0" must not become a crowd region (bool("0") is True)
    "iscrowd string": (lambda d: _ann(d, 10).update(iscrowd="0"), "iscrowd must be 0 or 1, got '0'", "id=10"),
    "iscrowd 2": (lambda d: _ann(d, 10).update(iscrowd=2), "iscrowd must be 0 or 1, got 2", "id=10"),
    "iscrowd float": (lambda d: _ann(d, 10).update(iscrowd=0.5), "iscrowd must be 0 or 1", "id=10"),
    "iscrowd null": (lambda d: _ann(d, 10).update(iscrowd=None), "iscrowd must be 0 or 1, got None", "id=10"),
    "negative area": (lambda d: _ann(d, 10).update(area=-5), "area must be >= 0, got -5", "id=10"),
    "nan area": (lambda d: _ann(d, 10).update(area=math.nan), "area is non-finite", "id=10"),
    "string area": (lambda d: _ann(d, 10).update(area="9"), "area must be a number, got '9'", "id=10"),
    "string ann id": (lambda d: _ann(d, 10).update(id="10"), "id must be an integer, got '10'", "annotation #0"),
    "fractional ann id": (lambda d: _ann(d, 10).update(id=10.5), "id must be an integer, got 10.5", "id=10.5"),
    "huge ann id": (lambda d: _ann(d, 10).update(id=2**70), "out of range", "annotation #0"),
    "bool category": (
        lambda d: _ann(d, 10).update(category_id=True), "category_id must be an integer, got True", "id=10"
    ),
    "string image ref": (lambda d: _ann(d, 10).update(image_id=[1]), "image id must be an integer", "id=10"),
    "string bbox": (lambda d: _ann(d, 10).update(bbox=["1", 1, 3, 3]), "bbox must hold numbers", "id=10"),
    "huge int bbox": (lambda d: _ann(d, 10).update(bbox=[1, 10**400, 3, 3]), "non-finite", "id=10"),
    "string score": (lambda d: _ann(d, 10).update(score="high"), "score must be a number", "id=10"),
    "far polygon": (
        lambda d: _ann(d, 10)["segmentation"][0].__setitem__(4, 1e12),
        "far outside the 10x8 image",
        "id=10",
    ),
}


@pytest.mark.parametrize("case", sorted(ANN_CASES))
def test_bad_annotation_error_and_skip(case, coco_dict, write_json):
    mutate, reason, record = ANN_CASES[case]
    mutate(coco_dict)
    path = write_json(coco_dict, "inst.json")
    with pytest.raises(BadRecordError) as e:
        read_coco_instances(path)
    msg = str(e.value)
    assert "inst.json" in msg and record in msg and reason in msg, msg
    bad = BadRecords("skip")
    rs = read_coco_instances(path, on_bad=bad)
    assert bad.total == 1 and bad.skipped[e.value.reason] == 1
    assert sum(len(r.instances) for r in rs) == 3


def test_box_within_tolerance_is_clipped(coco_dict, write_json):
    _ann(coco_dict, 10).update(bbox=[-0.5, 1, 3, 3])
    _ann(coco_dict, 11).update(bbox=[5, 1, 5.75, 7.5])  # x1 = 10.75, y1 = 8.5 on a 10 x 8 image
    inst = by_id(read_coco_instances(write_json(coco_dict)))
    assert inst[10].box == (0.0, 1.0, 2.5, 4.0)
    assert inst[11].box == (5.0, 1.0, 10.0, 8.0)


def test_bad_images(coco_dict, write_json):
    coco_dict["images"].append(dict(coco_dict["images"][0], file_name="dup.jpg"))  # duplicate id 1
    path = write_json(coco_dict, "inst.json")
    with pytest.raises(BadRecordError, match="duplicate image id 1") as e:
        read_coco_instances(path)
    assert "image #2 (id=1)" in str(e.value)
    bad = BadRecords("skip")
    rs = read_coco_instances(path, on_bad=bad)
    assert bad.total == 1 and [r.file_name for r in rs] == ["a.jpg", "b.jpg"]
    assert len(rs.records[0].instances) == 2  # annotations stay with the first image

    del coco_dict["images"][2]
    del coco_dict["images"][1]["width"]  # image 2 invalid -> its 2 annotations are skipped too (counted)
    path = write_json(coco_dict, "inst.json")
    with pytest.raises(BadRecordError, match=r"missing required key\(s\) \['width'\]"):
        read_coco_instances(path)
    bad = BadRecords("skip")
    rs = read_coco_instances(path, on_bad=bad)
    assert [r.image_id for r in rs] == [1] and bad.total == 3 and bad.skipped["unknown image id 2"] == 2


def test_bad_lvis_ids_and_categories(lvis_dict, write_json):
    lvis_dict["images"][0]["neg_category_ids"] = [3, 77]
    with pytest.raises(BadRecordError, match=r"neg_category_ids names unknown category id\(s\) \[77\]"):
        read_coco_instances(write_json(lvis_dict))
    lvis_dict["images"][0]["neg_category_ids"] = [3]
    lvis_dict["categories"].append({"id": 1, "name": "again"})
    with pytest.raises(BadRecordError, match="duplicate category id 1"):
        read_coco_instances(write_json(lvis_dict))


def test_empty_dataset_round_trip(tmp_path):
    rs = RecordSet()
    write_coco_instances(tmp_path / "e.json", rs)
    d = json.loads((tmp_path / "e.json").read_text())
    assert d["images"] == [] and d["annotations"] == [] and d["categories"] == []
    assert len(read_coco_instances(tmp_path / "e.json")) == 0
    assert to_coco_results(rs) == []


def test_image_without_annotations_key(coco_dict, write_json):
    del coco_dict["annotations"]  # e.g. image_info_test files
    rs = read_coco_instances(write_json(coco_dict))
    assert len(rs) == 2 and all(not r.instances for r in rs)


def test_written_file_is_atomic(coco_dict, write_json, tmp_path):
    rs = read_coco_instances(write_json(coco_dict))
    out = tmp_path / "o.json"
    out.write_text("old")
    rs.records[0].instances.append(Instance("nope", box=(0, 0, 1, 1)))  # makes writing fail
    with pytest.raises(ValueError):
        write_coco_instances(out, rs)
    assert out.read_text() == "old" and sorted(
        p.name for p in Path(tmp_path).iterdir() if "o.json" in p.name
    ) == ["o.json"]


def test_string_image_ids_and_duplicate_ids_on_write(coco_dict, write_json, tmp_path):
    coco_dict["images"][0]["id"] = "img-a"
    for a in coco_dict["annotations"][:2]:
        a["image_id"] = "img-a"
    rs = read_coco_instances(write_json(coco_dict))
    assert [r.image_id for r in rs] == ["img-a", 2] and len(rs.records[0].instances) == 2
    write_coco_instances(tmp_path / "s.json", rs)
    assert [r.image_id for r in read_coco_instances(tmp_path / "s.json")] == ["img-a", 2]
    rs.records[1].image_id = "img-a"
    with pytest.raises(ValueError, match="duplicate image ids"):
        to_coco_dict(rs)
    coco_dict["images"][1]["id"] = 2.5
    with pytest.raises(BadRecordError, match="image id must be an integer"):
        read_coco_instances(write_json(coco_dict))


def test_byte_order_mark_and_bad_encoding(coco_dict, tmp_path):
    (tmp_path / "bom.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(coco_dict).encode())
    assert len(read_coco_instances(tmp_path / "bom.json")) == 2
    (tmp_path / "latin.json").write_bytes(b'{"images": [], "categories": [{"id": 1, "name": "caf\xe9"}]}')
    with pytest.raises(BadRecordError, match="not UTF-8") as e:
        read_coco_instances(tmp_path / "latin.json")
    assert "latin.json" in str(e.value)


def test_valid_flag_and_id_spellings_are_accepted(coco_dict, write_json):
    """0 / 1 as bools, integral floats as ids: the values are exact, nothing is coerced wrongly."""
    _ann(coco_dict, 10).update(iscrowd=False, id=10.0)
    _ann(coco_dict, 11).update(iscrowd=True, area=0)
    rs = read_coco_instances(write_json(coco_dict))
    inst = by_id(rs)
    assert inst[10].is_crowd is False and isinstance(inst[10].id, int)
    assert inst[11].is_crowd is True and inst[11].area == 0.0
    assert inst[12].is_crowd is True and inst[13].is_crowd is False


def test_iscrowd_string_skipped_not_turned_into_a_crowd(coco_dict, write_json):
    """Before: ``bool("0")`` made the object a crowd region (ignored by AP). Now: a counted skip."""
    _ann(coco_dict, 10).update(iscrowd="0")
    bad = BadRecords("skip")
    rs = read_coco_instances(write_json(coco_dict), on_bad=bad)
    assert 10 not in by_id(rs) and bad.total == 1
    assert [i.id for r in rs for i in r.instances if i.is_crowd] == [12]


# (mutation of image 0 / category 0, reason substring, record substring)
IMAGE_CASES = {
    "parent path": (lambda d: d["images"][0].update(file_name="../../../../etc/passwd"),
                    "resolves outside the image root", "image #0 (id=1)"),
    "absolute path": (lambda d: d["images"][0].update(file_name="/etc/passwd"), "absolute path", "image #0"),
    "climbing path": (lambda d: d["images"][0].update(file_name="a/../../x.jpg"), "outside", "image #0"),
    "null file name": (lambda d: d["images"][0].update(file_name=None), "file_name must be", "image #0"),
    "lvis url escape": (lambda d: (d["images"][0].pop("file_name"), d["images"][0].update(coco_url="http://h/../x.jpg")),
                        "file name from coco_url '../x.jpg' resolves outside", "image #0"),
    "string width": (lambda d: d["images"][0].update(width="10"), "width must be an integer, got '10'", "image #0"),
    "huge size": (lambda d: d["images"][0].update(width=10**6), "exceeds the supported", "image #0"),
    "bool image id": (lambda d: d["images"][0].update(id=True), "image id must be an integer", "image #0"),
    "name not a string": (lambda d: d["categories"][0].update(name=5), "name must be a non-empty string",
                          "category #0 (id=1)"),
    "isthing string": (lambda d: d["categories"][0].update(isthing="1"), "isthing must be 0 or 1",
                       "category #0"),
    "supercategory list": (lambda d: d["categories"][0].update(supercategory=["a"]),
                           "supercategory must be a string", "category #0"),
}


@pytest.mark.parametrize("case", sorted(IMAGE_CASES))
def test_bad_image_and_category_fields(case, coco_dict, write_json, tmp_path):
    mutate, reason, record = IMAGE_CASES[case]
    mutate(coco_dict)
    path = write_json(coco_dict, "inst.json")
    with pytest.raises(BadRecordError) as e:
        read_coco_instances(path, image_root=str(tmp_path))
    msg = str(e.value)
    assert "inst.json" in msg and record in msg and reason in msg, msg
    bad = BadRecords("skip")
    read_coco_instances(path, image_root=str(tmp_path), on_bad=bad)  # never raises for a record
    assert bad.total >= 1 and bad.skipped[e.value.reason] == 1


def test_file_names_resolved_inside_the_image_root(coco_dict, write_json, tmp_path):
    """``..`` inside the root is fine; a symbolic link out of the root is not; a linked root is."""
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    (tmp_path / "secret.jpg").write_bytes(b"x")
    (root / "link.jpg").symlink_to(tmp_path / "secret.jpg")
    (tmp_path / "linked_root").symlink_to(root)
    coco_dict["images"][0]["file_name"] = "sub/../a.jpg"
    path = write_json(coco_dict, "inst.json")
    assert [r.file_name for r in read_coco_instances(path, image_root=str(root))] == ["sub/../a.jpg", "b.jpg"]
    assert len(read_coco_instances(path, image_root=str(tmp_path / "linked_root"))) == 2
    coco_dict["images"][1]["file_name"] = "link.jpg"
    path = write_json(coco_dict, "inst.json")
    with pytest.raises(BadRecordError, match=r"image #1 \(id=2\): file_name 'link.jpg' resolves outside the image root"):
        read_coco_instances(path, image_root=str(root))
    assert len(read_coco_instances(path)) == 2  # without an image root only the name itself is checked
