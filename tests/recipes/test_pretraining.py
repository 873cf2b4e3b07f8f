"""``omniseg pretrain`` end to end (issue 12): a tiny dense pretraining run through the CLI, its
exported backbone and manifest, a detector loading it with ``model.pretrained=``, and the errors."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from omniseg.cli import main
from omniseg.data.synth import lexicon

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
PRETRAIN_CONFIG = str(CONFIGS / "pretrain_r18_dense.yaml")
MASKX_CONFIG = str(CONFIGS / "maskx_voc_like.yaml")
TINY_PRETRAIN = ["data.train_num_images=4", "data.val_num_images=2", "data.image_size=32", "data.batch_size=2",
                 "data.num_workers=0", "model.width=4", "model.head_dim=8", "train.max_iter=2",
                 "train.warmup_iters=0", "train.eval_period=0", "train.progress=false"]
TINY_MASKX = ["model.width=4", "model.fpn_channels=16", "model.fc_dim=32", "model.transfer_hidden_dim=32",
              "model.mask_conv_dim=16", "model.mlp_hidden_dim=32", "model.rpn_post_nms_topk_train=50",
              "model.rpn_post_nms_topk_test=20", "model.roi_batch_size_per_image=16", "model.detections_per_image=10",
              "data.train_num_images=2", "data.val_num_images=1", "data.image_size=64", "data.batch_size=2",
              "data.num_workers=0", "train.max_iter=1", "train.warmup_iters=0", "train.progress=false"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> tuple[Path, str]:
    """One tiny ``omniseg pretrain`` run: (its folder, what it printed)."""
    out = tmp_path_factory.mktemp("pretrain") / "r18"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["pretrain", PRETRAIN_CONFIG, *TINY_PRETRAIN, f"train.output_dir={out}"])
    assert rc == 0
    return out, buf.getvalue()


def _trunk_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return dict(model.detector.backbone.bottom_up.state_dict())


def test_pretrain_writes_backbone_and_manifest(pretrained):
    from omniseg.engine.checkpoint import latest_checkpoint, load_weights

    out, printed = pretrained
    weights_file, manifest_file = out / "backbone.safetensors", out / "manifest.json"
    assert weights_file.is_file() and manifest_file.is_file()
    m = json.loads(manifest_file.read_text(encoding="utf-8"))
    assert m["sha256"] == hashlib.sha256(weights_file.read_bytes()).hexdigest()
    assert (m["kind"], m["filter"], m["recipe"], m["steps"]) == ("resnet", "resnet_filter_fn", "pretrain_dense", 2)
    assert m["data"]["train"] == "synth-pretraining" and m["data"]["evaluation_classes_labelled"] == 0
    assert m["data"]["thing_classes"] == 144 and m["model"]["width"] == 4
    assert m["command"].startswith("omniseg pretrain ") and "model.width=4" in m["command"]
    assert m["usage"] == f"model.pretrained={weights_file}"
    assert set(m["final_losses"]) >= {"loss_cls", "loss_boundary"}
    assert set(m["eval"]) == {"pixel_acc", "thing_mIoU", "thing_class_acc", "thing_shape_acc", "thing_colour_acc"}
    summary = json.loads(printed)  # stdout: the manifest's summary, as JSON
    assert summary["usage"] == m["usage"] and summary["steps"] == 2 and summary["kind"] == "resnet"
    # the file is the final checkpoint's trunk, in torchvision names
    with safe_open(str(weights_file), "pt") as f:
        assert f.metadata()["format"] == "pt"  # one key only: more would make the bytes differ per process
    backbone = load_file(str(weights_file))
    assert len(backbone) == m["tensors"] and "conv1.weight" in backbone and "layer4.1.bn2.weight" in backbone
    assert sum(v.numel() for v in backbone.values()) == m["parameters"]
    step = latest_checkpoint(out / "checkpoints")
    assert step is not None and step.name.endswith("2")
    saved = load_weights(step / "model.safetensors")
    assert {f"trunk.{k}" for k in backbone} == {k for k in saved if k.startswith("trunk.")}
    for k, v in backbone.items():
        assert torch.equal(v, saved[f"trunk.{k}"]), k


def test_second_run_into_the_same_folder_needs_overwrite(pretrained, capsys):
    out, _ = pretrained
    before = (out / "backbone.safetensors").read_bytes()
    rc = main(["pretrain", PRETRAIN_CONFIG, *TINY_PRETRAIN, f"train.output_dir={out}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1, err
    assert err[0].startswith("omniseg pretrain: error: ") and str(out) in err[0] and "--overwrite" in err[0]
    assert (out / "backbone.safetensors").read_bytes() == before


def test_resume_of_a_finished_run_re_exports_the_same_file(pretrained):
    """Same weights, same bytes: the manifest's sha256 identifies the trunk, not the export. In a
    fresh process, as a real ``--resume`` is (safetensors writes its metadata dict in a per-process
    hash order: more than one metadata key gives different bytes from one process to the next)."""
    out, _ = pretrained
    before = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    first = load_file(str(out / "backbone.safetensors"))
    cmd = [sys.executable, "-m", "omniseg.cli", "pretrain", PRETRAIN_CONFIG, "--resume", *TINY_PRETRAIN,
           f"train.output_dir={out}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=CONFIGS.parent, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    after = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    again = load_file(str(out / "backbone.safetensors"))
    assert after["steps"] == 2 and set(again) == set(first)
    assert all(torch.equal(again[k], v) for k, v in first.items())
    assert after["sha256"] == hashlib.sha256((out / "backbone.safetensors").read_bytes()).hexdigest()
    assert after["sha256"] == before["sha256"]


def test_a_detector_recipe_is_not_a_pretraining_recipe(tmp_path, capsys):
    rc = main(["pretrain", MASKX_CONFIG, f"train.output_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1, err
    assert "unknown recipe 'maskx_rcnn'" in err[0]
    assert "pretrain_dense" in err[0] and "pretrain_mae" in err[0]
    assert not (tmp_path / "run").exists()


def test_detector_loads_the_pretrained_trunk(pretrained, tmp_path, capsys):
    from omniseg.api import Segmenter
    from omniseg.recipes.maskx_rcnn import build_model
    from omniseg.recipes.table import load_experiment
    from omniseg.utils.weights_io import CheckpointError

    src, _ = pretrained
    pt = tmp_path / "pt"  # a copy: it is deleted below
    pt.mkdir()
    for name in ("backbone.safetensors", "manifest.json"):
        shutil.copy(src / name, pt / name)
    backbone = load_file(str(pt / "backbone.safetensors"))

    overrides = [*TINY_MASKX, f"model.pretrained={pt / 'backbone.safetensors'}"]
    _, cfg = load_experiment(MASKX_CONFIG, overrides)
    trunk = _trunk_state(build_model(cfg.model, lexicon.categories()))
    assert set(trunk) == set(backbone)
    for k, v in backbone.items():
        assert torch.equal(trunk[k], v), k
    _, scratch = load_experiment(MASKX_CONFIG, TINY_MASKX)  # without it the trunk is a fresh init
    assert not torch.equal(_trunk_state(build_model(scratch.model, lexicon.categories()))["conv1.weight"],
                           backbone["conv1.weight"])

    run = tmp_path / "maskx"
    rc = main(["train", MASKX_CONFIG, *overrides, f"train.output_dir={run}"])
    assert rc == 0, capsys.readouterr().err
    capsys.readouterr()
    (pt / "backbone.safetensors").unlink()
    with pytest.raises((CheckpointError, OSError)):  # building from the config alone now fails ...
        build_model(cfg.model, lexicon.categories())
    seg = Segmenter.from_checkpoint(run)  # ... but the checkpoint holds every weight
    from omniseg.engine.checkpoint import latest_checkpoint, load_weights

    step = latest_checkpoint(run / "checkpoints")
    saved = load_weights(step / "model.safetensors")
    loaded = _trunk_state(seg.model)
    for k, v in loaded.items():
        assert torch.equal(v, saved[f"detector.backbone.bottom_up.{k}"]), k
