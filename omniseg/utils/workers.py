"""Start methods and signal handling for worker processes of a ``multiprocessing`` pool.

Ctrl-C reaches every process of the foreground group; a pool's workers should leave it to the
parent, which ends the pool with SIGTERM (``Pool.terminate``). A worker then exits quietly with
``128 + SIGTERM`` through ``SystemExit``, so its ``finally`` blocks (temp-file cleanup in
:mod:`omniseg.utils.atomic`) run and no traceback is printed per worker.
"""

from __future__ import annotations

import atexit
import multiprocessing as mp
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from multiprocessing import forkserver
from multiprocessing.context import BaseContext

#: set only in the environment a forkserver starts with (see :func:`pool_context`); this module, the
#: server's first preload, removes it and ignores Ctrl-C there
_SERVER_ENV = "OMNISEG_FORKSERVER"


def _exit_quietly(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def quiet_pool_worker() -> None:
    """Pool ``initializer``: ignore SIGINT, turn SIGTERM into a quiet ``SystemExit``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit_quietly)


def pool_context(preload: Sequence[str] = (), server_env: Mapping[str, str] | None = None) -> BaseContext:
    """The start method of a worker pool: ``spawn`` (a fresh interpreter per worker), or with
    ``preload`` on Linux ``forkserver`` (workers forked from a fresh server that imported ``preload``).

    Forking a parent that has run torch, spaCy or a test runner's threads copies their locks in
    whatever state they are; a worker then waits on a lock nobody will release (seen as a CI run
    that hung inside the test suite). So workers are never forked from the parent: ``spawn`` costs
    a fresh interpreter plus the worker's imports per worker (about 3.7 CPU s for spaCy, which
    imports torch), and a ``forkserver`` pays that once: the server is itself a fresh interpreter
    (fork + exec), imports ``preload`` single-threaded (Python threads: none; OpenBLAS, loaded with
    numpy, shuts its pool down before every fork by its ``pthread_atfork`` handler) and forks each
    worker from that state. Ctrl-C is ignored in the server from its first preload on (Python's own
    server does so only after the preload, which would print a traceback while spaCy loads), and
    the server exits without tearing down its modules.

    The server is started here, once per process, and waited for; ``server_env`` is added to the
    environment it starts with (a preload module reads and removes its variable there: how the
    curation pool loads its tagger once). A server already running keeps the preload and
    environment it was started with: then workers import / load what it lacks themselves (slower,
    same result). The server lives until this process exits (memory of what it preloaded).
    Windows has no ``forkserver``, and on macOS forking a process that loaded system frameworks
    (Accelerate under numpy) is unsafe: both use ``spawn``.
    """
    if not preload or not sys.platform.startswith("linux"):
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload([__name__, *preload])  # this module first: Ctrl-C is ignored from then on
    env = {_SERVER_ENV: "1", **(server_env or {})}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        forkserver.ensure_running()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    # wait here until the server is through its preload: a pool started before that and given up
    # (Ctrl-C) would leave the server a worker request whose queues are gone (a traceback later)
    probe = ctx.Process(target=os.getpid)
    probe.start()
    probe.join()
    return ctx


if os.environ.pop(_SERVER_ENV, None):  # imported as a forkserver's first preload (see pool_context)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # the server ends with its parent and leaves nothing to flush: skip tearing down what it preloaded
    # (0.8 CPU s for spaCy and torch); registered first, so it runs after every other exit handler
    atexit.register(os._exit, 0)
