"""bench/peer_speed.py: the timing loop's bookkeeping and the ABBA aggregation (no torchvision needed;
the timings themselves are not tested)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


# imported by the `bench` fixture (tests/bench/conftest.py)
BENCH = ("peer_speed",)


@pytest.fixture(scope="module")
def peer_speed(bench):
    return bench["peer_speed"]


def _args(**kw) -> argparse.Namespace:
    base = dict(rounds=2, steps=2, warmup=1, images=2, threads=1, image_size=32, score_threshold=0.0,
                torchvision_sampling_ratio=-1, omniseg_python="py", torchvision_python="py")
    return argparse.Namespace(**{**base, **kw})


def test_time_reports_wall_and_cpu_per_timed_step(peer_speed):
    batch = type("B", (), {"images": torch.zeros(2, 3, 8, 8, dtype=torch.uint8), "image_sizes": [(8, 8), (6, 7)]})
    steps, seen = [], []
    out = peer_speed._time(_args(), torch.nn.Linear(2, 2), [batch] * 3, steps.append,
                           lambda x: seen.append(tuple(x.shape)) or 5, {"extra": 1})
    assert len(steps) == 3  # warm-up + timed
    assert len(out["train_s_per_step"]) == len(out["train_cpu_s_per_step"]) == 2
    assert all(t >= 0 for t in out["train_s_per_step"] + out["train_cpu_s_per_step"])
    assert len(out["inference_s_per_image"]) == 2 and out["detections"] == [5, 5]  # first image warms up
    assert seen[1] == (3, 6, 7)  # the valid part of the padded image
    assert out["extra"] == 1 and out["params_M"] == pytest.approx(6e-6)


def test_compare_runs_abba_and_takes_ratios_of_medians(peer_speed, monkeypatch):
    calls = []
    step = {"omniseg": [[2.0, 4.0], [3.0, 3.0]], "torchvision": [[4.0, 4.0], [6.0, 2.0]]}

    def child(side, args, python):
        r = sum(1 for s in calls if s == side)
        calls.append(side)
        return {"train_s_per_step": step[side][r], "train_cpu_s_per_step": [x / 2 for x in step[side][r]],
                "inference_s_per_image": [1.0, 1.0] if side == "omniseg" else [2.0, 2.0], "detections": [3, 4],
                "params_M": 1.5, "torch": "t", "torchvision": "tv"}

    monkeypatch.setattr(peer_speed, "_child", child)
    out = peer_speed.compare(_args())
    assert calls == ["omniseg", "torchvision", "torchvision", "omniseg"]
    t = out["train_s_per_step"]
    assert t["omniseg"] == 3.0 and t["torchvision"] == 4.0 and t["ratio_omniseg_over_torchvision"] == 0.75
    assert t["per_round_ratios"] == [0.75, 0.75] and t["median_per_round_ratio"] == 0.75
    assert out["train_cpu_s_per_step"]["ratio_omniseg_over_torchvision"] == 0.75
    assert out["inference_s_per_image"]["ratio_omniseg_over_torchvision"] == 0.5
    assert out["detections_per_image"] == {"omniseg": 3.5, "torchvision": 3.5}
