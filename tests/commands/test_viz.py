"""``omniseg viz``: drawings never land in (or replace) the input dataset."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from omniseg.cli import main
from omniseg.data.synth.generate import SynthConfig, generate_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("vz") / "s"
    generate_dataset(SynthConfig(seed=1, num_images=2, image_size=32), root, progress=False)
    return root


@pytest.mark.parametrize("out", ["{s}", "{s}/images", "{s}/x", "{s}/images/../images/z", "{s}/instances.json"])
def test_out_overlapping_the_dataset_is_refused(dataset: Path, capsys, out: str) -> None:
    before = sorted(os.listdir(dataset)), sorted(os.listdir(dataset / "images"))
    out = out.format(s=dataset)
    assert main(["viz", str(dataset), "--out", out, "--no-progress"]) == 2
    assert capsys.readouterr().err.startswith(f"omniseg viz: error: --out: {out} is an input of this command")
    assert (sorted(os.listdir(dataset)), sorted(os.listdir(dataset / "images"))) == before


def test_out_whose_images_folder_is_the_input_is_refused(dataset: Path, capsys) -> None:
    """``viz s/images --out s``: the drawings would go to s/images."""
    assert main(["viz", str(dataset / "images"), "--out", str(dataset), "--no-progress"]) == 2
    assert "is an input of this command" in capsys.readouterr().err


def test_out_beside_the_dataset_works(dataset: Path, capsys) -> None:
    out = dataset.parent / "v"
    assert main(["viz", str(dataset), "--out", str(out), "--no-progress"]) == 0
    assert (out / "index.html").is_file() and len(os.listdir(out / "images")) == 2


def test_rerun_into_the_same_out_keeps_only_this_runs_drawings(dataset: Path, tmp_path: Path, capsys) -> None:
    """A second run (--limit 1) replaces the drawings folder: no stale drawing of the first run stays."""
    out = tmp_path / "v"
    assert main(["viz", str(dataset), "--out", str(out), "--no-progress"]) == 0
    first = sorted(os.listdir(out / "images"))
    assert len(first) == 2
    (out / "notes.txt").write_text("mine")  # the user's file beside the drawings is kept
    assert main(["viz", str(dataset), "--out", str(out), "--no-progress", "--limit", "1"]) == 0
    assert sorted(os.listdir(out / "images")) == first[:1]
    assert sorted(os.listdir(out)) == ["images", "index.html", "notes.txt"]
    assert first[1] not in (out / "index.html").read_text()


def test_drawings_folder_with_foreign_files_is_refused(dataset: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "v"
    (out / "images").mkdir(parents=True)
    (out / "images" / "keep.txt").write_text("keep")
    capsys.readouterr()
    assert main(["viz", str(dataset), "--out", str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"omniseg viz: error: {out / 'images'}: exists and holds files") and "keep.txt" in err
    assert sorted(os.listdir(out)) == ["images"] and os.listdir(out / "images") == ["keep.txt"]


def test_per_class_table_hides_empty_classes_and_shows_group_and_gt_counts() -> None:
    """A hand-made evaluation result: 'cow' has no ground truth in the set (AP NaN), 'dog' one
    box-only instance (not scored for mask AP), 'cat' two instances and a crowd region."""
    import numpy as np

    from omniseg.commands.viz import per_class_ap_table
    from omniseg.data.records import Category, ImageRecord, Instance, RecordSet
    from omniseg.ops.rle import rle_encode

    mask = rle_encode(np.ones((4, 4), np.uint8))
    gt = RecordSet([ImageRecord(1, "a.png", 4, 4, instances=[
        Instance("cat", 1, mask=mask), Instance("cat", 1, mask=mask), Instance("cat", 1, mask=mask, is_crowd=True),
        Instance("dog", 2, box=(0, 0, 2, 2)), Instance("eel", 4, mask=mask)])],
        categories=[Category(1, "cat"), Category(2, "dog"), Category(3, "cow"), Category(4, "eel")])
    nan = float("nan")
    res = {"mask_AP": 0.5, "class/mask/cat/AP": 0.5, "class/mask/cat/AP50": 0.75, "class/mask/dog/AP": nan,
           "class/mask/dog/AP50": nan, "class/mask/cow/AP": nan, "class/mask/cow/AP50": nan,
           "class/mask/eel/AP": 0.0, "class/mask/eel/AP50": 0.0, "class/box/cow/AP": 0.9}
    t = per_class_ap_table(res, "segm", gt, {"base": [1, 2], "novel": [3, 4]})
    assert t.headers == ["class", "group", "#GT", "AP", "AP50"]
    assert t.rows == [["cat", "base", 2, 50.0, 75.0], ["eel", "novel", 1, 0.0, 0.0]]
    assert t.note.startswith("2 classes with ground truth in this set; 2 without it hidden.")
    box = per_class_ap_table({**res, "class/box/dog/AP": 0.4, "class/box/dog/AP50": 0.4}, "bbox", gt)
    assert box.headers == ["class", "#GT", "AP", "AP50"]  # no groups: no group column
    assert box.rows == [["dog", 1, 40.0, 40.0]]  # box AP scores dog's box; cow (no GT) hidden despite its AP
    plain = per_class_ap_table(res)  # without the ground truth: classes without an AP are hidden
    assert plain.headers == ["class", "AP", "AP50"] and [r[0] for r in plain.rows] == ["cat", "eel"]


def test_report_with_predictions_split_and_run(dataset: Path, tmp_path: Path, capsys) -> None:
    """Thumbnails link to full-size drawings that exist; PR and training curves are drawn and shown;
    the AP tables are there with base / novel."""
    import json
    import re

    from PIL import Image

    from omniseg.data.formats.coco import write_coco_results
    from omniseg.data.load import load_dataset
    from omniseg.evaluation.perturb import perturb_predictions

    pred = tmp_path / "pred.json"
    write_coco_results(pred, perturb_predictions(load_dataset(dataset)))
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 1 / s, "lr": 0.1}) + "\n"
                                               for s in (1, 2, 3)))
    out = tmp_path / "v"
    assert main(["viz", str(dataset), "--pred", str(pred), "--out", str(out), "--split", "voc-like",
                 "--run", str(run), "--no-progress", "--min-score", "0"]) == 0
    page = (out / "index.html").read_text()
    links = re.findall(r"<a href='([^']+)' title='open full size'><img src='([^']+)'", page)
    assert sorted(a for a, _ in links) == sorted(
        [f"images/{p.name}" for p in (out / "images").iterdir()] + ["curves/loss.png", "curves/lr.png",
                                                                    "curves/pr_mask.png"])
    for href, src in links:
        assert href == src and (out / href).is_file()
    with Image.open(out / links[-1][0]) as im:
        assert im.size == (2 * 32 + 4, 32)  # full size: ground truth | predictions side by side
    assert "<h2>mask AP (%)</h2>" in page and "<td>base</td>" in page and "<td>novel</td>" in page
    assert "<th>#GT</th>" in page and "<th>group</th>" in page
    assert sorted(os.listdir(out / "curves")) == ["loss.png", "lr.png", "pr_mask.png"]
    # a re-run without --run and --pred: the old curves go, the page names none
    assert main(["viz", str(dataset), "--out", str(out), "--no-progress"]) == 0
    assert os.listdir(out / "curves") == [] and "curves/" not in (out / "index.html").read_text()


def test_run_that_is_not_a_folder_is_refused(dataset: Path, tmp_path: Path, capsys) -> None:
    assert main(["viz", str(dataset), "--out", str(tmp_path / "v"), "--run", str(tmp_path / "nope")]) == 2
    assert f"--run: {tmp_path / 'nope'}: not a folder" in capsys.readouterr().err
    assert not (tmp_path / "v").exists()
