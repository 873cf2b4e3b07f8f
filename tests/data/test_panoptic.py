"""COCO panoptic reader/writer: fixtures written by hand in the public format."""

from __future__ import annotations

import errno
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from omniseg.data.errors import BadRecordError, BadRecords
from omniseg.data.formats.panoptic import (
    PanopticWriteError,
    id_to_rgb,
    read_coco_panoptic,
    rgb_to_id,
    write_coco_panoptic,
)
from omniseg.data.records import Category, ImageRecord, RecordSet, Segment
from omniseg.ops.rle import rle_decode, rle_encode

H, W = 4, 6
# segment id map of image 7, written pixel by pixel below. 0 = void.
IDS = np.array(
    [
        [1, 1, 0, 300, 300, 300],
        [1, 1, 0, 300, 300, 300],
        [0, 0, 0, 70000, 70000, 0],
        [0, 0, 0, 70000, 70000, 0],
    ]
)
CATEGORIES = [
    {"id": 1, "name": "person", "supercategory": "person", "isthing": 1, "color": [220, 20, 60]},
    {"id": 184, "name": "sky", "supercategory": "sky", "isthing": 0, "color": [70, 130, 180]},
]


def _slow_color(seg_id: int) -> tuple[int, int, int]:
    r, rest = seg_id % 256, seg_id // 256
    return r, rest % 256, rest // 256


def _write_fixture(root: Path, ids: np.ndarray = IDS, segments=None, categories=None, png=True) -> Path:
    png_dir = root / "panoptic_train"
    png_dir.mkdir(parents=True, exist_ok=True)
    if png:
        img = Image.new("RGB", (ids.shape[1], ids.shape[0]))
        for y in range(ids.shape[0]):
            for x in range(ids.shape[1]):
                img.putpixel((x, y), _slow_color(int(ids[y, x])))
        img.save(png_dir / "000000000007.png")
    if segments is None:
        segments = [
            {"id": 1, "category_id": 1, "area": 4, "bbox": [0, 0, 2, 2], "iscrowd": 0},
            {"id": 300, "category_id": 184, "area": 6, "bbox": [3, 0, 3, 2], "iscrowd": 0},
            {"id": 70000, "category_id": 1, "area": 4, "bbox": [3, 2, 2, 2], "iscrowd": 1},
        ]
    data = {
        "info": {},
        "licenses": [],
        "images": [
            {"id": 7, "file_name": "000000000007.jpg", "width": W, "height": H},
            {"id": 8, "file_name": "000000000008.jpg", "width": W, "height": H},
        ],
        "annotations": [
            {"image_id": 7, "file_name": "000000000007.png", "segments_info": segments},
        ],
        "categories": categories if categories is not None else CATEGORIES,
    }
    path = root / "panoptic_train.json"
    path.write_text(json.dumps(data))
    return path


def test_rgb_to_id_matches_slow_formula():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(3, 4, 3), dtype=np.uint8)
    ids = rgb_to_id(rgb)
    for y in range(3):
        for x in range(4):
            r, g, b = (int(v) for v in rgb[y, x])
            assert ids[y, x] == r + 256 * g + 256 * 256 * b
    assert rgb_to_id(np.array([[[1, 2, 3]]], dtype=np.uint8))[0, 0] == 1 + 512 + 196608
    assert np.array_equal(rgb_to_id(id_to_rgb(ids)), ids)
    with pytest.raises(ValueError):
        id_to_rgb(np.array([[256**3]]))


def test_read_fixture(tmp_path):
    path = _write_fixture(tmp_path)
    rs = read_coco_panoptic(path, tmp_path / "panoptic_train", image_root="imgs", progress=False)
    assert [r.image_id for r in rs] == [7, 8] and rs.image_root == "imgs"
    assert {c.id: c.isthing for c in rs.categories} == {1: True, 184: False}
    rec, empty = rs.records
    assert empty.segments == [] and empty.instances == []
    assert [(s.id, s.text, s.is_thing, s.is_crowd) for s in rec.segments] == [
        (1, "person", True, False),
        (300, "sky", False, False),
        (70000, "person", True, True),
    ]
    for s in rec.segments:
        assert np.array_equal(rle_decode(s.mask), (IDS == s.id).astype(np.uint8))
    # things only, with boxes worked out by hand (pixel-edge XYXY)
    assert [(i.id, i.box, i.is_crowd, i.category_id) for i in rec.instances] == [
        (1, (0.0, 0.0, 2.0, 2.0), False, 1),
        (70000, (3.0, 2.0, 5.0, 4.0), True, 1),
    ]
    assert all(i.has_mask and i.box_quality == "exact" for i in rec.instances)


