"""``omniseg segment --task panoptic``: the COCO panoptic PNGs + JSON read back as the predicted segments, the two
output forms, --min-score, skips and one-line errors (a fake panoptic model; the real one: tests/recipes)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from omniseg.api import Segmenter
from omniseg.cli import main as cli_main
from omniseg.commands.segment_panoptic import segments_info
from omniseg.data.formats.panoptic import read_coco_panoptic, rgb_to_id
from omniseg.modeling.predictions import ImagePrediction, InstancePredictions
from omniseg.recipes.contract import Recipe, RunInfo

#: the fake model's classes (ids 1..3); "sky" is stuff
CATEGORIES = [{"id": 1, "name": "red ring", "isthing": True}, {"id": 2, "name": "blue star", "isthing": True},
              {"id": 3, "name": "sky", "isthing": False}]


def hand_segments(h: int, w: int) -> tuple[np.ndarray, list[dict]]:
    """Index map (-1: none) and segments worked by hand: sky = the top 4 rows, two red rings (left and right
    3 x 3 blocks at rows 5-7), a blue star of score 0.2 (rows 9-10, columns 0-1); the rest no segment."""
    index = np.full((h, w), -1)
    index[:4] = 0
    index[5:8, 0:3], index[5:8, 5:8], index[9:11, 0:2] = 1, 2, 3
    segs = [{"text": "sky", "label": 2, "isthing": False, "score": 0.9},
            {"text": "red ring", "label": 0, "isthing": True, "score": 0.8},
            {"text": "red ring", "label": 0, "isthing": True, "score": 0.7},
            {"text": "blue star", "label": 1, "isthing": True, "score": 0.2}]
    return index, segs


class FakePanoptic:
    """A predictor returning :func:`hand_segments` for each image (names from the vocabulary when given)."""

    def __init__(self, panoptic: bool = True):
        self.panoptic = panoptic

    def __call__(self, images, image_sizes, output_sizes, vocabulary=None, boxes=None):
        out = []
        for h, w in output_sizes:
            index, segs = hand_segments(h, w)
            texts = list(vocabulary or [c["name"] for c in CATEGORIES])
            segs = [dict(s, text=texts[s["label"]]) for s in segs]
            empty = InstancePredictions(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long))
            out.append(ImagePrediction(empty, texts, panoptic=torch.from_numpy(index) if self.panoptic else None,
                                       segments=segs if self.panoptic else None))
        return out


@pytest.fixture
def fake(monkeypatch):
    made = {"panoptic": True}

    def build(cls, *args, **kwargs):
        def unused(*a):
            raise AssertionError("not called by the Segmenter")

        recipe = Recipe(name="fake_panoptic", config=object, build_model=unused, train_data=unused, eval_fn=unused,
                        predictor=lambda model, cfg, info: FakePanoptic(made["panoptic"]), pad_divisor=8)
        return Segmenter(torch.nn.Identity(), recipe, None, RunInfo(recipe.name, CATEGORIES))

    monkeypatch.setattr(Segmenter, "from_checkpoint", classmethod(build))
    return made


def _panoptic(argv: list[str], capsys) -> tuple[int, str, str]:
    rc = cli_main(["segment", *argv, "--checkpoint", "fake", "--task", "panoptic"])
    out, err = capsys.readouterr()
    return rc, out, err


def _image(path: Path, h: int = 13, w: int = 10) -> Path:
    Image.fromarray(np.full((h, w, 3), 128, np.uint8)).save(path)
    return path


def test_segments_info_by_hand():
    index, segs = hand_segments(13, 10)
    ids, infos = segments_info(index, segs, {"red ring": 1, "blue star": 2, "sky": 3}, min_score=0.5)
    assert infos == [
        {"id": 1, "category_id": 3, "isthing": 0, "area": 40, "bbox": [0, 0, 10, 4], "score": 0.9, "iscrowd": 0},
        {"id": 2, "category_id": 1, "isthing": 1, "area": 9, "bbox": [0, 5, 3, 3], "score": 0.8, "iscrowd": 0},
        {"id": 3, "category_id": 1, "isthing": 1, "area": 9, "bbox": [5, 5, 3, 3], "score": 0.7, "iscrowd": 0}]
    want = np.zeros((13, 10), int)
    want[:4], want[5:8, 0:3], want[5:8, 5:8] = 1, 2, 3  # the blue star (0.2) is below 0.5: no segment
    assert np.array_equal(ids, want)


def test_folder_output_round_trips_through_the_panoptic_reader(fake, tmp_path, capsys):
    _image(tmp_path / "a.png")
    _image(tmp_path / "b.png", 12, 16)
    out = tmp_path / "seg"
    rc, text, err = _panoptic([str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--out", str(out)], capsys)
    assert rc == 0, err
    assert f"{tmp_path / 'a.png'}: 4 segment(s): sky 31%, red ring 7%, red ring 7%, blue star 3%" in text
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png", "panoptic", "panoptic.json"]
    data = json.loads((out / "panoptic.json").read_text())
    assert data["categories"] == [{"id": 1, "name": "red ring", "isthing": 1}, {"id": 2, "name": "blue star",
                                  "isthing": 1}, {"id": 3, "name": "sky", "isthing": 0}]
    assert data["images"][1] == {"id": 2, "file_name": "b.png", "path": str(tmp_path / "b.png"), "width": 16,
                                 "height": 12}
    for ann, (h, w) in zip(data["annotations"], ((13, 10), (12, 16))):
        with Image.open(out / "panoptic" / ann["file_name"]) as png:
            ids = rgb_to_id(np.asarray(png.convert("RGB")))
        index, segs = hand_segments(h, w)
        assert np.array_equal(ids, index + 1)  # every segment kept, numbered in order
        assert [(s["id"], s["category_id"], s["isthing"], s["area"]) for s in ann["segments_info"]] == [
            (k + 1, {"red ring": 1, "blue star": 2, "sky": 3}[s["text"]], int(s["isthing"]), int((index == k).sum()))
            for k, s in enumerate(segs)]
    back = read_coco_panoptic(out / "panoptic.json", out / "panoptic", progress=False)
    rec = back.records[0]
    assert [(s.category_id, s.is_thing) for s in rec.segments] == [(3, False), (1, True), (1, True), (2, True)]
    from omniseg.ops.rle import rle_decode

    assert np.array_equal(rle_decode(rec.segments[2].mask), hand_segments(13, 10)[0] == 2)
    assert [c.isthing for c in back.categories] == [True, True, False]


def test_json_output_vocabulary_min_score_overlays_and_skips(fake, tmp_path, capsys):
    _image(tmp_path / "a.png")
    (tmp_path / "bad.png").write_text("not a png")
    out = tmp_path / "res" / "preds.json"
    argv = [str(tmp_path / "a.png"), str(tmp_path / "bad.png"), "--out", str(out), "--overlays",
            str(tmp_path / "draw"), "--vocabulary", "hoop, star, sky", "--min-score", "0.75"]
    rc, _, err = _panoptic(argv, capsys)
    assert rc == 1 and err.startswith(f"omniseg segment: error: {tmp_path / 'bad.png'}: ") and err.count("\n") == 1
    assert not (tmp_path / "res").exists() and not (tmp_path / "draw").exists()
    rc, text, _ = _panoptic([*argv, "--on-bad-record", "skip"], capsys)
    assert rc == 0 and "skipped 1 bad record(s)" in text
    data = json.loads(out.read_text())
    assert [c["name"] for c in data["categories"]] == ["hoop", "star", "sky"]
    assert [c["isthing"] for c in data["categories"]] == [1, 1, 0]  # "sky" is the checkpoint's stuff class
    assert [(s["category_id"], s["score"]) for s in data["annotations"][0]["segments_info"]] == [(3, 0.9), (1, 0.8)]
    assert data["info"]["min_score"] == 0.75
    with Image.open(tmp_path / "res" / "preds" / "a.png") as png:
        ids = rgb_to_id(np.asarray(png.convert("RGB")))
    assert sorted(np.unique(ids).tolist()) == [0, 1, 2] and (ids[5:8, 5:8] == 0).all()
    assert sorted(p.name for p in (tmp_path / "draw").iterdir()) == ["a.png"]


def test_errors_are_one_line(fake, tmp_path, capsys):
    img = _image(tmp_path / "a.png")
    fake["panoptic"] = False
    rc, _, err = _panoptic([str(img), "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and err == ("omniseg segment: error: recipe 'fake_panoptic' has no panoptic output; panoptic "
                               "segmentation needs a model that segments things and stuff (vloss)\n")
    assert not (tmp_path / "o").exists()
    fake["panoptic"] = True
    for flag in (["--boxes", "1,2,3,4"], ["--gt", str(tmp_path / "gt.json")]):
        rc, _, err = _panoptic([str(img), *flag], capsys)
        assert rc == 2 and f"{flag[0]} goes with --task instance (panoptic segmentation labels" in err
    (tmp_path / "o2").mkdir()
    rc, _, err = _panoptic([str(img), "--out", str(tmp_path / "o2" / "p.json"), "--overlays", str(tmp_path)],
                           capsys)
    assert rc == 2 and "holds input images" in err and err.count("\n") == 1
