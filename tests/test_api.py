"""Segmenter (checkpoint -> predictor) and the ``omniseg segment`` command."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from omniseg.api import BoxError, Segmenter, clip_boxes, resolve_checkpoint, resolve_device
from omniseg.cli import main as cli_main
from omniseg.data.synth.world import SynthConfig, generate_image
from omniseg.engine.config import load_config
from omniseg.errors import UserError
from omniseg.modeling.box_to_mask import build_box_to_mask
from omniseg.ops.rle import rle_decode
from omniseg.recipes.box_to_mask import RECIPE, BoxToMaskExperiment
from omniseg.recipes.contract import run_recipe


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    cfg = load_config(BoxToMaskExperiment, None, [
        "model.width=8", "model.fpn_channels=16", "model.norm=GN", "model.freeze_at=0",
        "model.head_convs=1", "model.head_dim=8", "data.train_num_images=4", "data.val_num_images=2",
        "data.image_size=96", "data.batch_size=2", "train.max_iter=2", "train.progress=false",
        f"train.output_dir={out}", "train.checkpoint_period=2",
    ])
    run_recipe(RECIPE, cfg)
    return out, cfg


def test_resolve_checkpoint_accepts_run_checkpoints_and_step_folders(trained):
    out, _ = trained
    step = resolve_checkpoint(out)
    assert step.name == "step_00000002"
    assert resolve_checkpoint(out / "checkpoints") == step == resolve_checkpoint(step)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        resolve_checkpoint(out / "nope")


def test_segmenter_matches_the_trained_weights(trained):
    out, cfg = trained
    seg = Segmenter.from_checkpoint(out)
    image, rec = generate_image(SynthConfig(seed=5, num_images=1, image_size=96), 0)
    boxes = [list(i.box) for i in rec.instances]
    found = seg.predict(image, boxes=boxes, vocabulary=[i.text for i in rec.instances])
    assert [i.text for i in found] == [i.text for i in rec.instances]
    # the same weights loaded by hand give the same masks
    from omniseg.engine.checkpoint import load_checkpoint

    model = build_box_to_mask(cfg.model)
    load_checkpoint(out / "checkpoints", model=model)
    model.eval()
    t = torch.from_numpy(image).permute(2, 0, 1)[None]
    ref = model.predict_masks(t, [(96, 96)], [torch.tensor(boxes)])[0]
    for inst, m in zip(found, ref):
        assert np.array_equal(rle_decode(inst.mask).astype(bool), m.numpy())


def test_segmenter_errors(trained):
    out, _ = trained
    seg = Segmenter.from_checkpoint(out)
    with pytest.raises(ValueError, match="pass boxes"):
        seg.predict(np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="H x W x 3 uint8"):
        seg.predict(np.zeros((32, 32), np.uint8), boxes=[[0, 0, 4, 4]])
    with pytest.raises(FileNotFoundError, match="ema.safetensors"):
        Segmenter.from_checkpoint(out, use_ema=True)


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


@pytest.mark.parametrize("config", ["maskx_smoke.yaml", "fcos_mo_smoke.yaml"])
def test_segmenter_for_detectors(config, tmp_path):
    """Train each detector recipe's smoke config for 2 steps, then predict through the Segmenter."""
    from omniseg.recipes.table import RECIPES

    path = Path(__file__).resolve().parents[1] / "configs" / config
    recipe_name = "maskx_rcnn" if config.startswith("maskx") else "fcos_mo"
    recipe = RECIPES[recipe_name]
    cfg = load_config(recipe.config, path, ["train.max_iter=2", "train.checkpoint_period=2", f"train.output_dir={tmp_path}",
                                      "data.val_num_images=1"]
                      + (["model.score_threshold=0.0"] if recipe_name == "maskx_rcnn" else []))
    run_recipe(recipe, cfg)
    seg = Segmenter.from_checkpoint(tmp_path)
    image, _ = generate_image(SynthConfig(seed=9, num_images=1, image_size=100), 0)  # 100: not a multiple of 32
    found = seg.predict(image, min_score=0.0)
    assert len(found) > 0  # an untrained model still detects something at threshold 0
    for inst in found:
        assert inst.score is not None and 0.0 <= inst.score <= 1.0
        assert rle_decode(inst.mask).shape == (100, 100)
        assert 0 <= inst.box[0] <= inst.box[2] <= 100 and 0 <= inst.box[1] <= inst.box[3] <= 100
    with pytest.raises(ValueError, match="finds its own boxes"):
        seg.predict(image, boxes=[[0, 0, 5, 5]])
    if recipe_name == "fcos_mo":  # open vocabulary: any phrases
        phrases = ["crimson disk", "a blue thing"]
        assert {i.text for i in seg.predict(image, vocabulary=phrases, min_score=0.0)} <= set(phrases)
    else:  # closed vocabulary: unknown names are an error, known ones filter
        with pytest.raises(ValueError, match="closed vocabulary"):
            seg.predict(image, vocabulary=["crimson disk"])
        assert {i.text for i in seg.predict(image, vocabulary=["red ring"], min_score=0.0)} <= {"red ring"}


