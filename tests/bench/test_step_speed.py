"""bench/step_speed.py: the pieces that turn timings into the report (the timing itself is not tested)."""

from __future__ import annotations

import sys
import time
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


# imported by the `bench` fixture (tests/bench/conftest.py)
BENCH = ("step_speed",)


@pytest.fixture(scope="module")
def step_speed(bench):
    return bench["step_speed"]


def test_nms_clock_counts_outermost_calls_only(step_speed, monkeypatch):
    def inner(x):
        time.sleep(0.01)
        return x

    def outer(x):
        return fake_user.inner(x) + 1  # an NMS function calling another one through a patched module

    for f in (inner, outer):
        f.__module__ = "omniseg.ops.nms"
    fake_user = types.ModuleType("omniseg.fake_user")
    fake_user.inner, fake_user.outer, fake_user.other = inner, outer, len
    monkeypatch.setitem(sys.modules, "omniseg.fake_user", fake_user)
    clock = step_speed.NmsClock()
    clock.install()
    assert fake_user.other is len and fake_user.inner is not inner
    assert fake_user.outer(1) == 2
    assert 0.01 <= clock.seconds < 0.5 and clock.depth == 0  # the nested call was not added twice
    with pytest.raises(ZeroDivisionError):
        clock.wrap(lambda: 1 / 0)()
    assert clock.depth == 0  # an exception does not leave the clock "inside"


def test_side_summary_medians_and_nms_free_step(step_speed):
    d = {"step_s": [1.0, 3.0, 2.0], "step_cpu_s": [1.0, 1.0, 1.0], "nms_s": [0.5, 0.5, 1.5],
         "nms_cpu_s": [0.25, 0.25, 0.25], "data_s": [0.1, 0.1, 0.1], "infer_s": [2.0], "infer_nms_s": [0.5],
         "infer_cpu_s": [1.0], "detections": [50]}
    s = step_speed.side_summary(d)
    assert s["step_s"] == 2.0 and s["step_excl_nms_s"] == 0.5  # median of the per-step differences 0.5, 2.5, 0.5
    assert s["step_cpu_excl_nms_s"] == 0.75 and s["infer_excl_nms_s"] == 1.5
    assert s["n_steps"] == 3 and s["n_images"] == 1
