"""bench/openseg_ceiling.py (what L_G teaches with perfect regions) and the probe's NameScorer: the batch stream,
the fit on a hand-made world whose optimum is known, the scorer by hand, the report section, and one smoke run."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]

# imported by the `bench` fixture (tests/bench/conftest.py)
BENCH = ("openseg_ceiling", "openseg_probe", "report_openseg")


def test_batches_are_full_batches_of_one_permutation_per_epoch(bench):
    oc = bench["openseg_ceiling"]
    out = oc.batches(10, 4, 5, np.random.default_rng(0))
    assert len(out) == 5 and all(len(b) == 4 for b in out)
    for epoch in (out[0:2], out[2:4]):  # 10 images give 2 full batches an epoch, no image twice in one
        seen = [i for b in epoch for i in b]
        assert len(set(seen)) == 8 and set(seen) <= set(range(10))
    with pytest.raises(SystemExit, match="fewer than one batch"):
        oc.batches(3, 4, 1, np.random.default_rng(0))


class _Cfg:
    class model:
        temperature = 0.07

    class train:
        max_iter = 300

    class data:
        batch_size = 3


def test_fit_finds_the_known_optimum_of_a_hand_made_world(bench):
    # three images, each one segment of its own class, each caption one word of its own: L_G is lowest when every
    # class vector points at its image's word
    oc = bench["openseg_ceiling"]
    torch.manual_seed(0)
    words = F.normalize(torch.randn(3, 8), dim=-1)

    def make(images):
        ri = torch.tensor([[i] for i in images])
        return ri, torch.ones(3, 1, dtype=torch.bool), words[images][:, None], torch.ones(3, 1, dtype=torch.bool)

    start = F.normalize(torch.randn(3, 8), dim=-1)
    ri, rv, w, wv = make([0, 1, 2])
    before = float(oc.grounding(start[ri], torch.tensor(0.07), rv, w, wv))
    vectors, shift, tau, tail = oc.fit(_Cfg, torch.eye(3), start, make, [0, 1, 2], 0, 1e-2, lambda m: None)
    assert tail < 0.1 * before and tail < 0.1 * 2 * math.log(3)
    assert (vectors @ words.t()).argmax(1).tolist() == [0, 1, 2] and not shift.any()  # no bias: stays zero
    # a linear probe: each segment's 2 features are its class's 2-d code (+ noise); the map W (2 x 8) + b must send
    # them to their words
    codes = torch.tensor([[1.0, 0], [0, 1], [1, 1]])
    x = codes + 0.01 * torch.randn(3, 2)
    weight, shift, tau, tail = oc.fit(_Cfg, x, torch.randn(2, 8) * 0.1, make, [0, 1, 2], 0, 1e-2, lambda m: None,
                                      bias=True)
    assert tail < 0.1 * 2 * math.log(3) and shift.any()
    assert (F.normalize(x @ weight + shift, dim=-1) @ words.t()).argmax(1).tolist() == [0, 1, 2]
    # AdamW's decoupled decay on W only: a strong one keeps W smaller than none does from the same start
    decayed = oc.fit(_Cfg, x, torch.randn(2, 8) * 0.1, make, [0, 1, 2], 0, 1e-2, lambda m: None, bias=True,
                     weight_decay=50.0)[0]
    assert float(decayed.norm()) < 0.5 * float(weight.norm())


def test_class_probe_separates_separable_classes_and_not_noise(bench):
    oc = bench["openseg_ceiling"]
    torch.manual_seed(0)
    centres = 4 * torch.randn(5, 6)
    labels = {w: torch.arange(5).repeat(n) for w, n in (("train", 20), ("val", 10))}
    things = {w: v < 3 for w, v in labels.items()}  # classes 0-2 things, 3-4 stuff
    x = {w: centres[v] + 0.1 * torch.randn(len(v), 6) for w, v in labels.items()}
    res = oc.class_probe(x, labels, things, steps=200)
    assert res == {"train_top1": 1.0, "classes": 5, "steps": 200, "thing": 1.0, "stuff": 1.0}
    noise = {w: torch.randn(len(v), 6) for w, v in labels.items()}  # features unrelated to the class: ~chance
    assert oc.class_probe(noise, labels, things, steps=200)["thing"] < 0.5


def test_rgb_segment_features_are_the_segments_mean_colours(bench):
    # the slow obvious reference: every segment's normalised pixels averaged by hand from the image and its mask
    oc = bench["openseg_ceiling"]
    sys.path.insert(0, str(ROOT))
    from omniseg.engine.config import load_config
    from omniseg.modeling.preprocess import PIXEL_MEAN, PIXEL_STD
    from omniseg.ops.rle import rle_decode
    from omniseg.recipes.openseg import OpenSegExperiment

    cfg = load_config(OpenSegExperiment, ROOT / "configs" / "openseg_smoke.yaml",
                      ["data.val_num_images=3", "data.batch_size=2"])
    world = oc.World(cfg, "val")
    feats = oc.segment_features(oc.feature_maps("rgb", cfg), cfg, world)
    assert [len(f) for f in feats] == [len(s) for s in world.segments] and sum(map(len, feats)) > 0
    mean, std = torch.tensor(PIXEL_MEAN), torch.tensor(PIXEL_STD)
    for index, (segs, got) in enumerate(zip(world.segments, feats)):
        image = torch.as_tensor(np.asarray(world.load(index)), dtype=torch.float32)  # H x W x 3 (by record index)
        for s, row in zip(segs, got):
            m = torch.as_tensor(rle_decode(s.mask), dtype=torch.bool)
            assert m.shape == image.shape[:2]
            want = (image[m].mean(0) - mean) / std
            # gt_regions clamps mask weights to >= 1e-6: every outside pixel weighs 1e-6 (<= 1e-3 on small segments)
            assert torch.allclose(row, want, atol=1e-2), (row, want)
    with pytest.raises(SystemExit, match="expected classes, rgb"):
        oc.feature_maps("fz", cfg)
    with pytest.raises(SystemExit, match="names no model.pretrained"):
        oc.feature_maps("trunk", cfg)


def test_name_scorer_by_hand(bench):
    op = bench["openseg_probe"]

    class Cat:
        def __init__(self, name):
            self.name = name

    basis = {"red": [1, 0, 0, 0], "circle": [0, 1, 0, 0], "blue": [0, 0, 1, 0], "grass": [0, 0, 0, 1]}

    def embed(texts):
        return torch.tensor([[sum(basis[w][d] for w in t.split()) for d in range(4)] for t in texts],
                            dtype=torch.float32)

    scorer = op.NameScorer([Cat("red circle"), Cat("blue circle"), Cat("grass")], embed)
    # segment 0 (red circle) points between "blue" and "grass": grass wins among all names and among the present
    # ones (red circle, grass); segment 1 (grass) is grass
    scorer.add(torch.tensor([[0.0, 0, 1, 1], [0, 0, 0, 2]]), [0, 2], [True, False])
    res = scorer.summary()
    assert res["thing"] == {"segments": 1, "top1_all": 0.0, "top1_present": 0.0, "chance_present": 0.5,
                            "own_word_cos": 0.0, "absent_word_cos": 0.707}  # own: red, circle; absent: blue
    assert res["stuff"] == {"segments": 1, "top1_all": 1.0, "top1_present": 1.0, "chance_present": 0.5,
                            "own_word_cos": 1.0, "absent_word_cos": 0.0}


def test_report_renders_the_ceiling_record(bench, tmp_path):
    ro = bench["report_openseg"]
    assert ro.ceiling_section(tmp_path) == []  # nothing recorded: no section
    kind = {"segments": 4, "top1_all": 0.5, "top1_present": 0.75, "chance_present": 0.25, "own_word_cos": 0.3,
            "absent_word_cos": -0.1}
    fit = {"lr": 0.001, "lg_last100_by_lr": {"0.001": 2.5}, "tau": 0.05, "lg_last100": 2.5, "lg_heldout": 2.9,
           "images": 3, "thing": kind, "stuff": {**kind, "top1_present": 1.0}}
    rec = {"config": "configs/openseg_synth.yaml", "steps": 2000, "batch": 8, "keep_prob": 0.5, "words": "noun_adj",
           "text": "minilm", "chance": 4.159, "names": {"tau": 0.2, "lg_heldout": 3.63},
           "fitted": {"names": fit, "random": {**fit, "lg_last100": 3.1}}, "seconds": 30.0, "machine": "m",
           "command": "python bench/openseg_ceiling.py --out x"}
    (tmp_path / "openseg").mkdir()
    (tmp_path / "openseg" / "ceiling.json").write_text(json.dumps(rec))
    text = "\n".join(ro.ceiling_section(tmp_path))
    assert "2 log 8 = 4.16" in text and "best tau 0.2) give 3.63" in text
    assert ("| class-name embeddings (text-aligned) | 0.001 | 2.50 | 2.90 | thing | 0.500 | 0.750 | 0.250 | +0.300 "
            "| -0.100 |") in text
    assert "| random unit vectors (from scratch) | 0.001 | 3.10 | 2.90 | stuff | 0.500 | 1.000 |" in text


def _smoke(*args: str, steps: int = 20) -> subprocess.CompletedProcess:
    """bench/openseg_ceiling.py on the smoke config's tiny world (6 + 4 images, ``steps`` fitting steps)."""
    return subprocess.run([sys.executable, str(ROOT / "bench" / "openseg_ceiling.py"), "--config",
                           str(ROOT / "configs" / "openseg_smoke.yaml"), "--set", f"train.max_iter={steps}", "--set",
                           "data.train_num_images=6", "--set", "data.val_num_images=4", "--images", "3",
                           "--heldout-batches", "2", *args], env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=ROOT,
                          capture_output=True, text=True, timeout=240)