def test_round_trip(tmp_path):
    rs = read_coco_panoptic(_write_fixture(tmp_path / "a"), tmp_path / "a" / "panoptic_train", progress=False)
    out_json, out_png = tmp_path / "b" / "pan.json", tmp_path / "b" / "png"
    write_coco_panoptic(out_json, out_png, rs, progress=False)
    # the PNG written decodes to the very same id map
    written = rgb_to_id(np.asarray(Image.open(out_png / "000000000007.png").convert("RGB")))
    assert np.array_equal(written, IDS)
    assert not (np.asarray(Image.open(out_png / "000000000008.png").convert("RGB"))).any()
    data = json.loads(out_json.read_text())
    infos = {s["id"]: s for s in data["annotations"][0]["segments_info"]}
    assert infos[300] == {
        "id": 300,
        "category_id": 184,
        "area": 6,
        "bbox": [3.0, 0.0, 3.0, 2.0],
        "iscrowd": 0,
    }
    assert infos[70000]["iscrowd"] == 1 and infos[70000]["area"] == 4
    back = read_coco_panoptic(out_json, out_png, progress=False)
    assert back.categories == rs.categories
    for a, b in zip(rs.records, back.records):
        assert (a.image_id, a.file_name, a.width, a.height) == (b.image_id, b.file_name, b.width, b.height)
        assert a.segments == b.segments and a.instances == b.instances
    assert not list(out_png.glob(".*.tmp")) and not list(out_json.parent.glob(".*.tmp"))


