"""omniseg.engine.threads: the thread count chosen per process and how it is applied."""

from __future__ import annotations

import os
import sys

import pytest

from omniseg.engine.threads import apply_threads, choose_threads


@pytest.mark.parametrize(("cores", "local_world_size", "env", "override", "want"), [
    (2, 1, {}, None, 1),  # small machine: one thread
    (1, 1, {}, None, 1),
    (8, 1, {}, None, None),  # a bigger machine keeps torch's choice
    (8, 4, {}, None, 2),  # torchrun, 4 processes on 8 cores: 2 each
    (6, 4, {}, None, 1),
    (2, 8, {}, None, 1),  # never 0
    (2, 1, {"OMP_NUM_THREADS": "2"}, None, None),  # the user's OMP_NUM_THREADS is respected
    (8, 4, {"OMP_NUM_THREADS": "3"}, None, None),
    (2, 1, {"OMP_NUM_THREADS": " "}, None, 1),  # blank is unset
    (2, 1, {"OMP_NUM_THREADS": "2"}, 3, 3),  # --threads / train.threads win
    (64, 8, {}, 5, 5),
])
def test_choose_threads(cores, local_world_size, env, override, want) -> None:
    assert choose_threads(cores, local_world_size, env, override) == want


@pytest.fixture
def fresh_threads(threads_restored, monkeypatch):
    """A process that has not chosen its threads yet, without OMP_NUM_THREADS / LOCAL_WORLD_SIZE."""
    for name in ("OMP_NUM_THREADS", "LOCAL_WORLD_SIZE"):
        monkeypatch.setenv(name, "")  # recorded, so what apply_threads writes is undone afterwards
        monkeypatch.delenv(name)


def test_apply_threads_before_torch_loads_goes_through_the_environment(fresh_threads, monkeypatch) -> None:
    monkeypatch.delitem(sys.modules, "torch")
    monkeypatch.setattr(os, "cpu_count", lambda: 12)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert apply_threads() == 3
    assert os.environ["OMP_NUM_THREADS"] == "3"
    assert apply_threads() == 3  # chosen once; a later automatic call keeps it
