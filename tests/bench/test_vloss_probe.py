"""bench/vloss_probe.py on a 4-iteration smoke run: counts and probabilities hold together."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# imported by the `bench` fixture (tests/bench/conftest.py)
BENCH = ("vloss_probe",)


def test_probe_of_a_smoke_run(bench, tmp_path):
    run = tmp_path / "vloss"
    train = subprocess.run([sys.executable, "-m", "omniseg.cli", "train", str(ROOT / "configs" / "vloss_smoke.yaml"),
                            f"train.output_dir={run}"], capture_output=True, text=True, cwd=ROOT, timeout=180,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert train.returncode == 0, train.stdout + train.stderr
    for group in ("base", "novel"):
        r = bench["vloss_probe"].probe(str(run), images=6, group=group, split="train")
        assert (r["group"], r["split"]) == (group, "train") and 0 <= r["covered"] <= r["things"]
        if r["covered"]:
            assert 0 <= r["p_true"] <= r["p_things"] <= 1 and 0 <= r["p_no_object"] <= 1 - r["p_things"] + 1e-6
            assert 0 <= r["top1"] <= r["top5"] <= 1 and r["rank_median"] >= 0
            assert 0 <= r["no_object_top"] <= 1 and r["covering_queries"] >= 1  # covered: at least one query
        else:
            assert r["p_true"] is None and r["top1"] is None
    # leaving the novel names out of the softmax can only raise each query's base-class probabilities, so also
    # their maximum over the covering queries (the query picked may change: only p_true is ordered)
    full = bench["vloss_probe"].probe(str(run), images=6, group="base", split="train")
    pan = bench["vloss_probe"].probe(str(run), images=6, group="base", split="train", vocabulary="panoptic")
    assert pan["vocabulary"] == "panoptic" and pan["covered"] == full["covered"]
    if full["covered"]:
        assert pan["p_true"] >= full["p_true"]
    match = bench["vloss_probe"].matching_probe(str(run), batches=2, points=256)
    assert match["points"] == 256 and match["matched_things"] > 0  # the smoke run's panoptic images have things
    for key in ("p_true", "p_no_object", "no_object_top", "matched_covers", "same_match_again"):
        assert 0 <= match[key] <= 1, (key, match)
    assert match["p_true"] + match["p_no_object"] <= 1 + 1e-6 and match["covering_queries"] >= match["matched_covers"]
    lin = bench["vloss_probe"].linear_probe(str(run), train_images=6, val_images=4)
    assert set(lin["levels"]) == {"c3", "c4", "c5", "encoder0", "encoder1", "encoder2", "encoder3", "mask_features",
                                  "roi_c3", "roi_mask_features"}
    assert lin["train_things"] > 0 and 0 < lin["classes"] <= 20
    assert lin["levels"]["roi_c3"]["dim"] == 16 * lin["levels"]["c3"]["dim"]  # 4 x 4 grid x channels
    for level in lin["levels"].values():
        assert 0 <= level["train_acc"] <= 1 and (level["val_acc"] is None or 0 <= level["val_acc"] <= 1)
        # the size bins split the scored validation things: their counts add up, their accuracies average to val_acc
        bins = [b for b in level["val_acc_by_size"].values() if b is not None]
        if level["val_acc"] is not None:
            assert sum(n for _, n in bins) == lin["val_things"]
            assert abs(sum(a * n for a, n in bins) / lin["val_things"] - level["val_acc"]) < 0.01


def test_linear_probe_fits_separable_features(bench):
    import torch

    # two classes split by the sign of the first coordinate: the fitted classifier labels every point right
    x = torch.tensor([[1.0, 0.3], [2.0, -0.5], [1.5, 0.1], [-1.0, 0.2], [-2.0, -0.4], [-1.2, 0.6]])
    y = torch.tensor([0, 0, 0, 1, 1, 1])
    w, bias = bench["vloss_probe"]._fit_linear(x, y, 2)
    assert ((x @ w + bias).argmax(1) == y).all()
    assert ((torch.tensor([[3.0, 0.0], [-3.0, 0.0]]) @ w + bias).argmax(1) == torch.tensor([0, 1])).all()


def test_load_trunk_puts_another_recipes_trunk_in(bench, tmp_path):
    import pytest
    import torch
    from safetensors.torch import load_file

    from omniseg.api import Segmenter

    runs = {}
    for name, config, extra in (("vloss", "vloss_smoke.yaml", []), ("fcos", "fcos_mo_smoke.yaml", []),
                                ("wide", "fcos_mo_smoke.yaml", ["model.width=16"])):
        runs[name] = tmp_path / name
        train = subprocess.run([sys.executable, "-m", "omniseg.cli", "train", str(ROOT / "configs" / config),
                                f"train.output_dir={runs[name]}", "train.max_iter=2", *extra], capture_output=True,
                               text=True, cwd=ROOT, timeout=180, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert train.returncode == 0, train.stdout + train.stderr
    seg = Segmenter.from_checkpoint(str(runs["vloss"]))
    fcos = load_file(str(next((runs["fcos"] / "checkpoints").glob("step_*")) / "model.safetensors"))
    before = seg.model.net.trunk.state_dict()
    assert any(not torch.equal(v, fcos[f"backbone.bottom_up.{k}"]) for k, v in before.items())  # two trainings
    n = bench["vloss_probe"].load_trunk(seg, str(runs["fcos"]))
    assert n == len(seg.model.net.trunk.state_dict()) > 0
    for k, v in seg.model.net.trunk.state_dict().items():
        assert torch.equal(v, fcos[f"backbone.bottom_up.{k}"]), k
    with pytest.raises(SystemExit, match="does not fit"):  # width 16 into a width-8 trunk
        bench["vloss_probe"].load_trunk(seg, str(runs["wide"]))


def test_a_run_without_checkpoints_is_one_line_and_exit_1(bench_error, tmp_path):
    assert "norun" in bench_error("vloss_probe", str(tmp_path / "norun"), "--linear", "3")
