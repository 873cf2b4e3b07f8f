"""``omniseg segment``: inputs (files, folders, globs), prompt boxes (--boxes, --boxes-json), the two
output forms (COCO results + categories file, or a folder with drawings), skips and usage errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from omniseg.api import resolve_device
from omniseg.cli import main as cli_main
from omniseg.commands.segment import category_table
from omniseg.data.synth.world import SynthConfig, generate_image
from omniseg.errors import UserError


@pytest.fixture(scope="module")
def trained(tiny_box_to_mask):
    return tiny_box_to_mask


def _segment(trained, argv: list[str], capsys) -> tuple[int, str, str]:
    rc = cli_main(["segment", *argv, "--checkpoint", str(trained[0])])
    out, err = capsys.readouterr()
    return rc, out, err


def _usage(argv: list[str], capsys) -> str:
    """argparse's usage error: exit 2, the message (returned) on stderr's last line."""
    with pytest.raises(SystemExit) as info:
        cli_main(argv)
    assert info.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def _images(folder: Path, names: list[str], size: tuple[int, int] = (96, 96)) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    for k, name in enumerate(names):
        image, _ = generate_image(SynthConfig(seed=k, num_images=1, image_size=max(size)), 0)
        Image.fromarray(image[:size[0], :size[1]]).save(folder / name)
    return [folder / n for n in names]


def test_segment_command(trained, tmp_path, capsys):
    out, _ = trained
    image, _ = generate_image(SynthConfig(seed=5, num_images=1, image_size=96), 0)
    path = tmp_path / "img.png"
    Image.fromarray(image).save(path)
    rc = cli_main(["segment", str(path), "--checkpoint", str(out), "--boxes", "1,2,40,50; 50,50,90,90",
                   "--vocabulary", "first, second", "--out", str(tmp_path / "seg"), "--min-score", "0"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "2 instance(s)" in text and "first" in text and "second" in text
    preds = json.loads((tmp_path / "seg" / "predictions.json").read_text())
    assert [i["text"] for i in preds[0]["instances"]] == ["first", "second"]
    assert preds[0]["instances"][0]["box"] == [1.0, 2.0, 40.0, 50.0]
    assert (tmp_path / "seg" / "img.png").exists()
    assert preds[0]["drawing"] == "img.png"




@pytest.mark.parametrize(("flag", "value", "says"), [
    ("--boxes", "a,b,c,d", "'a,b,c,d' is not x0,y0,x1,y1"),
    ("--boxes", "1,2,3", "'1,2,3' is not x0,y0,x1,y1"),
    ("--boxes", "1,2,30,40; 5,5,1,1", "'5,5,1,1' is not x0,y0,x1,y1"),
    ("--boxes", "1,2,nan,40", "'1,2,nan,40' is not"),
    ("--boxes", "1,,2,30,40", "is not x0,y0,x1,y1"),
    ("--boxes", ";", "no box"),
    ("--vocabulary", "", "no class name"),
    ("--vocabulary", " , ", "no class name"),
    ("--min-score", "nan", "must be a number in [0, 1]"),
    ("--min-score", "1.5", "must be a number in [0, 1]"),
    ("--min-score", "x", "expected a number"),
])
def test_segment_bad_arguments_are_usage_errors(flag, value, says, image_file, capsys):
    err = _usage(["segment", str(image_file), "--checkpoint", "unused", f"{flag}={value}"], capsys)
    assert err.startswith(f"omniseg segment: error: argument {flag}: ") and says in err


def test_segment_box_outside_the_image_is_an_error(trained, image_file, tmp_path, capsys):
    out = tmp_path / "seg"
    rc, _, err = _segment(trained, [str(image_file), "--boxes", "1,2,30,40; 200,200,300,300", "--out", str(out)],
                          capsys)
    assert rc == 1
    assert err.strip() == (f"omniseg segment: error: {image_file}: box [200, 200, 300, 300] does not overlap "
                           "the image (96 x 96 pixels)")
    assert not out.exists()  # nothing written


def test_segment_box_outside_one_image_is_skipped_under_skip(trained, image_file, tmp_path, capsys):
    """--on-bad-record skip: an image the box misses (1 x 1 pixels) is counted, the others are written."""
    tiny = tmp_path / "tiny.png"
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(tiny)
    out = tmp_path / "seg"
    rc, text, err = _segment(trained, [str(image_file), str(tiny), "--boxes", "10,10,40,40", "--out", str(out),
                                       "--on-bad-record", "skip"], capsys)
    assert rc == 0, err
    assert "skipped 1 bad record(s)" in text and f"e.g. {tiny}: --boxes: box [10, 10, 40, 40] does not overlap" in text
    assert [p["file"] for p in json.loads((out / "predictions.json").read_text())] == [str(image_file)]
    assert sorted(f.name for f in out.iterdir()) == ["img.png", "predictions.json"]


def test_segment_box_partly_outside_is_clipped(trained, image_file, tmp_path, capsys):
    out = tmp_path / "seg"
    rc, _, _ = _segment(trained, [str(image_file), "--boxes=-10,20,50,500", "--min-score", "0", "--out", str(out)],
                        capsys)
    assert rc == 0
    inst = json.loads((out / "predictions.json").read_text())[0]["instances"]
    assert [i["box"] for i in inst] == [[0.0, 20.0, 50.0, 96.0]]


def test_segment_same_file_names_get_distinct_drawings(trained, image_file, tmp_path, capsys):
    a, b = tmp_path / "a" / "x.png", tmp_path / "b" / "x.png"
    for p in (a, b):
        p.parent.mkdir()
        shutil.copy(image_file, p)
    # b is drawn with a different box, so the two drawings differ
    Image.fromarray(np.zeros((96, 96, 3), np.uint8)).save(b)
    out = tmp_path / "seg"
    rc, _, _ = _segment(trained, [str(a), str(b), str(a), "--boxes", "1,2,30,40", "--out", str(out)], capsys)
    assert rc == 0
    preds = json.loads((out / "predictions.json").read_text())
    assert [p["drawing"] for p in preds] == ["x.png", "x_1.png", "x_2.png"]
    assert sorted(f.name for f in out.iterdir()) == ["predictions.json", "x.png", "x_1.png", "x_2.png"]
    with Image.open(out / "x.png") as da, Image.open(out / "x_1.png") as db:
        assert not np.array_equal(np.asarray(da), np.asarray(db))


@pytest.mark.parametrize("kind", ["missing", "not an image", "truncated"])
def test_segment_unreadable_image(kind, trained, image_file, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    if kind == "not an image":
        bad.write_text("hello")
    elif kind == "truncated":
        bad.write_bytes(image_file.read_bytes()[:60])
    out = tmp_path / "seg"
    rc, _, err = _segment(trained, [str(image_file), str(bad), "--boxes", "1,2,30,40", "--out", str(out)], capsys)
    assert rc == 1
    assert len(err.strip().splitlines()) == 1 and err.startswith(f"omniseg segment: error: {bad}: ")
    assert not out.exists()  # the first image's drawing is removed with the failed run
    # skipped and counted with --on-bad-record skip
    rc, text, _ = _segment(trained, [str(image_file), str(bad), "--boxes", "1,2,30,40", "--out", str(out),
                                     "--on-bad-record", "skip"], capsys)
    assert rc == 0
    assert "skipped 1 bad record(s)" in text and f"e.g. {bad}: image: " in text
    assert [p["file"] for p in json.loads((out / "predictions.json").read_text())] == [str(image_file)]


def test_segment_device_without_cuda(trained, image_file, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    rc, _, err = _segment(trained, [str(image_file), "--boxes", "1,2,30,40", "--device", "cuda"], capsys)
    assert rc == 1 and err.strip() == ("omniseg segment: error: --device: 'cuda', but CUDA is not available "
                                       "on this machine (use auto or cpu)")
    err = _usage(["segment", str(image_file), "--checkpoint", "unused", "--device", "gpu"], capsys)
    assert err == "omniseg segment: error: argument --device: 'gpu' is not a device name (e.g. cpu, cuda, cuda:1)"
    with pytest.raises(UserError, match="device: 'gpu' is not a device"):
        resolve_device("gpu")
    with pytest.raises(UserError, match="CUDA is not available"):
        resolve_device("cuda:0")
    assert resolve_device("cpu") == torch.device("cpu")


# ----------------------------------------------------------------------------- inputs


def test_segment_folders_and_globs(trained, tmp_path, capsys):
    """A folder gives its images sorted (other files ignored), a quoted glob is expanded here; the
    COCO image ids are 1..N in input order; a folder or pattern without images is an error."""
    a = _images(tmp_path / "a", ["y.png", "x.jpg"])
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    b = _images(tmp_path / "b", ["m.png", "n.png", "o.bmp"])
    out = tmp_path / "preds.json"
    rc, text, err = _segment(trained, [str(tmp_path / "a"), str(tmp_path / "b" / "*.png"), "--boxes", "1,2,30,40",
                                       "--out", str(out), "--batch-size", "2"], capsys)
    assert rc == 0, err
    ids = json.loads((tmp_path / "preds.categories.json").read_text())["images"]
    assert [(i["id"], i["file_name"]) for i in ids] == [(1, str(a[1])), (2, str(a[0])), (3, str(b[0])), (4, str(b[1]))]
    assert sorted({r["image_id"] for r in json.loads(out.read_text())}) == [1, 2, 3, 4]
    assert "4 image(s), 4 instance(s) written to" in text
    (tmp_path / "empty").mkdir()
    for path, says in [(tmp_path / "empty", "folder matches no image"), (tmp_path / "b" / "*.gif", "pattern matches no image")]:
        rc, _, err = _segment(trained, [str(a[0]), str(path), "--boxes", "1,2,30,40", "--out", str(tmp_path / "o"),
                                        "--on-bad-record", "skip"], capsys)
        assert rc == 1 and err.strip() == f"omniseg segment: error: {path}: {says} (.jpg, .jpeg, .png, .bmp, .webp, .tif, .tiff)"
    assert not (tmp_path / "o").exists()


def test_segment_progress_lines_when_not_a_terminal(trained, tmp_path, capsys):
    """More than 20 images: no per-image listing but a plain progress line every ~10%."""
    _images(tmp_path / "many", [f"{k:02d}.png" for k in range(22)], size=(24, 32))
    rc, text, _ = _segment(trained, [str(tmp_path / "many"), "--boxes", "1,2,20,20", "--out", str(tmp_path / "p.json"),
                                     "--batch-size", "8"], capsys)
    assert rc == 0
    progress = [line for line in text.splitlines() if line.startswith("segment: ")]
    assert [line.split(" images")[0] for line in progress] == [f"segment: {k}/22" for k in (2, 4, 6, 8, 10, 12, 14, 16,
                                                                                           18, 20, 22)]
    assert "instance(s)\n" not in text.split("segment: 22/22")[0]  # no per-image lines
    assert len(json.loads((tmp_path / "p.json").read_text())) == 22


# ----------------------------------------------------------------------------- COCO results


def _coco_gt(tmp_path: Path, files: dict[str, int]) -> tuple[Path, list]:
    """A COCO ground truth for images (name -> id) made by the synthetic world, masks included."""
    from omniseg.data.formats.coco import to_coco_dict
    from omniseg.data.records import ImageRecord, RecordSet
    from omniseg.data.synth.lexicon import categories

    records = []
    for k, (name, iid) in enumerate(files.items()):
        image, rec = generate_image(SynthConfig(seed=k, num_images=1, image_size=96), 0)
        Image.fromarray(image).save(tmp_path / name)
        records.append(ImageRecord(image_id=iid, file_name=f"val/{name}", width=96, height=96,
                                   instances=rec.instances))
    data = to_coco_dict(RecordSet(records=records, categories=categories()))
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(data))
    return path, data


def test_segment_coco_results_read_by_pycocotools_and_eval(trained, tmp_path, capsys):
    """Prompt boxes = the ground-truth boxes: box AP is exactly 1 (one box per object, score 1);
    mask AP as pycocotools computes it on the same files."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt, data = _coco_gt(tmp_path, {"a.png": 11, "b.png": 22})
    out = tmp_path / "res" / "preds.json"
    rc, text, err = _segment(trained, [str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--boxes-json", str(gt),
                                       "--out", str(out), "--min-score", "0"], capsys)
    assert rc == 0, err
    results = json.loads(out.read_text())
    assert len(results) == len(data["annotations"])
    assert all(isinstance(r["segmentation"]["counts"], str) for r in results)
    assert sorted((r["image_id"], r["category_id"], r["bbox"]) for r in results) == sorted(
        (a["image_id"], a["category_id"], a["bbox"]) for a in data["annotations"])
    cats = json.loads((tmp_path / "res" / "preds.categories.json").read_text())["categories"]
    assert cats == [{"id": c["id"], "name": c["name"]} for c in data["categories"]]
    coco_gt = COCO(str(gt))
    coco_dt = coco_gt.loadRes(str(out))
    assert len(coco_dt.anns) == len(results)
    expected = {}
    for iou in ("bbox", "segm"):
        ev = COCOeval(coco_gt, coco_dt, iou)
        ev.evaluate(), ev.accumulate(), ev.summarize()
        expected[iou] = ev.stats[0]
    assert expected["bbox"] == pytest.approx(1.0) and 0 < expected["segm"] < 1  # masks of a 2-step model
    capsys.readouterr()
    assert cli_main(["eval", str(gt), "--pred", str(out), "--out", "-"]) == 0
    report = json.loads(capsys.readouterr().out)["metrics"]
    assert report["box_AP"] == pytest.approx(1.0) and report["mask_AP"] == pytest.approx(expected["segm"], abs=1e-6)


