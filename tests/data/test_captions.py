"""COCO captions: reading into new / existing records, validation, round trip."""

from __future__ import annotations

import json

import pytest

from omniseg.data.errors import BadRecordError, BadRecords
from omniseg.data.formats.captions import read_coco_captions, to_coco_captions_dict, write_coco_captions
from omniseg.data.formats.coco import read_coco_instances
from omniseg.data.records import ImageRecord, RecordSet


def ref_group(annotations: list[dict]) -> dict:
    """Slow reference: captions per image id, in file order."""
    out: dict = {}
    for a in annotations:
        out.setdefault(a["image_id"], []).append(a["caption"])
    return out


def test_read_creates_records(captions_dict, write_json):
    rs = read_coco_captions(write_json(captions_dict, "cap.json"), image_root="/r")
    assert [(r.image_id, r.file_name, r.width, r.height) for r in rs] == [
        (1, "a.jpg", 10, 8),
        (2, "b.jpg", 6, 5),
    ]
    assert rs.records[0].captions == ["A cat next to a dog.", "Two pets on a rug."]
    assert rs.records[1].captions == ["A cat crowd."]
    assert {r.image_id: r.captions for r in rs} == ref_group(captions_dict["annotations"])
    assert rs.image_root == "/r" and rs.records[0].instances == []


def test_merge_into_instances(coco_dict, captions_dict, write_json):
    inst = read_coco_instances(write_json(coco_dict, "inst.json"))
    del captions_dict["images"]  # not needed when merging
    out = read_coco_captions(write_json(captions_dict, "cap.json"), into=inst)
    assert out is inst
    assert [len(r.instances) for r in inst] == [2, 2]
    assert [r.captions for r in inst] == [["A cat next to a dog.", "Two pets on a rug."], ["A cat crowd."]]


def test_round_trip(captions_dict, write_json, tmp_path):
    rs = read_coco_captions(write_json(captions_dict))
    out = tmp_path / "out.json"
    write_coco_captions(out, rs)
    d = json.loads(out.read_text())
    assert [a["id"] for a in d["annotations"]] == [1, 2, 3]
    assert [(a["image_id"], a["caption"]) for a in d["annotations"]] == [
        (a["image_id"], a["caption"]) for a in captions_dict["annotations"]
    ]
    back = read_coco_captions(out)
    assert [(r.image_id, r.file_name, r.width, r.height, r.captions) for r in back] == [
        (r.image_id, r.file_name, r.width, r.height, r.captions) for r in rs
    ]


def test_empty_and_captionless_images():
    rs = RecordSet(records=[ImageRecord(5, "z.jpg", 3, 2)])
    d = to_coco_captions_dict(rs)
    assert d["annotations"] == [] and d["images"] == [
        {"id": 5, "file_name": "z.jpg", "width": 3, "height": 2}
    ]
    assert to_coco_captions_dict(RecordSet())["images"] == []


CASES = {
    "unknown image": (lambda d: d["annotations"][1].update(image_id=42), "unknown image id 42", "caption #1"),
    "dup id": (lambda d: d["annotations"][2].update(id=100), "duplicate caption id 100", "caption #2"),
    "missing key": (lambda d: d["annotations"][0].pop("caption"), "missing required key", "caption #0"),
    "empty caption": (lambda d: d["annotations"][0].update(caption="  "), "non-empty string", "id=100"),
    "not a string": (lambda d: d["annotations"][0].update(caption=3), "non-empty string", "id=100"),
    "string id": (lambda d: d["annotations"][0].update(id="100"), "id must be an integer, got '100'", "caption #0"),
    "bool id": (lambda d: d["annotations"][0].update(id=False), "id must be an integer, got False", "caption #0"),
    "float image ref": (lambda d: d["annotations"][0].update(image_id=1.5), "image id must be an integer", "id=100"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_captions(case, captions_dict, write_json):
    mutate, reason, record = CASES[case]
    mutate(captions_dict)
    path = write_json(captions_dict, "cap.json")
    with pytest.raises(BadRecordError) as e:
        read_coco_captions(path)
    assert "cap.json" in str(e.value) and reason in str(e.value) and record in str(e.value)
    bad = BadRecords("skip")
    rs = read_coco_captions(path, on_bad=bad)
    assert bad.total == 1 and sum(len(r.captions) for r in rs) == 2


def test_file_level_errors(captions_dict, write_json, tmp_path):
    with pytest.raises(FileNotFoundError, match="none.json"):
        read_coco_captions(tmp_path / "none.json")
    del captions_dict["images"]
    with pytest.raises(BadRecordError, match=r"\['images'\]"):
        read_coco_captions(write_json(captions_dict))
    (tmp_path / "m.json").write_text('{"annotations": [1,]}')
    with pytest.raises(BadRecordError, match="line 1 column 20"):
        read_coco_captions(tmp_path / "m.json", into=RecordSet())


def test_image_file_names_confined_to_the_root(captions_dict, write_json, tmp_path):
    captions_dict["images"][1]["file_name"] = "../../../../etc/passwd"
    path = write_json(captions_dict, "cap.json")
    with pytest.raises(BadRecordError, match=r"cap\.json: image #1 \(id=2\): file_name '\.\./\.\./\.\./\.\./etc/passwd' "
                                             r"resolves outside the image root"):
        read_coco_captions(path, image_root=str(tmp_path))
    with pytest.raises(BadRecordError, match=r"points outside the image root"):
        read_coco_captions(path)
    bad = BadRecords("skip")
    rs = read_coco_captions(path, on_bad=bad, image_root=str(tmp_path))
    assert [r.image_id for r in rs] == [1] and bad.total == 2  # the image and its caption
