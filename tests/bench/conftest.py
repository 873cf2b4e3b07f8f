"""The ``bench`` fixture: the bench/ scripts a test module names in its ``BENCH`` tuple, imported as modules
(bench/ on sys.path while the module's tests run, as the scripts put it there themselves)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

BENCH_DIR = str(Path(__file__).resolve().parents[2] / "bench")


@pytest.fixture(scope="module")
def bench(request) -> dict:
    """Module name -> the imported bench script, for each name in the test module's ``BENCH``."""
    sys.path.insert(0, BENCH_DIR)
    try:
        yield {n: importlib.import_module(n) for n in request.module.BENCH}
    finally:
        sys.path.remove(BENCH_DIR)
