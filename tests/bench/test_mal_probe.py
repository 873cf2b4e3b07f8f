"""bench/mal_probe.py: IoU of labels with true masks, by box long side and category, against hand-worked values."""

from __future__ import annotations

import json

import numpy as np
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
    label_big[10:30, 10:15] = True  # half of the true mask: IoU 0.5
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
    assert [(a["id"], round(iou, 6)) for a, _, iou in scored] == [(1, 1.0), (2, 0.5)]
    res = mp.breakdown(truth, scored)
    assert res["all"] == {"n": 2, "mIoU": 0.75, "filled_box": 0.75}
    assert res["long_side"] == {"0-8": {"n": 1, "mIoU": 1.0, "filled_box": 1.0},
                                "16-32": {"n": 1, "mIoU": 0.5, "filled_box": 0.5}}
    assert res["category"]["b"] == {"n": 1, "mIoU": 0.5, "filled_box": 0.5}


def test_cli_writes_the_picture(bench, tmp_path, capsys):
    _files(tmp_path)
    bench["mal_probe"].main([str(tmp_path / "t.json"), str(tmp_path / "l.json"), "--images", str(tmp_path),
                             "--png", str(tmp_path / "p.png"), "--min-side", "10"])
    out = capsys.readouterr().out
    assert "2 boxes scored: mIoU 0.750, filled box 0.750" in out
    assert Image.open(tmp_path / "p.png").size == (360, 120)  # one box has long side >= 10
