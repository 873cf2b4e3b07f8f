"""``omniseg export --format onnx``: onnxruntime vs PyTorch parity of the graphs and of the final instances."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from omniseg.api import Segmenter, clip_boxes  # noqa: E402
from omniseg.cli import main as cli_main  # noqa: E402
from omniseg.data.box_crops import fixed_expansion  # noqa: E402
from omniseg.data.synth.world import SynthConfig, generate_image  # noqa: E402
from omniseg.engine.config import load_config  # noqa: E402
from omniseg.export import OnnxSegmenter, read_manifest  # noqa: E402
from omniseg.modeling.contrastive_classifier import phrase_logits  # noqa: E402
from omniseg.modeling.mal import box_crops, normalize_crops  # noqa: E402
from omniseg.ops.rle import rle_decode  # noqa: E402
from omniseg.recipes.contract import run_recipe  # noqa: E402
from omniseg.recipes.table import RECIPES  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
ATOL, RTOL = 1e-4, 1e-3


def _train(recipe: str, out: Path, overrides: list[str], config: Path | None = None) -> Path:
    cfg = load_config(RECIPES[recipe].config, config, [*overrides, "train.max_iter=2", "train.checkpoint_period=2",
                                                      "train.progress=false", f"train.output_dir={out}"])
    run_recipe(RECIPES[recipe], cfg)
    return out


@pytest.fixture(scope="module")
def box_run(tmp_path_factory) -> Path:
    return _train("box_to_mask", tmp_path_factory.mktemp("b2m"), [
        "model.width=8", "model.fpn_channels=16", "model.norm=GN", "model.freeze_at=0", "model.head_convs=1",
        "model.head_dim=8", "data.train_num_images=4", "data.val_num_images=2", "data.image_size=96",
        "data.batch_size=2"])


@pytest.fixture(scope="module")
def fcos_run(tmp_path_factory) -> Path:
    return _train("fcos_mo", tmp_path_factory.mktemp("fcos"), ["data.val_num_images=1"], CONFIGS / "fcos_mo_smoke.yaml")


@pytest.fixture(scope="module")
def maskx_run(tmp_path_factory) -> Path:
    return _train("maskx_rcnn", tmp_path_factory.mktemp("maskx"), ["data.val_num_images=1", "model.score_threshold=0.0"],
                  CONFIGS / "maskx_smoke.yaml")


@pytest.fixture(scope="module")
def star_run(tmp_path_factory) -> Path:
    return _train("mask_rcnn_star", tmp_path_factory.mktemp("star"), ["data.val_num_images=1"],
                  CONFIGS / "mask_rcnn_star_smoke.yaml")


@pytest.fixture(scope="module")
def mal_run(tmp_path_factory) -> Path:
    return _train("mal", tmp_path_factory.mktemp("mal"), [], CONFIGS / "mal_smoke.yaml")


def _session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _image(h: int, w: int, seed: int = 9) -> np.ndarray:
    """A synthetic scene cropped / tiled to h x w (not the traced size, not a multiple of 32)."""
    image, _ = generate_image(SynthConfig(seed=seed, num_images=1, image_size=max(h, w)), 0)
    return np.ascontiguousarray(image[:h, :w])


def _same_instances(a, b) -> None:
    """Same count; each instance has a twin with the same text and box (score within 1e-4, mask IoU >= 0.99).
    Order may differ where scores tie to float precision (an untrained model has many near ties)."""
    assert len(a) == len(b) > 0
    rest = list(b)
    for x in a:
        twins = [y for y in rest if y.text == x.text and y.category_id == x.category_id
                 and np.abs(np.subtract(x.box, y.box)).max() < 1e-3 and abs(x.score - y.score) < 1e-4]
        assert twins, f"no onnx twin of {x.text} {x.box} {x.score}"
        y = twins[0]
        rest.remove(y)
        mx, my = rle_decode(x.mask).astype(bool), rle_decode(y.mask).astype(bool)
        union = (mx | my).sum()
        assert union == 0 or (mx & my).sum() / union >= 0.99


def test_box_to_mask_graph_matches_pytorch_at_another_size(box_run, tmp_path, capsys):
    out = tmp_path / "onnx"
    assert cli_main(["export", str(box_run), "--out", str(out), "--image-size", "64", "80"]) == 0
    printed = capsys.readouterr().out
    assert "box_to_mask.onnx" in printed and "checked: largest |onnxruntime - pytorch|" in printed
    seg = Segmenter.from_checkpoint(box_run)
    image = _image(75, 130)
    # boxes on every FPN level (the last is > 448 px: P5), partly outside the image, and a sliver
    boxes = torch.tensor([[3.0, 4.0, 20.0, 30.0], [10.0, 5.0, 129.0, 74.0], [-200.0, -200.0, 300.0, 300.0],
                          [0.0, 0.0, 700.0, 700.0], [50.0, 20.0, 50.5, 60.0]])
    t = torch.from_numpy(image).permute(2, 0, 1)[None].contiguous()
    with torch.no_grad():
        ref = seg.model.mask_logits(t, [boxes]).sigmoid().numpy()
    got = _session(out / "box_to_mask.onnx").run(None, {"image": t.numpy(), "boxes": boxes.numpy()})[0]
    assert got.shape == ref.shape == (5, 28, 28)
    np.testing.assert_allclose(got, ref, atol=ATOL, rtol=RTOL)
    empty = _session(out / "box_to_mask.onnx").run(None, {"image": t.numpy(), "boxes": np.zeros((0, 4), np.float32)})
    assert empty[0].shape == (0, 28, 28)
    # the runtime gives the Segmenter's instances
    prompts = [[3, 4, 60, 50], [40, 10, 129, 74], [0, 0, 400, 400]]
    _same_instances(seg.predict(image, boxes=prompts, vocabulary=["a", "b"]),
                    OnnxSegmenter(out).predict(image, boxes=prompts, vocabulary=["a", "b"]))


def test_manifest_describes_the_export(box_run, tmp_path):
    out = tmp_path / "single.onnx"
    assert cli_main(["export", str(box_run), "--out", str(out), "--opset", "16", "--no-check"]) == 0
    manifest, folder = read_manifest(out)
    assert folder == tmp_path and manifest["recipe"] == "box_to_mask" and manifest["opset"] == 16
    assert manifest["graphs"]["model"] == {**manifest["graphs"]["model"], "file": "single.onnx",
                                           "inputs": ["image", "boxes"], "outputs": ["mask_probs"]}
    assert manifest["image"]["pixel_mean"] == [123.675, 116.28, 103.53] and manifest["image"]["dtype"] == "uint8"
    model = onnx.load(str(out))
    assert model.opset_import[0].version == 16
    assert [i.name for i in model.graph.input] == ["image", "boxes"]
    seg = Segmenter.from_checkpoint(box_run)
    assert manifest["categories"] == seg.info.categories
    image = _image(40, 50)
    _same_instances(seg.predict(image, boxes=[[5, 5, 30, 35]]), OnnxSegmenter(out).predict(image, boxes=[[5, 5, 30, 35]]))


def test_fcos_mo_graphs_and_instances_match_pytorch(fcos_run, tmp_path):
    out = tmp_path / "onnx"
    assert cli_main(["export", str(fcos_run), "--out", str(out), "--image-size", "128", "128"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["graphs"]) == {"dense", "mask"} and manifest["text_encoder"] == "hash"
    seg = Segmenter.from_checkpoint(fcos_run)
    model = seg.model
    vocab = manifest["vocabulary"]
    text = np.load(out / "text_embeddings.npy")
    np.testing.assert_allclose(text, model.text_embedder(vocab).numpy(), atol=1e-6)
    image = _image(100, 150)
    t = torch.from_numpy(image).permute(2, 0, 1)[None].contiguous()
    probs, ltrb, ctr, sizes, *maps = _session(out / "fcos_mo_dense.onnx").run(
        None, {"image": t.numpy(), "text_embeddings": text})
    with torch.no_grad():  # the model's own path on the padded batch, as the Segmenter runs it
        padded = torch.nn.functional.pad(t, (0, 160 - 150, 0, 128 - 100))
        feats = model.features(padded, [(100, 150)])
        emb, ref_ltrb, ref_ctr, _, _, _, counts = model.dense(feats)
        ref_probs = phrase_logits(emb[0], torch.from_numpy(text), model.cfg.tau).softmax(1)[:, :len(vocab)]
    assert [h * w for h, w in sizes.tolist()] == counts
    for got, ref in ((probs, ref_probs), (ltrb, ref_ltrb[0]), (ctr, ref_ctr[0])):
        np.testing.assert_allclose(got, ref.numpy(), atol=ATOL, rtol=RTOL)
    for got, name in zip(maps, model.cfg.mask_in_features):
        np.testing.assert_allclose(got, feats[name].numpy(), atol=ATOL, rtol=RTOL)
    boxes = torch.tensor([[3.0, 4.0, 40.0, 30.0], [0.0, 0.0, 150.0, 100.0], [-300.0, -300.0, 400.0, 400.0]])
    with torch.no_grad():
        ref_masks = model.mask_logits(feats, [boxes]).sigmoid().numpy()
    feeds = {**dict(zip(model.cfg.mask_in_features, maps)), "boxes": boxes.numpy()}
    np.testing.assert_allclose(_session(out / "fcos_mo_mask.onnx").run(None, feeds)[0], ref_masks, atol=ATOL, rtol=RTOL)
    runtime = OnnxSegmenter(out)
    _same_instances(seg.predict(image, min_score=0.2), runtime.predict(image, min_score=0.2))
    phrases = ["crimson disk", "a blue thing"]  # not the training vocabulary: embedded by the run's encoder
    _same_instances(seg.predict(image, vocabulary=phrases), runtime.predict(image, vocabulary=phrases))


@pytest.mark.parametrize("recipe", ["maskx_rcnn", "mask_rcnn_star"])
def test_two_stage_graphs_and_instances_match_pytorch(recipe, request, tmp_path):
    run = request.getfixturevalue("maskx_run" if recipe == "maskx_rcnn" else "star_run")
    out = tmp_path / "onnx"
    assert cli_main(["export", str(run), "--out", str(out), "--image-size", "128", "128"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["graphs"]) == {"rpn", "box", "mask"}
    seg = Segmenter.from_checkpoint(run)
    model, det = seg.model, seg.model.detector
    open_vocab = recipe == "mask_rcnn_star"
    assert ("class_embeddings" in manifest["graphs"]["box"]["inputs"]) == open_vocab
    assert ("classes" in manifest["graphs"]["mask"]["inputs"]) == (not open_vocab)  # Mask^X: per-class w_seg
    image = _image(100, 150)
    t = torch.from_numpy(image).permute(2, 0, 1)[None].contiguous()
    obj, deltas, sizes, *maps = _session(out / f"{recipe}_rpn.onnx").run(None, {"image": t.numpy()})
    names = manifest["graphs"]["rpn"]["outputs"][3:]
    assert names == ["p2", "p3", "p4", "p5"]
    with torch.no_grad():  # the model's own path on the padded batch, as the Segmenter runs it
        feats = det.extract_features(torch.nn.functional.pad(t, (0, 160 - 150, 0, 128 - 100)), [(100, 150)])
        levels = [feats[f] for f in det.rpn_in_features]
        ref_obj, ref_deltas = det.rpn.head(levels)
        proposals = det.rpn.eval()(levels, [(100, 150)])[0][0].boxes
    assert sizes.tolist() == [[32, 40], [16, 20], [8, 10], [4, 5], [2, 3]]  # P2..P6 of 128 x 160
    np.testing.assert_allclose(obj, torch.cat(ref_obj, 1)[0].numpy(), atol=ATOL, rtol=RTOL)
    np.testing.assert_allclose(deltas, torch.cat(ref_deltas, 1)[0].numpy(), atol=ATOL, rtol=RTOL)
    for got, name in zip(maps, names):
        np.testing.assert_allclose(got, feats[name].numpy(), atol=ATOL, rtol=RTOL)
    feeds = {**dict(zip(names, maps)), "proposals": proposals.numpy()}
    phrases = ["crimson disk", "a blue thing", "ring"]
    emb = det.text_embedder(phrases) if open_vocab else None  # not the training vocabulary
    if open_vocab:
        feeds["class_embeddings"] = emb.numpy()
    heads = det.roi_heads
    with torch.no_grad():
        ref_logits, ref_box = heads.predictor(heads.box_head(heads.pool([feats[f] for f in det.box_in_features],
                                                                        [proposals])), emb)
    assert len(proposals) > 10 and ref_logits.shape[1] == (4 if open_vocab else 81)
    for got, ref in zip(_session(out / f"{recipe}_box.onnx").run(None, feeds), (ref_logits, ref_box)):
        np.testing.assert_allclose(got, ref.numpy(), atol=ATOL, rtol=RTOL)
    boxes = torch.tensor([[3.0, 4.0, 40.0, 30.0], [0.0, 0.0, 150.0, 100.0], [-300.0, -300.0, 400.0, 400.0]])
    classes = torch.tensor([5, 0, 79])
    with torch.no_grad():
        ref_masks = model.mask_head.predict([feats[f] for f in model.mask_in_features], [boxes], [classes],
                                            model.class_weights())[0]
    feeds = {**dict(zip(names, maps)), "boxes": boxes.numpy(), **({} if open_vocab else {"classes": classes.numpy()})}
    got = _session(out / f"{recipe}_mask.onnx").run(None, feeds)[0]
    np.testing.assert_allclose(got, ref_masks.numpy(), atol=ATOL, rtol=RTOL)
    runtime = OnnxSegmenter(out)
    _same_instances(seg.predict(image), runtime.predict(image))
    if open_vocab:
        _same_instances(seg.predict(image, vocabulary=phrases[:2]), runtime.predict(image, vocabulary=phrases[:2]))
    else:  # closed vocabulary: a filter; prompt boxes: named (score 1) or classified by the box head
        vocab = sorted({i.text for i in seg.predict(image)})[:2]
        _same_instances(seg.predict(image, vocabulary=vocab), runtime.predict(image, vocabulary=vocab))
        prompts, named = [[3, 4, 60, 50], [40, 10, 149, 99], [0, 0, 400, 400]], ["red ring", "object"]
        _same_instances(seg.predict(image, boxes=prompts, vocabulary=named),
                        runtime.predict(image, boxes=prompts, vocabulary=named))
        with pytest.raises(ValueError, match="closed vocabulary"):
            runtime.predict(image, vocabulary=["crimson disk"])


def test_mal_graph_and_instances_match_pytorch(mal_run, tmp_path):
    out = tmp_path / "onnx"
    assert cli_main(["export", str(mal_run), "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["graphs"]["model"]["inputs"] == ["crops", "size_classes"]
    assert manifest["mal"] == {"crop_size": 32, "test_theta": 0.6, "size_limits": [32.0, 96.0], "mask_threshold": 0.5}
    seg = Segmenter.from_checkpoint(mal_run)
    c, student = seg.model.cfg, seg.model.student
    session, runtime = _session(out / "mal.onnx"), OnnxSegmenter(out)
    for h, w in ((75, 130), (100, 140)):
        image = _image(h, w)
        # small (< 32^2), medium, large (>= 96^2: the whole 75 x 130 image), partly outside, a sliver
        boxes = [[3, 4, 20, 30], [10, 5, 60, 50], [0, 0, w, h], [-20, 30, 40, 90], [50, 20, 50.5, 60]]
        clipped = torch.tensor(clip_boxes(boxes, w, h), dtype=torch.float32)
        t = torch.from_numpy(image).permute(2, 0, 1)[None].contiguous()
        crops, valid, _, sizes, _ = box_crops(t, [(h, w)], [clipped], fixed_expansion(5, c.test_theta), 32,
                                              c.size_limits)
        assert sizes.tolist() == [0, 1, 2, 1, 0]
        x = normalize_crops(crops, valid)
        with torch.no_grad():  # the student's own (indexing) path
            ref = student(x, sizes).sigmoid().numpy()
        got = session.run(None, {"crops": x.numpy(), "size_classes": sizes.numpy()})[0]
        assert got.shape == ref.shape == (5, 32, 32)
        np.testing.assert_allclose(got, ref, atol=ATOL, rtol=RTOL)
        found = runtime.predict(image, boxes=boxes, vocabulary=["a", "b"])
        assert [i.text for i in found] == ["a", "b", "object", "object", "object"]
        assert sum(rle_decode(i.mask).sum() > 0 for i in found) >= 2  # not a comparison of empty masks
        _same_instances(seg.predict(image, boxes=boxes, vocabulary=["a", "b"]), found)
    assert runtime.predict(_image(40, 50), boxes=np.zeros((0, 4))) == []


def test_export_errors(box_run, tmp_path, capsys, monkeypatch):
    def fails(argv: list[str], code: int, *words: str) -> None:
        assert cli_main(argv) == code
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and all(w in err for w in words), err

    fails(["export", str(box_run), "--format", "tflite"], 2, "'tflite'", "onnx")
    fails(["export", str(tmp_path), "--out", str(tmp_path / "x")], 1, str(tmp_path), "no checkpoint")
    fails(["export", str(box_run), "--opset", "12"], 2, "--opset 12", "16")
    monkeypatch.setattr("omniseg.export.writer.EXPORTABLE", ("fcos_mo",))
    fails(["export", str(box_run), "--out", str(tmp_path / "y")], 1, "'box_to_mask'", "cannot be exported")
    monkeypatch.undo()
    (tmp_path / "z").mkdir()
    (tmp_path / "z" / "notes.txt").write_text("mine")
    fails(["export", str(box_run), "--out", str(tmp_path / "z"), "--no-check"], 1, "z")
    assert (tmp_path / "z" / "notes.txt").read_text() == "mine" and not (tmp_path / "y").exists()
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx -> ImportError
    fails(["export", str(box_run), "--out", str(tmp_path / "y")], 1, "pip install 'omniseg[onnx]'")
    assert not (tmp_path / "y").exists()
