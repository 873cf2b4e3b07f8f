"""Signal handling for worker processes of a ``multiprocessing`` pool.

Ctrl-C reaches every process of the foreground group; a pool's workers should leave it to the
parent, which ends the pool with SIGTERM (``Pool.terminate``). A worker then exits quietly with
``128 + SIGTERM`` through ``SystemExit``, so its ``finally`` blocks (temp-file cleanup in
:mod:`omniseg.utils.atomic`) run and no traceback is printed per worker.
"""

from __future__ import annotations

import multiprocessing as mp
import signal
from multiprocessing.context import BaseContext


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
