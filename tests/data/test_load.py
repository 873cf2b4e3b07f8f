"""load_dataset: synth folders (all files merged), single JSON files (sniffed), image folders, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from omniseg.data.errors import BadRecordError, BadRecords
from omniseg.data.load import _sniff_json, load_dataset, merge_segments
from omniseg.data.records import Category, ImageRecord, RecordSet, Segment
from omniseg.data.synth.generate import generate_dataset
from omniseg.data.synth.world import SynthConfig
from omniseg.ops.rle import rle_decode, rle_encode

CFG = SynthConfig(seed=3, num_images=3, image_size=48, min_scale=6, max_scale=30, max_objects=3)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    rs = generate_dataset(CFG, out, workers=1, progress=False)
    return out, rs


def _same_mask(a: dict, b: dict) -> bool:
    return np.array_equal(rle_decode(a), rle_decode(b))


def test_synth_folder_merges_everything(synth) -> None:
    out, want = synth
    rs = load_dataset(out)
    assert rs.name == out.name
    assert rs.image_root == str(out / "images")
    assert [r.image_id for r in rs] == [r.image_id for r in want]
    assert {c.id: c.name for c in rs.categories} == {c.id: c.name for c in want.categories}
    assert sum(len(r.instances) for r in rs) > 0 and sum(len(r.narratives) for r in rs) > 0
    for got, ref in zip(rs.records, want.records):
        assert (got.file_name, got.width, got.height) == (ref.file_name, ref.width, ref.height)
        # instances from instances.json
        assert [i.text for i in got.instances] == [i.text for i in ref.instances]
        assert [i.category_id for i in got.instances] == [i.category_id for i in ref.instances]
        for gi, ri in zip(got.instances, ref.instances):
            assert gi.box == pytest.approx(ri.box)
            assert _same_mask(gi.mask, ri.mask)
        # captions from captions.json, narratives from narratives.jsonl
        assert got.captions == ref.captions and len(got.captions) >= 1
        assert got.narratives == ref.narratives
        # segments (things + stuff) from panoptic.json + panoptic/
        assert [(s.text, s.category_id, s.is_thing) for s in got.segments] == [
            (s.text, s.category_id, s.is_thing) for s in ref.segments
        ]
        assert any(not s.is_thing for s in got.segments)
        for gs, rs_ in zip(got.segments, ref.segments):
            assert _same_mask(gs.mask, rs_.mask)
        # the image files resolve
        assert Path(rs.image_path(got)).is_file()


def test_synth_folder_image_root_override(synth) -> None:
    out, _ = synth
    assert load_dataset(out, image_root="/elsewhere").image_root == "/elsewhere"


def test_single_instances_json(synth) -> None:
    out, want = synth
    rs = load_dataset(out / "instances.json", image_root=str(out / "images"))
    assert rs.image_root == str(out / "images")
    assert [len(r.instances) for r in rs] == [len(r.instances) for r in want]
    assert all(r.captions == [] and r.narratives == [] and r.segments == [] for r in rs)


def test_single_captions_json(synth) -> None:
    out, want = synth
    rs = load_dataset(out / "captions.json", image_root="imgs")
    assert [r.captions for r in rs] == [r.captions for r in want]
    assert all(r.instances == [] for r in rs)
    assert rs.image_root == "imgs"


def test_single_panoptic_json(synth) -> None:
    out, want = synth
    rs = load_dataset(out / "panoptic.json")
    assert [len(r.segments) for r in rs] == [len(r.segments) for r in want]
    # the panoptic reader also lists thing segments as instances
    assert [len(r.instances) for r in rs] == [sum(s.is_thing for s in r.segments) for r in want]


def test_image_folder(synth) -> None:
    out, want = synth
    rs = load_dataset(out / "images")
    assert [r.file_name for r in rs] == sorted(r.file_name for r in want)
    assert all((r.width, r.height) == (48, 48) and r.instances == [] for r in rs)
    assert rs.image_root == str(out / "images")


def test_sniffing(tmp_path: Path) -> None:
    cases = {
        "p.json": {"images": [], "annotations": [{"image_id": 1, "segments_info": []}], "categories": []},
        "c.json": {"images": [], "annotations": [{"id": 1, "image_id": 1, "caption": "x"}]},
        "c0.json": {"images": [], "annotations": []},
        "i.json": {"images": [], "annotations": [{"id": 1, "bbox": [0, 0, 1, 1]}], "categories": []},
        "i0.json": {"images": [], "categories": []},
        "r.json": [{"image_id": 1, "category_id": 1, "score": 0.5, "bbox": [0, 0, 1, 1]}],
        "u.json": {"hello": 1},
        "n.json": 3,
        "weird.json": {"annotations": {"not": "a list"}},
    }
    want = {"p.json": "panoptic", "c.json": "captions", "c0.json": "captions", "i.json": "instances",
            "i0.json": "instances", "r.json": "results", "u.json": "unknown", "n.json": "unknown",
            "weird.json": "unknown"}
    for name, obj in cases.items():
        (tmp_path / name).write_text(json.dumps(obj))
        assert _sniff_json(tmp_path / name) == want[name], name


def test_results_list_gives_clear_error(tmp_path: Path) -> None:
    p = tmp_path / "preds.json"
    p.write_text(json.dumps([{"image_id": 1, "category_id": 1, "score": 0.9, "bbox": [0, 0, 2, 2]}]))
    with pytest.raises(ValueError, match=r"preds\.json: cannot tell.*\(results\).*--pred"):
        load_dataset(p)


def test_unknown_json_and_extension(tmp_path: Path) -> None:
    (tmp_path / "u.json").write_text('{"x": 1}')
    with pytest.raises(ValueError, match=r"u\.json: cannot tell which dataset format this is \(unknown\)"):
        load_dataset(tmp_path / "u.json")
    (tmp_path / "boxes.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match=r"\(\.csv\)"):
        load_dataset(tmp_path / "boxes.csv")


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.json: no such file or folder"):
        load_dataset(tmp_path / "nope.json")


def test_invalid_json_names_line_and_column(tmp_path: Path) -> None:
    p = tmp_path / "broken.json"
    p.write_text('{\n  "images": [],\n  "annotations": [,]\n}')
    with pytest.raises(ValueError, match=r"broken\.json.*line 3 column 19") as info:
        load_dataset(p)
    assert isinstance(info.value, BadRecordError)
    (tmp_path / "empty.json").write_text("  \n")
    with pytest.raises(BadRecordError, match="empty file"):
        load_dataset(tmp_path / "empty.json")


def test_bad_record_policy_passes_through(tmp_path: Path, coco_dict) -> None:
    coco_dict["annotations"][0]["category_id"] = 99  # unknown category
    p = tmp_path / "inst.json"
    p.write_text(json.dumps(coco_dict))
    with pytest.raises(BadRecordError, match=r"inst\.json: annotation #0"):
        load_dataset(p)
    bad = BadRecords(policy="skip")
    rs = load_dataset(p, on_bad=bad)
    assert bad.total == 1
    assert sum(len(r.instances) for r in rs) == len(coco_dict["annotations"]) - 1


def test_merge_segments_by_image_id() -> None:
    m = np.zeros((2, 3), np.uint8)
    m[0, :2] = 1
    seg = Segment("sky", 9, rle_encode(m), is_thing=False)
    into = RecordSet([ImageRecord(1, "a", 3, 2), ImageRecord(2, "b", 3, 2)], [Category(1, "cat")])
    pan = RecordSet(
        [ImageRecord(2, "b", 3, 2, segments=[seg]), ImageRecord(7, "z", 3, 2, segments=[seg])],
        [Category(1, "cat"), Category(9, "sky", isthing=False)],
    )
    merge_segments(into, pan)
    assert into.records[0].segments == [] and into.records[1].segments == [seg]
    assert [(c.id, c.name) for c in into.categories] == [(1, "cat"), (9, "sky")]
    assert len(into) == 2  # the panoptic-only image is not added