def test_segment_boxes_json_matching_and_skips(trained, tmp_path, capsys):
    """Images match --boxes-json entries by file name: an input without an entry is skipped and
    counted, an entry without an input is counted; box classes come from category_id (named by the
    file's categories), a box without one is "object" (an id of its own)."""
    _images(tmp_path, ["a.png", "b.png", "d.png"])
    boxes = {"images": [{"id": 7, "file_name": "x/a.png"}, {"id": 9, "file_name": "b.png"},
                        {"id": 11, "file_name": "c.png"}],
             "annotations": [{"image_id": 7, "bbox": [1, 2, 30, 40], "category_id": 3},
                             {"image_id": 7, "bbox": [50, 50, 10, 10], "category_id": 5},
                             {"image_id": 9, "bbox": [5, 5, 20, 20]},
                             {"image_id": 9, "bbox": [0, 0, 96, 96], "category_id": 3, "iscrowd": 1}],
             "categories": [{"id": 3, "name": "red ring"}, {"id": 5, "name": "blue star"}]}
    (tmp_path / "boxes.json").write_text(json.dumps(boxes))
    out = tmp_path / "p.json"
    rc, text, err = _segment(trained, [str(tmp_path / n) for n in ("a.png", "b.png", "d.png")]
                             + ["--boxes-json", str(tmp_path / "boxes.json"), "--out", str(out), "--min-score", "0",
                                "--overlays", str(tmp_path / "draw")], capsys)
    assert rc == 0, err
    cats = {c["name"]: c["id"] for c in json.loads((tmp_path / "p.categories.json").read_text())["categories"]}
    assert cats["red ring"] == 3 and cats["blue star"] == 5 and cats["object"] == max(cats.values())  # a new id
    got = [(r["image_id"], r["category_id"], r["bbox"]) for r in json.loads(out.read_text())]
    assert got == [(7, 3, [1, 2, 30, 40]), (7, 5, [50, 50, 10, 10]), (9, cats["object"], [5, 5, 20, 20])]
    assert "red ring" in text and "object" in text
    assert f"skipped 1 bad record(s):\n  1 x no entry in {tmp_path / 'boxes.json'}" in text
    assert "1 image(s) of " in text and "are not among the inputs" in text
    assert sorted(p.name for p in (tmp_path / "draw").iterdir()) == ["a.png", "b.png"]
    # --boxes with --boxes-json, or --vocabulary with it: usage errors
    for extra in (["--boxes", "1,1,5,5"], ["--vocabulary", "a"]):
        rc, _, err = _segment(trained, [str(tmp_path / "a.png"), "--boxes-json", str(tmp_path / "boxes.json"),
                                        *extra], capsys)
        assert rc == 2 and err.startswith("omniseg segment: error: --boxes") and extra[0] in err


