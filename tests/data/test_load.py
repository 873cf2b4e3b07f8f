"""load_dataset: synth folders (all files merged), single JSON files (sniffed), image folders, errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from omniseg.data.errors import BadRecordError, BadRecords
from omniseg.data.formats.coco import read_coco_instances
from omniseg.data.formats.validation import NotRegularFileError, load_json_file
from omniseg.data.load import (
    MissingImagesError,
    UnknownFormatError,
    _sniff_json,
    image_root_candidates,
    load_dataset,
    merge_segments,
)
from omniseg.data.records import Category, ImageRecord, RecordSet, Segment
from omniseg.data.synth.generate import generate_dataset
from omniseg.data.synth.world import SynthConfig
from omniseg.errors import UserError
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
    """``omniseg data stats preds.json``: one line saying it is a results file and what is needed."""
    p = tmp_path / "preds.json"
    p.write_text(json.dumps([{"image_id": 1, "category_id": 1, "score": 0.9, "bbox": [0, 0, 2, 2]}]))
    with pytest.raises(UnknownFormatError) as e:
        load_dataset(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}: a COCO results file (a JSON list of detections), not a dataset")
    assert "needs a dataset folder, a COCO instances / captions / panoptic JSON" in msg and "--pred" in msg
    assert "\n" not in msg and isinstance(e.value, UserError)


def test_unknown_json_and_extension(tmp_path: Path) -> None:
    (tmp_path / "u.json").write_text('{"x": 1}')
    with pytest.raises(UnknownFormatError, match=r"u\.json: cannot tell which dataset format this is "
                                                 r"\(top-level keys 'x'; a dataset JSON has 'images' and"):
        load_dataset(tmp_path / "u.json")
    (tmp_path / "n.json").write_text("3")
    with pytest.raises(UnknownFormatError, match=r"n\.json: .*the top level is a JSON int, not an object"):
        load_dataset(tmp_path / "n.json")
    (tmp_path / "boxes.csv").write_text("a,b\n")
    with pytest.raises(UnknownFormatError, match=r"boxes\.csv: not a dataset file \(\.csv\)"):
        load_dataset(tmp_path / "boxes.csv")


def test_instances_without_categories_names_the_missing_key(tmp_path: Path, coco_dict) -> None:
    """Before: read as captions, the error named a missing 'caption' key."""
    del coco_dict["categories"]
    p = tmp_path / "inst.json"
    p.write_text(json.dumps(coco_dict))
    assert _sniff_json(p) == "instances"
    with pytest.raises(BadRecordError, match=r"inst\.json: file: missing required top-level key\(s\) "
                                             r"\['categories'\]") as e:
        load_dataset(p)
    assert "caption" not in str(e.value)
    # box-only or mask-only annotations decide it too
    for key in ("bbox", "segmentation"):
        p.write_text(json.dumps({"images": [], "annotations": [{"id": 1, key: []}]}))
        assert _sniff_json(p) == "instances", key


def test_annotations_of_no_known_kind(tmp_path: Path) -> None:
    p = tmp_path / "a.json"
    p.write_text(json.dumps({"images": [], "annotations": [{"id": 1, "image_id": 1}]}))
    with pytest.raises(UnknownFormatError, match=r"a\.json: cannot tell .*the first annotation has none of the keys "
                                                 r"'segments_info' \(panoptic\); 'caption' \(captions\); "
                                                 r"'bbox' or 'segmentation' \(instances\)"):
        load_dataset(p)


def test_folder_or_fifo_where_a_file_is_expected(tmp_path: Path) -> None:
    """A folder is "is a directory" (not "no such file"); a FIFO is refused at once, never read."""
    (tmp_path / "d.json").mkdir()
    with pytest.raises(IsADirectoryError, match=r"d\.json: is a directory, not a file"):
        load_json_file(tmp_path / "d.json")
    with pytest.raises(IsADirectoryError, match=r"d\.json: is a directory"):
        read_coco_instances(tmp_path / "d.json")
    with pytest.raises(IsADirectoryError, match=r"d\.json: is a directory, not a \.json file"):
        load_dataset(tmp_path / "d.json")  # not read as an (empty) image folder
    os.mkfifo(tmp_path / "f.json")
    with pytest.raises(NotRegularFileError, match=r"f\.json: not a regular file \(a FIFO\)"):
        load_dataset(tmp_path / "f.json")
    with pytest.raises(FileNotFoundError, match=r"none\.json: no such file"):
        load_json_file(tmp_path / "none.json")


def test_json_beyond_the_parser_limits(tmp_path: Path) -> None:
    """Deep nesting and 5000-digit integers raise RecursionError / ValueError in json: a clear error here."""
    p = tmp_path / "deep.json"
    p.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(BadRecordError, match=r"deep\.json: file: malformed JSON: nested too deeply"):
        load_dataset(p)
    p.write_text('{"images": [{"id": ' + "9" * 5000 + "}]}")
    with pytest.raises(BadRecordError, match=r"deep\.json: file: malformed JSON at line 1: number with too many digits"):
        load_dataset(p)


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


# ---------------------------------------------------------------- where the images of a JSON are


def _coco_layout(tmp_path: Path, coco_dict, images_in: str, json_at: str = "annotations/instances_train2017.json"):
    """coco_dict's JSON at ``json_at`` and empty files a.jpg, b.jpg in ``images_in`` (both under tmp_path)."""
    p = tmp_path / json_at
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(coco_dict))
    (tmp_path / images_in).mkdir(parents=True, exist_ok=True)
    for name in ("a.jpg", "b.jpg"):
        (tmp_path / images_in / name).write_bytes(b"")
    return p


