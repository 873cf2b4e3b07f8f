"""Segmenter (checkpoint -> predictor) and the ``omniseg segment`` command."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from omniseg.api import BoxError, Segmenter, clip_boxes, resolve_checkpoint
from omniseg.cli import main as cli_main
from omniseg.data.synth.world import SynthConfig, generate_image
from omniseg.engine.config import load_config
from omniseg.errors import UserError
from omniseg.modeling.box_to_mask import build_box_to_mask
from omniseg.ops.rle import rle_decode
from omniseg.recipes.contract import run_recipe


@pytest.fixture(scope="module")
def trained(tiny_box_to_mask):
    return tiny_box_to_mask


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


def _same(a: list, b: list) -> None:
    """Two predictions are the same instances: texts, boxes, scores (to float noise), masks."""
    assert [i.text for i in a] == [i.text for i in b]
    for x, y in zip(a, b):
        assert x.box == pytest.approx(y.box, abs=1e-4) and x.score == pytest.approx(y.score, abs=1e-5)
        assert np.array_equal(rle_decode(x.mask), rle_decode(y.mask))


def test_predict_batch_equals_predict_per_image(trained):
    """Two 96 x 96 images (one forward pass) and a 64 x 80 one (another): the same as one by one."""
    seg = Segmenter.from_checkpoint(trained[0])
    images = [generate_image(SynthConfig(seed=s, num_images=1, image_size=96), 0)[0] for s in (1, 2)]
    images.insert(1, images[0][:64, :80].copy())
    boxes = [[[1, 2, 40, 50], [30, 30, 90, 80]], [[5, 5, 60, 60]], [[0, 0, 96, 96]]]
    calls = []
    seg.predictor = lambda *a, f=seg.predictor: calls.append(a[0].shape) or f(*a)
    got = seg.predict_batch(images, vocabulary=["a", "b"], boxes=boxes)
    assert sorted(tuple(c) for c in calls) == [(1, 3, 64, 80), (2, 3, 96, 96)]
    assert [len(g) for g in got] == [2, 1, 1] and [i.text for i in got[0]] == ["a", "b"]
    for image, b, g in zip(images, boxes, got):
        _same(g, seg.predict(image, vocabulary=["a", "b"], boxes=b))
    # one list of box names per image; an image without boxes has no instance and is not run
    got = seg.predict_batch(images, vocabulary=[["x", "y"], [], ["z"]], boxes=[boxes[0], boxes[1], []])
    assert [[i.text for i in g] for g in got] == [["x", "y"], ["object"], []]
    with pytest.raises(ValueError, match="one list of box names per image"):
        seg.predict_batch(images, vocabulary=[["x"]], boxes=boxes)
    with pytest.raises(ValueError, match="one K x 4 array per image"):
        seg.predict_batch(images, boxes=boxes[:2])


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
    other = generate_image(SynthConfig(seed=3, num_images=1, image_size=100), 0)[0]
    small = other[:70, :90].copy()
    for got, want in zip(seg.predict_batch([image, other, small], min_score=0.0),
                         [found, seg.predict(other, min_score=0.0), seg.predict(small, min_score=0.0)]):
        _same(got, want)
    if recipe_name == "fcos_mo":  # open vocabulary: any phrases, no prompt boxes
        with pytest.raises(ValueError, match="finds its own boxes"):
            seg.predict(image, boxes=[[0, 0, 5, 5]])
        phrases = ["crimson disk", "a blue thing"]
        assert {i.text for i in seg.predict(image, vocabulary=phrases, min_score=0.0)} <= set(phrases)
    else:  # closed vocabulary: unknown names are an error, known ones filter
        with pytest.raises(ValueError, match="closed vocabulary"):
            seg.predict(image, vocabulary=["crimson disk"])
        assert {i.text for i in seg.predict(image, vocabulary=["red ring"], min_score=0.0)} <= {"red ring"}


def test_maskx_segments_prompt_boxes(tmp_path):
    """Mask^X R-CNN with prompt boxes: one mask per box, from its mask branch (segment_boxes), of the
    named class (score 1) or, unnamed, the class its box head scores highest."""
    from omniseg.recipes.table import RECIPES

    recipe = RECIPES["maskx_rcnn"]
    path = Path(__file__).resolve().parents[1] / "configs" / "maskx_smoke.yaml"
    cfg = load_config(recipe.config, path, ["train.max_iter=1", "train.checkpoint_period=1",
                                            f"train.output_dir={tmp_path}", "data.val_num_images=1"])
    run_recipe(recipe, cfg)
    seg = Segmenter.from_checkpoint(tmp_path)
    names = [c.name for c in seg.info.things()]
    image, _ = generate_image(SynthConfig(seed=9, num_images=1, image_size=100), 0)
    boxes = [[0, 0, 50, 50], [10, 20, 90, 95], [60, 5, 99, 40]]
    found = seg.predict(image, boxes=boxes, vocabulary=[names[2], "object"])
    assert len(found) == 3 and found[0].text == names[2] and found[0].score == 1.0
    assert [list(i.box) for i in found] == boxes
    # the unnamed boxes: the box head's most likely class, with its probability
    model, t = seg.model, torch.from_numpy(image).permute(2, 0, 1)[None]
    padded = torch.nn.functional.pad(t, (0, 28, 0, 28))  # 128 x 128: the pad divisor 32
    det, heads = model.detector, model.detector.roi_heads
    feats = det.extract_features(padded, [(100, 100)])
    with torch.no_grad():
        logits, _ = heads.predictor(heads.box_head(heads.pool([feats[f] for f in det.box_in_features],
                                                               [torch.tensor(boxes[1:], dtype=torch.float32)])))
    prob, cls = logits.softmax(-1)[:, :-1].max(-1)
    assert [i.text for i in found[1:]] == [names[c] for c in cls.tolist()]
    assert [i.score for i in found[1:]] == pytest.approx(prob.tolist(), abs=1e-5)
    labels = torch.tensor([2, *cls.tolist()])
    ref = model.segment_boxes(padded, [(100, 100)], [torch.tensor(boxes, dtype=torch.float32)], [labels])[0]
    for inst, m in zip(found, ref):
        assert np.array_equal(rle_decode(inst.mask).astype(bool), m.numpy())
    with pytest.raises(ValueError, match="closed vocabulary"):
        seg.predict(image, boxes=boxes, vocabulary=["crimson disk"])


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


# ----------------------------------------------------------------------------- semantic (per-pixel) output

COLOURS = ("red", "green", "blue")


class ColourPredictor:
    """A fake per-pixel model with known scores: "red" / "green" / "blue" score each pixel by that
    channel / 255, any other name is ruled out (-inf); no instances. ``semantic=False``: a model
    without per-pixel output."""

    def __init__(self, semantic: bool = True):
        self.semantic = semantic

    def __call__(self, images, image_sizes, output_sizes, vocabulary=None, boxes=None):
        from omniseg.modeling.predictions import ImagePrediction, InstancePredictions

        texts = list(vocabulary or COLOURS)
        out = []
        for image, (h, w), size in zip(images, image_sizes, output_sizes):
            assert size == (h, w)
            x = image[:, :h, :w].float() / 255
            sem = torch.stack([x[COLOURS.index(t)] if t in COLOURS else torch.full((h, w), float("-inf"))
                               for t in texts])
            none = InstancePredictions(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long))
            out.append(ImagePrediction(none, texts, semantic=sem if self.semantic else None))
        return out


def fake_segmenter(semantic: bool = True, categories: bool = True) -> Segmenter:
    """A Segmenter around :class:`ColourPredictor` (its classes: red, green, blue; pads to 8)."""
    from omniseg.recipes.contract import Recipe, RunInfo

    def unused(*args):
        raise AssertionError("not called by the Segmenter")

    recipe = Recipe(name="fake_pixels", config=object, build_model=unused, train_data=unused, eval_fn=unused,
                    predictor=lambda model, cfg, info: ColourPredictor(semantic), pad_divisor=8)
    cats = [{"id": k + 1, "name": n, "isthing": False} for k, n in enumerate(COLOURS)] if categories else []
    return Segmenter(torch.nn.Identity(), recipe, None, RunInfo(recipe.name, cats))


def colour_image() -> tuple[np.ndarray, np.ndarray]:
    """A 13 x 10 image (not a multiple of the padding) and its argmax label map, worked by hand:
    rows 0-5 left red (200), right green (150); rows 6-12 blue (90); pixel (12, 9) black (all
    scores 0: the first class, red, wins the tie); pixel (0, 0) (100, 120, 0): green."""
    image = np.zeros((13, 10, 3), np.uint8)
    image[:6, :5] = (200, 0, 0)
    image[:6, 5:] = (0, 150, 0)
    image[6:] = (0, 0, 90)
    image[12, 9] = 0
    image[0, 0] = (100, 120, 0)
    labels = np.full((13, 10), 2)
    labels[:6, :5], labels[:6, 5:], labels[12, 9], labels[0, 0] = 0, 1, 0, 1
    return image, labels


def test_predict_semantic_is_the_argmax_of_the_per_pixel_scores():
    seg = fake_segmenter()
    image, want = colour_image()
    res = seg.predict_semantic(image, class_scores=True)
    assert res.names == list(COLOURS)  # no vocabulary: the model's classes
    assert res.labels.dtype == np.int64 and np.array_equal(res.labels, want)
    assert res.scores.dtype == np.float32 and res.scores[3, 2] == pytest.approx(200 / 255)
    assert res.scores[12, 9] == 0 and res.scores[0, 0] == pytest.approx(120 / 255)
    assert res.class_scores.shape == (3, 13, 10) and res.class_scores[2, 8, 1] == pytest.approx(90 / 255)
    assert res.areas() == [6 * 5 - 1 + 1, 6 * 5 + 1, 7 * 10 - 1]
    assert seg.predict_semantic(image).class_scores is None


def test_predict_semantic_min_score_leaves_pixels_without_class():
    """Best scores: red 0.78, green 0.59, blue 0.35, the mixed pixel 0.47, black 0: at 0.5 only red
    and green keep a class; -1 elsewhere, the evaluation's ignore index in label_map()."""
    image, want = colour_image()
    res = fake_segmenter().predict_semantic(image, min_score=0.5)
    want = np.where((want == 2) | (image.max(axis=2) < 128), -1, want)
    assert np.array_equal(res.labels, want) and (res.labels == -1).sum() == 7 * 10 + 1
    assert np.array_equal(res.label_map(), np.where(want < 0, 255, want))
    assert res.areas() == [29, 30, 0]