def test_segment_gt_gives_ids_and_categories(trained, tmp_path, capsys):
    """--gt: image ids by file name, category ids by class name; other names get free ids after them."""
    _images(tmp_path, ["a.png"])
    gt = {"images": [{"id": 40, "file_name": "a.png", "width": 96, "height": 96}], "annotations": [],
          "categories": [{"id": 1, "name": "second"}]}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    rc, _, err = _segment(trained, [str(tmp_path / "a.png"), "--boxes", "1,2,40,50; 50,50,90,90", "--vocabulary",
                                    "first, second", "--gt", str(tmp_path / "gt.json"), "--out",
                                    str(tmp_path / "p.json"), "--min-score", "0"], capsys)
    assert rc == 0, err
    assert [(r["image_id"], r["category_id"]) for r in json.loads((tmp_path / "p.json").read_text())] == [(40, 2), (40, 1)]


def test_category_table():
    assert category_table({}, ["b", "a"], []) == {"b": 1, "a": 2}
    assert category_table({5: "a", 1: "z"}, ["b", "a", "c"], []) == {"z": 1, "a": 5, "b": 6, "c": 3}


def test_segment_unreadable_image_in_coco_form(trained, tmp_path, capsys):
    """Skip: the others are written with their own ids; error: no results, no categories, no drawings."""
    good = _images(tmp_path, ["a.png", "c.png"])
    bad = tmp_path / "b.png"
    bad.write_text("not a png")
    inputs = [str(good[0]), str(bad), str(good[1])]
    out = tmp_path / "res" / "p.json"
    argv = [*inputs, "--boxes", "1,2,30,40", "--out", str(out), "--overlays", str(tmp_path / "draw")]
    rc, _, err = _segment(trained, argv, capsys)
    assert rc == 1 and err.startswith(f"omniseg segment: error: {bad}: ")
    assert not (tmp_path / "res").exists() and not (tmp_path / "draw").exists()
    rc, text, _ = _segment(trained, [*argv, "--on-bad-record", "skip", "--batch-size", "1"], capsys)
    assert rc == 0 and "skipped 1 bad record(s)" in text
    assert [r["image_id"] for r in json.loads(out.read_text())] == [1, 3]
    assert sorted(p.name for p in (tmp_path / "draw").iterdir()) == ["a.png", "c.png"]