# ----------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def image_file(tmp_path_factory) -> Path:
    image, _ = generate_image(SynthConfig(seed=5, num_images=1, image_size=96), 0)
    path = tmp_path_factory.mktemp("img") / "img.png"
    Image.fromarray(image).save(path)
    return path


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


@pytest.mark.parametrize("kind", ["missing", "not an image", "folder"])
def test_segment_unreadable_image(kind, trained, image_file, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    if kind == "not an image":
        bad.write_text("hello")
    elif kind == "folder":
        bad.mkdir()
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


def test_clip_boxes():
    got = clip_boxes([[-5, 10, 20, 200], [1, 2, 3, 4]], width=50, height=40, source="f.png")
    assert got.dtype == np.float32 and got.tolist() == [[0, 10, 20, 40], [1, 2, 3, 4]]
    for box in ([50, 0, 60, 10], [0, 40, 10, 50], [-20, 0, 0, 10], [0, -9, 10, 0]):  # touching is not overlapping
        with pytest.raises(BoxError, match=r"f.png: box .* does not overlap the image \(50 x 40 pixels\)"):
            clip_boxes([box], 50, 40, "f.png")
    for box in ([5, 5, 1, 10], [0, 0, float("inf"), 5]):
        with pytest.raises(BoxError, match="is not x0,y0,x1,y1"):
            clip_boxes([box], 50, 40)
    with pytest.raises(BoxError, match="K x 4"):
        clip_boxes([[1, 2, 3]], 50, 40)


def test_predict_checks_min_score_and_boxes(trained, image_file):
    seg = Segmenter.from_checkpoint(trained[0])
    for bad in (float("nan"), -0.1, 1.5):
        with pytest.raises(ValueError, match="min_score"):
            seg.predict(str(image_file), boxes=[[1, 2, 30, 40]], min_score=bad)
    with pytest.raises(BoxError, match=f"{image_file}: box \\[100, 0, 120, 10\\] does not overlap"):
        seg.predict(str(image_file), boxes=[[100, 0, 120, 10]])


def _copy_step(trained, tmp_path) -> Path:
    """A copy of the trained run's checkpoint folder (step_N) to damage."""
    step = resolve_checkpoint(trained[0])
    dst = tmp_path / "run" / "checkpoints" / step.name
    shutil.copytree(step, dst)
    return dst


@pytest.mark.parametrize(("damage", "says"), [
    ("config not JSON", "malformed JSON"),
    ("config a list", "expected a JSON object"),
    ("config unknown recipe", "unknown recipe 'nosuch'"),
    ("config without recipe", "unknown recipe ''"),
    ("weights of another size", "model.safetensors: does not match the model: "),
    ("no run description", "does not describe its run"),
    ("run description of another recipe", "run description names recipe 'maskx_rcnn'"),
])
def test_damaged_checkpoint_is_a_one_line_error(damage, says, trained, image_file, tmp_path, capsys):
    step = _copy_step(trained, tmp_path)
    config = step / "config.json"
    raw = json.loads(config.read_text())
    if damage == "config not JSON":
        config.write_text("{")
    elif damage == "config a list":
        config.write_text("[1]")
    elif damage == "config unknown recipe":
        config.write_text(json.dumps({**raw, "recipe": "nosuch"}))
    elif damage == "config without recipe":
        config.write_text(json.dumps({k: v for k, v in raw.items() if k != "recipe"}))
    elif damage == "weights of another size":
        config.write_text(json.dumps({**raw, "model": {**raw["model"], "head_dim": 12}}))
    else:
        state = json.loads((step / "state.json").read_text())
        if damage == "no run description":
            state["extra"].pop("run_info")
        else:
            state["extra"]["run_info"]["recipe"] = "maskx_rcnn"
        (step / "state.json").write_text(json.dumps(state))
    with pytest.raises(UserError, match=says):
        Segmenter.from_checkpoint(step)
    rc = cli_main(["segment", str(image_file), "--checkpoint", str(step), "--boxes", "1,2,30,40",
                   "--out", str(tmp_path / "seg")])
    err = capsys.readouterr().err
    assert rc == 1 and len(err.strip().splitlines()) == 1 and "internal error" not in err
    assert says in err and str(step) in err