@pytest.mark.parametrize("images_in, want", [
    ("annotations", "annotations"),  # next to the JSON
    ("annotations/images", "annotations/images"),  # images/ under it
    ("train2017", "train2017"),  # the COCO layout: annotations/instances_<split>.json -> <split>/
])
def test_bare_json_finds_its_images(tmp_path: Path, coco_dict, images_in: str, want: str) -> None:
    p = _coco_layout(tmp_path, coco_dict, images_in)
    rs = load_dataset(p, require_images=True)
    assert rs.image_root == str(tmp_path / want)
    assert rs.image_path(rs.records[1]) == str(tmp_path / want / "b.jpg")


def test_json_folder_wins_over_images_subfolder(tmp_path: Path, coco_dict) -> None:
    p = _coco_layout(tmp_path, coco_dict, "annotations/images")
    _coco_layout(tmp_path, coco_dict, "annotations")
    assert load_dataset(p).image_root == str(tmp_path / "annotations")


def test_coco_layout_needs_the_annotations_folder_name(tmp_path: Path, coco_dict) -> None:
    """labels/instances_train2017.json is not the COCO layout: train2017/ beside it is not looked in."""
    p = _coco_layout(tmp_path, coco_dict, "train2017", json_at="labels/instances_train2017.json")
    with pytest.raises(FileNotFoundError):
        load_dataset(p, require_images=True)


def test_given_image_root_is_used_as_given(tmp_path: Path, coco_dict) -> None:
    p = _coco_layout(tmp_path, coco_dict, "annotations")  # found next to it, but the root given wins
    _coco_layout(tmp_path, coco_dict, "elsewhere/pics")
    rs = load_dataset(p, image_root=str(tmp_path / "elsewhere/pics"), require_images=True)
    assert rs.image_root == str(tmp_path / "elsewhere/pics")


def test_missing_images_name_the_first_and_the_folders_tried(tmp_path: Path, coco_dict) -> None:
    p = _coco_layout(tmp_path, coco_dict, "nowhere")
    rs = load_dataset(p)  # without require_images: the JSON's folder, for commands that need no pixels
    assert rs.image_root == str(tmp_path / "annotations")
    a = tmp_path / "annotations"
    with pytest.raises(MissingImagesError) as e:
        load_dataset(p, require_images=True)
    assert str(e.value) == (f"{p}: image 'a.jpg' (image id 1) (and 1 more of 2) is not in {a}, {a / 'images'}, "
                            f"{tmp_path / 'train2017'}")
    assert isinstance(e.value, UserError)
    (tmp_path / "nowhere" / "a.jpg").rename(tmp_path / "annotations" / "a.jpg")
    with pytest.raises(MissingImagesError) as e:  # a root given: the only folder tried
        load_dataset(p, image_root=str(a), require_images=True)
    assert str(e.value) == f"{p}: image 'b.jpg' (image id 2) is not in {a}"


def test_dataset_folder_finds_images_subfolder_first(synth) -> None:
    out, _ = synth
    assert [str(c) for c in image_root_candidates(out / "instances.json", in_folder=True)] == [
        str(out / "images"), str(out)]
    assert load_dataset(out, require_images=True).image_root == str(out / "images")