def test_writer_renumbers_and_rejects_overlap(tmp_path):
    m1 = np.zeros((2, 3), np.uint8)
    m1[0, :2] = 1
    m2 = np.zeros((2, 3), np.uint8)
    m2[1, :] = 1
    rec = ImageRecord(
        image_id=1,
        file_name="x.jpg",
        width=3,
        height=2,
        segments=[
            Segment("a", 1, rle_encode(m1), is_thing=True, id=None),
            Segment("b", 2, rle_encode(m2), is_thing=False, id=None),
        ],
    )
    rs = RecordSet([rec], [Category(1, "a"), Category(2, "b", isthing=False)])
    write_coco_panoptic(tmp_path / "p.json", tmp_path / "png", rs, progress=False)
    ids = rgb_to_id(np.asarray(Image.open(tmp_path / "png" / "x.png").convert("RGB")))
    assert np.array_equal(ids, np.array([[1, 1, 0], [2, 2, 2]]))
    rec.segments[1] = Segment("b", 2, rle_encode(np.ones((2, 3), np.uint8)), id=5)
    q = tmp_path / "q.json"
    with pytest.raises(PanopticWriteError, match=rf"^{re.escape(str(q))}: image 1 segment 5: overlaps"):
        write_coco_panoptic(q, tmp_path / "png2", rs, progress=False)
    assert not q.exists() and not (tmp_path / "png2").exists()
    rec.segments = [Segment("b", 2, rle_encode(np.ones((3, 3), np.uint8)), id=5)]
    with pytest.raises(PanopticWriteError, match="mask is"):
        write_coco_panoptic(q, tmp_path / "png2", rs, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.json", "png"]  # no temp file or folder


def _bad_cases():
    ok = [{"id": 1, "category_id": 1, "area": 4, "bbox": [0, 0, 2, 2], "iscrowd": 0}]
    return {
        "missing": (dict(segments=ok, png=False), "panoptic PNG missing"),
        "size": (dict(ids=IDS[:3], segments=ok), "PNG 000000000007.png is 6x3, image is 6x4"),
        "absent": (dict(segments=ok + [{"id": 999, "category_id": 1, "iscrowd": 0}]), "segment id absent"),
        "category": (
            dict(segments=ok + [{"id": 300, "category_id": 5, "iscrowd": 0}]),
            "unknown category_id 5",
        ),
        # strict types: "0" is not a crowd flag, areas are non-negative, ids are integers
        "iscrowd string": (dict(segments=ok + [{"id": 300, "category_id": 184, "iscrowd": "0"}]),
                           "iscrowd must be 0 or 1, got '0'"),
        "negative area": (dict(segments=ok + [{"id": 300, "category_id": 184, "area": -6}]),
                          "area must be >= 0, got -6"),
        "string id": (dict(segments=ok + [{"id": "300", "category_id": 184}]),
                      "segment id must be an integer, got '300'"),
        "nan bbox": (dict(segments=ok + [{"id": 300, "category_id": 184, "bbox": [0, float("nan"), 1, 1]}]),
                     "bbox has a non-finite coordinate"),
        "duplicate segment": (dict(segments=ok + [dict(ok[0])]), "duplicate segment id 1"),
        "not an object": (dict(segments=ok + [3]), "segment must be a JSON object"),
        # pixels of ids 300 and 70000 that no segment describes (they were dropped silently)
        "unlabelled pixels": (dict(segments=ok), "has pixels of segment id(s) [300, 70000] that are not in"),
    }


@pytest.mark.parametrize("case", list(_bad_cases()))
def test_bad_records(tmp_path, case):
    kwargs, reason = _bad_cases()[case]
    path = _write_fixture(tmp_path, **kwargs)
    with pytest.raises(BadRecordError) as e:
        read_coco_panoptic(path, tmp_path / "panoptic_train", progress=False)
    assert str(path) in str(e.value) and "image 7" in str(e.value) and reason in str(e.value)
    bad = BadRecords("skip")
    rs = read_coco_panoptic(path, tmp_path / "panoptic_train", on_bad=bad, progress=False)
    assert bad.total == 1
    if case not in ("missing", "size"):  # the good segment survives, the bad one is skipped
        assert [s.id for s in rs.records[0].segments] == [1]
    else:
        assert rs.records[0].segments == []


def test_one_png_for_two_images_is_a_bad_record(tmp_path):
    path = _write_fixture(tmp_path)
    data = json.loads(path.read_text())
    data["annotations"].append({**data["annotations"][0], "image_id": 8})
    path.write_text(json.dumps(data))
    with pytest.raises(BadRecordError, match="image 8: PNG 000000000007.png is also the PNG of image 7"):
        read_coco_panoptic(path, tmp_path / "panoptic_train", progress=False)


def test_an_empty_png_is_named_without_python_reprs(tmp_path):
    path = _write_fixture(tmp_path)
    (tmp_path / "panoptic_train" / "000000000007.png").write_bytes(b"")
    with pytest.raises(BadRecordError) as e:
        read_coco_panoptic(path, tmp_path / "panoptic_train", progress=False)
    assert "000000000007.png: not an image" in str(e.value) and "<_io" not in str(e.value)


def test_unknown_image_and_bad_json(tmp_path):
    path = _write_fixture(tmp_path)
    data = json.loads(path.read_text())
    data["annotations"][0]["image_id"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(BadRecordError, match="image 99"):
        read_coco_panoptic(path, tmp_path / "panoptic_train", progress=False)
    data["annotations"][0]["image_id"] = 7
    data["images"].append(dict(data["images"][0]))
    path.write_text(json.dumps(data))
    with pytest.raises(BadRecordError, match=r"image #2 \(id=7\): duplicate image id 7"):
        read_coco_panoptic(path, tmp_path / "panoptic_train", progress=False)
    bad = BadRecords("skip")
    assert len(read_coco_panoptic(path, tmp_path / "panoptic_train", on_bad=bad, progress=False)) == 2
    assert bad.total == 1
    path.write_text("{not json")
    with pytest.raises(BadRecordError, match="malformed JSON at line 1"):
        read_coco_panoptic(path, tmp_path, progress=False)
    path.write_text(json.dumps({"images": []}))
    with pytest.raises(BadRecordError, match=r"missing required top-level key\(s\) \['annotations', 'categories'\]"):
        read_coco_panoptic(path, tmp_path, progress=False)


# ----------------------------------------------------------------------------- writer: staged PNG folder


def _one_segment_set(names: list[str], overlap_at: int | None = None) -> RecordSet:
    """Records ``names`` (2 x 3 images), one segment each; record ``overlap_at`` gets two overlapping ones."""
    full = rle_encode(np.ones((2, 3), np.uint8))
    recs = []
    for i, name in enumerate(names):
        segs = [Segment("a", 1, full, is_thing=True, id=1)]
        if i == overlap_at:
            segs.append(Segment("a", 1, full, is_thing=True, id=2))
        recs.append(ImageRecord(image_id=i + 1, file_name=name, width=3, height=2, segments=segs))
    return RecordSet(recs, [Category(1, "a")])


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_writer_replaces_png_folder_as_a_whole(tmp_path):
    out, png = tmp_path / "pan.json", tmp_path / "pan"
    write_coco_panoptic(out, png, _one_segment_set(["a.jpg", "b.jpg"]), progress=False)
    write_coco_panoptic(out, png, _one_segment_set(["c.jpg"]), progress=False)
    assert sorted(os.listdir(png)) == ["c.png"]  # the previous export's PNGs do not linger
    assert [a["file_name"] for a in json.loads(out.read_text())["annotations"]] == ["c.png"]
    assert sorted(os.listdir(tmp_path)) == ["pan", "pan.json"]


def test_failed_writer_keeps_previous_export(tmp_path, monkeypatch):
    out, png = tmp_path / "pan.json", tmp_path / "pan"
    write_coco_panoptic(out, png, _one_segment_set(["a.jpg", "b.jpg"]), progress=False)
    before = _tree(tmp_path)
    # a bad record after some PNGs were written
    with pytest.raises(PanopticWriteError, match=r"pan\.json: image 3 segment 2: overlaps"):
        write_coco_panoptic(out, png, _one_segment_set(["c.jpg", "d.jpg", "e.jpg"], overlap_at=2), progress=False)
    assert _tree(tmp_path) == before
    # two images with one PNG name would silently share (overwrite) a PNG
    with pytest.raises(PanopticWriteError, match=r"image 2: its PNG x\.png is also image 1's"):
        write_coco_panoptic(out, png, _one_segment_set(["x.jpg", "x.png"]), progress=False)
    assert _tree(tmp_path) == before

    # the disk fills up while the JSON is written: neither the folder nor the JSON is replaced
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(json, "dump", full)
    with pytest.raises(OSError) as e:
        write_coco_panoptic(out, png, _one_segment_set(["c.jpg"]), progress=False)
    assert (e.value.errno, e.value.filename) == (errno.ENOSPC, str(png))  # named after the export
    assert _tree(tmp_path) == before and sorted(os.listdir(tmp_path)) == ["pan", "pan.json"]


def test_png_file_name_confined_and_fifo_refused(tmp_path, no_hang):
    path = _write_fixture(tmp_path)
    data = json.loads(path.read_text())
    (tmp_path / "outside.png").write_bytes((tmp_path / "panoptic_train" / "000000000007.png").read_bytes())
    data["annotations"][0]["file_name"] = "../outside.png"
    path.write_text(json.dumps(data))
    with pytest.raises(BadRecordError, match=r"image 7: file_name '\.\./outside\.png' resolves outside"):
        read_coco_panoptic(path, tmp_path / "panoptic_train", progress=False)
    os.mkfifo(tmp_path / "panoptic_train" / "fifo.png")
    data["annotations"][0]["file_name"] = "fifo.png"
    path.write_text(json.dumps(data))
    with no_hang(5), pytest.raises(BadRecordError, match=r"image 7: .*fifo\.png: not a regular file \(a FIFO\)"):
        read_coco_panoptic(path, tmp_path / "panoptic_train", progress=False)
    data["annotations"][0] = "garbage"
    path.write_text(json.dumps(data))
    with pytest.raises(BadRecordError, match=r"annotation #0: annotation must be a JSON object"):
        read_coco_panoptic(path, tmp_path / "panoptic_train", progress=False)