def test_segment_output_checks(trained, image_file, tmp_path, capsys):
    rc, _, err = _segment(trained, [str(image_file), "--boxes", "1,2,30,40", "--out", str(tmp_path / "o"),
                                    "--overlays", str(tmp_path / "d")], capsys)
    assert rc == 2 and "--overlays goes with --out FILE.json" in err
    rc, _, err = _segment(trained, [str(image_file), "--boxes", "1,2,30,40", "--out", str(tmp_path / "p.json"),
                                    "--overlays", str(image_file.parent)], capsys)
    assert rc == 2 and "holds input images" in err


# ----------------------------------------------------------------------------- --task semantic


@pytest.fixture
def fake(monkeypatch):
    """``omniseg segment --checkpoint ANY`` loads the fake per-pixel model of tests/test_api.py
    (scores: the image's red / green / blue channels); returns (make segmenter, colour image, its labels)."""
    from omniseg.api import Segmenter
    from tests.test_api import colour_image, fake_segmenter

    made = {"semantic": True, "categories": True}
    monkeypatch.setattr(Segmenter, "from_checkpoint", classmethod(lambda cls, *a, **k: fake_segmenter(**made)))
    return made, *colour_image()


def _semantic(argv: list[str], capsys) -> tuple[int, str, str]:
    rc = cli_main(["segment", *argv, "--checkpoint", "fake", "--task", "semantic"])
    out, err = capsys.readouterr()
    return rc, out, err