def test_smoke_run_on_a_tiny_world(tmp_path):
    # a few steps on the smoke config's world: the numbers mean nothing, the bookkeeping is checked by hand
    out = tmp_path / "ceiling.json"
    _smoke("--out", str(out)).check_returncode()
    res = json.loads(out.read_text())
    assert res["steps"] == 20 and res["batch"] == 2 and res["chance"] == round(2 * math.log(2), 3)
    assert res["names"]["lg_heldout"] == min(res["names"]["lg_heldout_by_tau"].values())
    sys.path.insert(0, str(ROOT))
    from omniseg.recipes.data import open_source
    from omniseg.recipes.openseg import gt_segments

    rs, _ = open_source("synth", 4, 1000, 64, False)  # the smoke config's held-out world (val_seed, 64 px)
    counts = {"thing": 0, "stuff": 0}
    for rec in list(rs)[:3]:
        for s in gt_segments(rec):
            counts["thing" if s.is_thing else "stuff"] += not s.is_crowd
    for init in ("names", "random"):
        fit = res["fitted"][init]
        assert fit["lg_last100"] == min(fit["lg_last100_by_lr"].values())
        assert fit["lr"] == float(min(fit["lg_last100_by_lr"], key=fit["lg_last100_by_lr"].get))
        assert all(fit[k]["segments"] == counts[k] > 0 for k in counts)
        assert all(0 <= fit[k]["top1_all"] <= fit[k]["top1_present"] <= 1 for k in counts)


