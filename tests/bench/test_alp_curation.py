"""bench/alp_curation.py's CPU accounting counts the forkserver's workers (children of the server, not of us)."""

from __future__ import annotations

import sys
import time

import pytest

from omniseg.utils.workers import pool_context

BENCH = ("alp_curation",)


def _burn(seconds: float) -> float:
    t0 = time.process_time()
    while time.process_time() - t0 < seconds:
        pass
    return time.process_time() - t0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="forkserver pools only on Linux")
def test_cpu_seconds_include_forkserver_workers(bench):
    cpu = bench["alp_curation"]._cpu_seconds
    with pool_context(preload=["json"]).Pool(2) as pool:  # a forkserver (see pool_context)
        before = cpu()
        burned = sum(pool.map(_burn, [0.3, 0.3]))
        pool.close()
        pool.join()
    assert burned >= 0.6
    assert cpu() - before >= 0.9 * burned  # without the server's /proc figures this is ~0
