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


@pytest.fixture
def bench_error():
    """``bench_error(script, *args)``: run bench/<script>.py, expect a user error (exit 1, nothing on stdout, one line
    on stderr, no traceback) and return that line."""
    import subprocess

    def run(script: str, *args: str) -> str:
        r = subprocess.run([sys.executable, str(Path(BENCH_DIR) / f"{script}.py"), *args], capture_output=True,
                           text=True, timeout=120)
        line = r.stderr.strip()
        assert r.returncode == 1 and r.stdout == "", (r.returncode, r.stdout, r.stderr)
        assert line.splitlines() == [line] and "Traceback" not in line, r.stderr
        return line

    return run
