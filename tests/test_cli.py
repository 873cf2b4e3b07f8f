"""The ``omniseg`` command line, run in-process: help, data synth/stats/convert, eval, viz, demo, bad input."""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from omniseg.cli import COMMANDS, main
from omniseg.data.formats.captions import read_coco_captions
from omniseg.data.formats.coco import read_coco_instances, read_coco_results, write_coco_results
from omniseg.data.formats.narratives import iter_narratives
from omniseg.data.formats.openimages import read_openimages
from omniseg.data.formats.panoptic import read_coco_panoptic
from omniseg.data.load import load_dataset
from omniseg.data.stats import dataset_stats
from omniseg.evaluation.perturb import as_predictions
from omniseg.ops.rle import rle_decode

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
    with pytest.raises(SystemExit, match="unknown split 'nope'"):
        main(["eval", str(synth), "--pred", str(perfect_pred), "--split", "nope"])


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
    # --train-iters 0: the toy-model step alone takes ~20 s even for one iteration (see the slow test)
    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--num-images", "4", "--workers", "1", "--no-progress", "--train-iters", "0"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    _check_demo_output(text, out)
    assert "[4/5]" not in text and not (out / "train_box_to_mask").exists()
    # re-running resumes on the same folder and gives the same numbers
    assert main(argv) == 0
    again = capsys.readouterr().out
    assert [ln for ln in again.splitlines() if "ground truth vs" in ln] == [
        ln for ln in text.splitlines() if "ground truth vs" in ln
    ]


def test_demo_without_split(tmp_path: Path, capsys) -> None:
    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--num-images", "4", "--workers", "1", "--no-progress", "--train-iters", "0",
            "--split", ""]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "no split" in text and "mask_AP/base" not in text
    _check_demo_output(text, out)


@pytest.mark.slow
def test_demo_with_toy_model(tmp_path: Path, capsys) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--num-images", "4", "--workers", "1", "--no-progress"]) == 0
    text = capsys.readouterr().out
    _check_demo_output(text, out)
    assert "[4/5] training the toy model" in text and (out / "viz_box_to_mask" / "index.html").is_file()


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