def test_predict_semantic_with_a_vocabulary():
    """Names index the vocabulary asked for; a name the model rules out everywhere is never chosen,
    and with only such names no pixel gets a class."""
    seg = fake_segmenter()
    image, want = colour_image()
    res = seg.predict_semantic(image, vocabulary=["purple", "blue", "green"])
    assert res.names == ["purple", "blue", "green"]
    expect = np.where(image[..., 1] > image[..., 2], 2, 1)  # green where it beats blue (ties: blue, listed first)
    assert np.array_equal(res.labels, expect)
    assert (seg.predict_semantic(image, vocabulary=["purple"]).labels == -1).all()


def test_predict_semantic_batch_equals_one_by_one():
    seg = fake_segmenter()
    image, _ = colour_image()
    other = np.ascontiguousarray(image[::-1, ::-1])
    small = image[:5, :7].copy()  # another padded size: its own pass
    batch = seg.predict_semantic_batch([image, small, other], min_score=0.3)
    for got, x in zip(batch, [image, small, other]):
        want = seg.predict_semantic(x, min_score=0.3)
        assert np.array_equal(got.labels, want.labels) and np.array_equal(got.scores, want.scores)
    assert batch[1].labels.shape == (5, 7)


def test_predict_semantic_errors(trained):
    image, _ = colour_image()
    with pytest.raises(UserError, match="recipe 'fake_pixels' has no per-pixel output .* needs an openseg, lseg or align model"):
        fake_segmenter(semantic=False).predict_semantic(image)
    with pytest.raises(UserError, match="recipe 'box_to_mask' has no per-pixel output"):  # boxes only: not run
        Segmenter.from_checkpoint(trained[0]).predict_semantic(image)
    with pytest.raises(UserError, match="no classes of its own .* give a vocabulary"):
        fake_segmenter(categories=False).predict_semantic(image)
    assert fake_segmenter(categories=False).predict_semantic(image, vocabulary=["red"]).names == ["red"]
    with pytest.raises(ValueError, match="min_score must be a finite number"):
        fake_segmenter().predict_semantic(image, min_score=float("nan"))