def test_linear_probe_smoke_run(tmp_path):
    # --features: one linear map (random start) instead of the two class-vector starts, and no frozen-names row
    out = tmp_path / "rgb.json"
    _smoke("--features", "rgb", "--out", str(out), steps=10).check_returncode()
    res = json.loads(out.read_text())
    assert res["features"] == "rgb" and res["feature_dim"] == 3 and "names" not in res
    assert list(res["fitted"]) == ["random"] and 0 <= res["class_probe"]["train_top1"] <= 1
    fit = res["fitted"]["random"]
    assert fit["lg_last100"] == min(fit["lg_last100_by_lr"].values()) and fit["thing"]["segments"] > 0
    bad = _smoke("--features", "fz")
    assert bad.returncode == 1 and "--features 'fz': expected classes, rgb" in bad.stderr
    missing = _smoke("--features", "fz:/nonexistent/run")  # a user error: one line naming the run, no traceback
    assert missing.returncode == 1 and "/nonexistent/run" in missing.stderr and "Traceback" not in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1


def test_report_renders_linear_probe_records(bench, tmp_path):
    ro = bench["report_openseg"]
    assert ro.linear_section(tmp_path) == []
    kind = {"segments": 4, "top1_all": 0.5, "top1_present": 0.75, "chance_present": 0.25, "own_word_cos": 0.3,
            "absent_word_cos": -0.1}
    fit = {"lr": 0.003, "lg_last100": 2.9, "lg_heldout": 3.1, "thing": kind, "stuff": {**kind, "top1_present": 0.5}}
    (tmp_path / "openseg" / "linear").mkdir(parents=True)
    for name, spec, wd in (("a", "fz:runs/openseg/x_s0", 0.0), ("b", "trunk", 0.5)):
        (tmp_path / "openseg" / "linear" / f"{name}.json").write_text(json.dumps(
            {"features": spec, "feature_dim": 240, "weight_decay": wd, "train_images": 400, "fitted": {"random": fit}, "machine": "m", "seconds": 12.0,
             "class_probe": {"train_top1": 0.99, "thing": 0.05, "stuff": 0.78}}))
    text = "\n".join(ro.linear_section(tmp_path))
    assert ("| `fz:runs/openseg/x_s0` | F_z of run x_s0 (trained) | 240 | 400 | 0.003 | 2.90 | 3.10 | 0.750 (0.250) "
            "| 0.500 (0.250) | +0.300 / -0.100 | +0.300 / -0.100 | 0.990 / 0.050 / 0.780 | m, 12 |") in text
    assert "| `trunk`, AdamW weight decay 0.5 | the config's dense-pretrained ResNet trunk" in text
