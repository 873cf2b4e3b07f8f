"""omniseg.utils.workers: a finished pool's workers exit by themselves; a failing block ends them."""

from __future__ import annotations

import signal

import pytest

from omniseg.utils.workers import worker_pool


def test_a_pool_whose_work_is_done_is_closed_not_terminated():
    with worker_pool(2) as pool:
        assert sorted(pool.map(abs, [-1, -2, 3])) == [1, 2, 3]
        workers = list(pool._pool)  # the worker processes (no public accessor)
    # exit code 0: each left its task loop and exited normally. A terminated pool's workers get SIGTERM and
    # exit 128 + 15 through quiet_pool_worker's handler, or die of it (-15) before it is installed.
    assert [w.exitcode for w in workers] == [0, 0]


def test_a_failing_block_terminates_the_pool_and_reraises():
    with pytest.raises(KeyError), worker_pool(2) as pool:
        workers = list(pool._pool)
        raise KeyError("stop")
    assert all(w.exitcode in (128 + signal.SIGTERM, -signal.SIGTERM) for w in workers), [w.exitcode for w in workers]
