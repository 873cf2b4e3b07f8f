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
    before = float(oc.grounding(start, torch.tensor(0.07), ri, rv, w, wv))
    vectors, tau, tail = oc.fit(_Cfg, start, make, [0, 1, 2], 0, 1e-2, lambda m: None)
    assert tail < 0.1 * before and tail < 0.1 * 2 * math.log(3)
    assert (vectors @ words.t()).argmax(1).tolist() == [0, 1, 2]


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


def test_smoke_run_on_a_tiny_world(tmp_path):
    # a few steps on the smoke config's world: the numbers mean nothing, the bookkeeping is checked by hand
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "ceiling.json"
    subprocess.run([sys.executable, str(ROOT / "bench" / "openseg_ceiling.py"), "--config",
                    str(ROOT / "configs" / "openseg_smoke.yaml"), "--set", "train.max_iter=20", "--set",
                    "data.train_num_images=6", "--set", "data.val_num_images=4", "--images", "3",
                    "--heldout-batches", "2", "--out", str(out)], check=True, env=env, cwd=ROOT,
                   capture_output=True, timeout=240)
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
