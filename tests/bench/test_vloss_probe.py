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
        else:
            assert r["p_true"] is None and r["top1"] is None
    # leaving the novel names out of the softmax can only raise each query's base-class probabilities, so also
    # their maximum over the covering queries (the query picked may change: only p_true is ordered)
    full = bench["vloss_probe"].probe(str(run), images=6, group="base", split="train")
    pan = bench["vloss_probe"].probe(str(run), images=6, group="base", split="train", vocabulary="panoptic")
    assert pan["vocabulary"] == "panoptic" and pan["covered"] == full["covered"]
    if full["covered"]:
        assert pan["p_true"] >= full["p_true"]
