"""Worker pools of ``multiprocessing``: their start method, signal handling and ending.

Ctrl-C reaches every process of the foreground group; a pool's workers should leave it to the
parent, which ends the pool with SIGTERM (``Pool.terminate``) on an error or Ctrl-C. A worker then
exits quietly with ``128 + SIGTERM`` through ``SystemExit``, so its ``finally`` blocks (temp-file
cleanup in :mod:`omniseg.utils.atomic`) run and no traceback is printed per worker. A pool whose
work is done is closed and joined instead (:func:`worker_pool`): ``with Pool()`` would terminate
it, and a SIGTERM that reaches a worker already running its exit handlers printed
"Exception ignored in atexit callback ... SystemExit: 143" at the end of a successful run.
"""

from __future__ import annotations

import multiprocessing as mp
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing.context import BaseContext
from multiprocessing.pool import Pool
from typing import Any


def _exit_quietly(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def quiet_pool_worker() -> None:
    """Pool ``initializer``: ignore SIGINT, turn SIGTERM into a quiet ``SystemExit``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit_quietly)


def pool_context() -> BaseContext:
    """The start method of every worker pool: ``spawn``, a fresh interpreter per worker.

    Forking a parent that has run torch, spaCy or a test runner's threads copies their locks in
    whatever state they are; a worker then waits on a lock nobody will release (seen as a CI run
    that hung inside the test suite). A fresh interpreter costs about a second per worker.
    """
    return mp.get_context("spawn")


@contextmanager
def worker_pool(processes: int, initializer: Callable[..., None] = quiet_pool_worker,
                initargs: tuple[Any, ...] = ()) -> Iterator[Pool]:
    """A :func:`pool_context` pool: closed and joined when the block ends normally (every worker exits
    by itself), terminated and joined when it raises (an error, Ctrl-C). ``initializer`` should call
    :func:`quiet_pool_worker`."""
    pool = pool_context().Pool(processes, initializer=initializer, initargs=initargs)
    try:
        yield pool
    except BaseException:
        pool.terminate()
        pool.join()
        raise
    pool.close()
    pool.join()