def _read_png(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        assert img.mode == "P"
        return np.asarray(img).astype(int) - 1


def test_segment_semantic_folder_output(fake, tmp_path, capsys):
    """Per image: a label PNG that reads back as the label map (value k + 1, 0: none), its sidecar,
    a drawing with the legend; predictions.json lists them relative to the folder."""
    _, image, labels = fake
    Image.fromarray(image).save(tmp_path / "c.png")
    Image.fromarray(image[::-1].copy()).save(tmp_path / "d.png")
    out = tmp_path / "seg"
    rc, text, err = _semantic([str(tmp_path / "c.png"), str(tmp_path / "d.png"), "--out", str(out)], capsys)
    assert rc == 0, err
    assert f"{tmp_path / 'c.png'}: 3 class(es): blue 53%, green 24%, red 23%" in text
    assert np.array_equal(_read_png(out / "labels" / "c.png"), labels)
    assert np.array_equal(_read_png(out / "labels" / "d.png"), labels[::-1])
    meta = json.loads((out / "labels" / "c.json").read_text())
    assert [(c["value"], c["name"], c["pixels"]) for c in meta["classes"]] == [(1, "red", 30), (2, "green", 31),
                                                                              (3, "blue", 69)]
    assert meta["labels"] == "c.png" and meta["image"] == str(tmp_path / "c.png") and meta["min_score"] is None
    with Image.open(out / "c.png") as drawing:
        assert drawing.size[0] > 10 and drawing.size[1] >= 13
        legend = np.asarray(drawing.convert("RGB"))[:, 10:]
    for c in meta["classes"]:  # every class present has its swatch in the legend
        assert (legend == np.array(c["color"])).all(axis=2).sum() > 10
    with Image.open(out / "labels" / "c.png") as img:
        assert img.getpalette()[3:12] == [v for c in meta["classes"] for v in c["color"]]
    listing = json.loads((out / "predictions.json").read_text())
    assert listing["task"] == "semantic" and [c["name"] for c in listing["classes"]] == ["red", "green", "blue"]
    assert listing["images"][1] == {"file": str(tmp_path / "d.png"), "labels": "labels/d.png",
                                    "sidecar": "labels/d.json", "overlay": "d.png"}
    assert sorted(p.name for p in out.iterdir()) == ["c.png", "d.png", "labels", "predictions.json"]


def test_segment_semantic_json_output_vocabulary_threshold_and_skips(fake, tmp_path, capsys):
    """--out preds.json: label PNGs in preds.labels/, drawings only with --overlays; --min-score and
    --vocabulary reach the model; an unreadable image is counted under skip and undoes the run otherwise."""
    _, image, _ = fake
    Image.fromarray(image).save(tmp_path / "c.png")
    (tmp_path / "bad.png").write_text("not a png")
    out = tmp_path / "res" / "preds.json"
    argv = [str(tmp_path / "c.png"), str(tmp_path / "bad.png"), "--out", str(out), "--overlays",
            str(tmp_path / "draw"), "--vocabulary", "green, red", "--min-score", "0.5"]
    rc, _, err = _semantic(argv, capsys)
    assert rc == 1 and err.startswith(f"omniseg segment: error: {tmp_path / 'bad.png'}: ")
    assert not (tmp_path / "res").exists() and not (tmp_path / "draw").exists()
    rc, text, _ = _semantic([*argv, "--on-bad-record", "skip", "--batch-size", "1"], capsys)
    assert rc == 0 and "skipped 1 bad record(s)" in text
    got = _read_png(tmp_path / "res" / "preds.labels" / "c.png")
    want = np.full((13, 10), -1)  # green 150 and red 200 pass 0.5 (127.5); blue is not asked for
    want[:6, :5], want[:6, 5:] = 1, 0
    want[0, 0] = -1  # (100, 120, 0): best 120 < 127.5
    assert np.array_equal(got, want)
    listing = json.loads(out.read_text())
    assert listing["min_score"] == 0.5 and [c["name"] for c in listing["classes"]] == ["green", "red"]
    assert listing["images"] == [{"file": str(tmp_path / "c.png"), "labels": "preds.labels/c.png",
                                  "sidecar": "preds.labels/c.json", "overlay": "../draw/c.png"}]
    assert sorted(p.name for p in (tmp_path / "draw").iterdir()) == ["c.png"]


def test_segment_semantic_errors(fake, image_file, tmp_path, capsys):
    made = fake[0]
    out = tmp_path / "seg"
    made["semantic"] = False
    rc, _, err = _semantic([str(image_file), "--out", str(out)], capsys)
    assert rc == 2 and err.strip() == ("omniseg segment: error: recipe 'fake_pixels' has no per-pixel output (it "
                                       "predicts instances); semantic segmentation needs an openseg, lseg or align model")
    assert not out.exists()
    made["semantic"], made["categories"] = True, False
    rc, _, err = _semantic([str(image_file), "--out", str(out)], capsys)
    assert rc == 2 and "no classes of its own" in err and not out.exists()
    rc, _, _ = _semantic([str(image_file), "--out", str(out), "--vocabulary", "red"], capsys)
    assert rc == 0 and (out / "labels" / "img.png").exists()
    for flag in (["--boxes", "1,2,30,40"], ["--gt", str(tmp_path / "gt.json")]):
        rc, _, err = _semantic([str(image_file), *flag], capsys)
        assert rc == 2 and f"{flag[0]} goes with --task instance" in err
    err = _usage(["segment", str(image_file), "--checkpoint", "x", "--task", "depth"], capsys)
    assert "argument --task: invalid choice: 'depth'" in err


def test_segment_semantic_on_an_instance_checkpoint(trained, image_file, tmp_path, capsys):
    rc, _, err = _segment(trained, [str(image_file), "--task", "semantic", "--out", str(tmp_path / "s")], capsys)
    assert rc == 2 and "recipe 'box_to_mask' has no per-pixel output" in err and not (tmp_path / "s").exists()
