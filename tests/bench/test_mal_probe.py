"""bench/mal_probe.py: IoU of labels with true masks, by box long side and category, against hand-worked values."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from omniseg.ops.rle import rle_encode

BENCH = ("mal_probe",)


def _ann(aid: int, cat: int, mask: np.ndarray, bbox: list[float]) -> dict:
    return {"id": aid, "image_id": 1, "category_id": cat, "bbox": bbox, "segmentation": rle_encode(mask)}


def _files(tmp_path):
    small, big = np.zeros((40, 40), bool), np.zeros((40, 40), bool)
    small[0:4, 0:4] = True  # 16 px in a 4 x 4 box: filled box IoU 1
    big[10:30, 10:20] = True  # 200 px in a 20 x 20 box: filled box IoU 0.5
    label_big = np.zeros((40, 40), bool)
    label_big[10:30, 10:15] = True  # half of the true mask ...
    label_big[10:30, 30:35] = True  # ... and as much outside the box: IoU 100 / 300; clipped to the box 0.5
    cats = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    truth = {"images": [{"id": 1, "file_name": "x.png", "width": 40, "height": 40}], "categories": cats,
             "annotations": [_ann(1, 1, small, [0, 0, 4, 4]), _ann(2, 2, big, [10, 10, 20, 20]),
                             {"id": 3, "image_id": 1, "category_id": 1, "bbox": [0, 0, 2, 2]}]}  # no mask: unscored
    labels = {"annotations": [_ann(1, 1, small, [0, 0, 4, 4]), _ann(2, 2, label_big, [10, 10, 20, 20]),
                              _ann(3, 1, small, [0, 0, 2, 2])]}
    (tmp_path / "t.json").write_text(json.dumps(truth))
    (tmp_path / "l.json").write_text(json.dumps(labels))
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "x.png")
    return truth, labels


def test_breakdown_by_side_and_category(bench, tmp_path):
    mp = bench["mal_probe"]
    truth, labels = _files(tmp_path)
    scored = mp.pairs(truth, labels)
    assert [(a["id"], round(iou, 6)) for a, _, iou in scored] == [(1, 1.0), (2, round(1 / 3, 6))]
    res = mp.breakdown(truth, scored)
    big = {"n": 1, "mIoU": pytest.approx(1 / 3), "filled_box": 0.5, "clipped_mIoU": 0.5, "outside_box": 0.5}
    assert res["all"] == {"n": 2, "mIoU": pytest.approx(2 / 3), "filled_box": 0.75, "clipped_mIoU": 0.75,
                          "outside_box": 0.25}
    assert res["long_side"] == {"0-8": {"n": 1, "mIoU": 1.0, "filled_box": 1.0, "clipped_mIoU": 1.0,
                                        "outside_box": 0.0}, "16-32": big}
    assert res["category"]["b"] == big


def test_polygon_truth_is_scored_as_its_rle(bench, tmp_path):
    mp = bench["mal_probe"]
    truth, labels = _files(tmp_path)
    # annotation 2's true mask (rows 10-29, columns 10-19) as a COCO polygon along its pixel edges
    poly = {**truth["annotations"][1], "segmentation": [[10, 10, 20, 10, 20, 30, 10, 30]]}
    as_poly = {**truth, "annotations": [truth["annotations"][0], poly]}
    got = [(a["id"], round(iou, 6), isinstance(a["segmentation"], dict)) for a, _, iou in mp.pairs(as_poly, labels)]
    want = [(a["id"], round(iou, 6), True) for a, _, iou in mp.pairs(truth, labels)]
    assert got == want and len(got) == 2
    assert isinstance(poly["segmentation"], list)  # the caller's truth is left as it was


def test_cli_writes_the_picture(bench, tmp_path, capsys):
    _files(tmp_path)
    bench["mal_probe"].main([str(tmp_path / "t.json"), str(tmp_path / "l.json"), "--images", str(tmp_path),
                             "--png", str(tmp_path / "p.png"), "--min-side", "10"])
    out = capsys.readouterr().out
    assert "2 boxes scored: mIoU 0.667 (clipped to the box 0.750), filled box 0.750" in out
    assert "| 16-32 | 1 | 0.333 | 0.500 | 50.0% | 0.500 |" in out
    assert Image.open(tmp_path / "p.png").size == (360, 120)  # one box has long side >= 10


def _half_box_world(tmp_path):
    """A 40 x 40 white image with a black 10 x 20 object filling the left half of its 20 x 20 box; the label is the
    filled box."""
    im = np.full((40, 40, 3), 255, np.uint8)
    obj, box = np.zeros((40, 40), bool), np.zeros((40, 40), bool)
    obj[10:30, 10:20] = True
    box[10:30, 10:30] = True
    im[obj] = 0
    Image.fromarray(im).save(tmp_path / "x.png")
    truth = {"images": [{"id": 1, "file_name": "x.png", "width": 40, "height": 40}],
             "categories": [{"id": 1, "name": "a"}], "annotations": [_ann(1, 1, obj, [10, 10, 20, 20])]}
    return truth, {"annotations": [_ann(1, 1, box, [10, 10, 20, 20])]}


def test_crf_study_keeps_the_truth_and_a_straight_front(bench, tmp_path):
    mp = bench["mal_probe"]
    truth, labels = _half_box_world(tmp_path)
    crf = mp.crf_study(truth, mp.pairs(truth, labels), tmp_path, boxes=5)
    assert crf["boxes"] == 1
    ins = crf["inputs"]
    # before: the filled box (and the label, the same mask resampled) covers the object and as much background: IoU 1/2
    assert abs(ins["filled box"]["before"] - 0.5) < 0.03 and abs(ins["label"]["before"] - 0.5) < 0.03
    assert ins["true mask"]["before"] == 1.0
    # an unsure filled box (p 0.6) keeps its white half although its colour is that of the background outside the
    # box: the pixels along the box edge flip (3 background neighbours across, 5 unsure ones, unary logit 0.4), but
    # the interior becomes sure in the same parallel updates and the front stops a few pixels in -- a pixel on a
    # straight front has 5 neighbours on its own side and 3 across, so it does not cross a region of one colour
    assert abs(ins["filled box"]["after"]["0.6"]["0.5"] - ins["filled box"]["before"]) < 0.05
    assert all(v > 0.95 for row in ins["true mask"]["after"].values() for v in row.values())
    assert set(ins["label"]["after"]) == {"0.6", "0.8"} and set(ins["label"]["after"]["0.8"]) == {"0.25", "0.5", "1.0"}


def test_crf_study_cli_needs_images(bench_error, tmp_path):
    _files(tmp_path)
    assert bench_error("mal_probe", str(tmp_path / "t.json"), str(tmp_path / "l.json"), "--crf", "3") \
        == "--crf needs --images"


def test_crf_study_without_a_usable_box_is_one_line(bench_error, tmp_path):
    _files(tmp_path)
    truth = json.loads((tmp_path / "t.json").read_text())  # both scored boxes shrunk below the 2 px rule
    for a in truth["annotations"]:
        a["bbox"] = [0, 0, 1, 1]
    (tmp_path / "t.json").write_text(json.dumps(truth))
    assert bench_error("mal_probe", str(tmp_path / "t.json"), str(tmp_path / "l.json"), "--images", str(tmp_path),
                       "--crf", "3") == "--crf: no scored box with both sides >= 2 px"
