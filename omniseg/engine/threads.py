"""Torch threads per process: one on small machines, a fair share under torchrun (issue 16).

Imports only the standard library (torch is not loaded by choosing): the CLI applies the choice
before a command imports torch, the trainer again for ``train.threads``.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping

logger = logging.getLogger(__name__)


def choose_threads(cores: int, local_world_size: int, env: Mapping[str, str], override: int | None = None
                   ) -> int | None:
    """Torch intra-op threads for one process; None keeps torch's own choice.

    In order: ``override`` (``--threads`` / ``train.threads``); a non-empty ``OMP_NUM_THREADS`` in
    ``env`` (the user's, which torch reads itself: None); several processes on this machine
    (``local_world_size`` > 1, torchrun's ``LOCAL_WORLD_SIZE``): ``cores // local_world_size``, at least 1;
    ``cores`` <= 2: 1 (on a busy 2-core machine a training step took 2.3-3.7 s with torch's default
    of 2 threads, 0.48 s with 1); otherwise None. torchrun itself sets ``OMP_NUM_THREADS=1`` for its workers
    when it is unset, and that is respected like a user's value.
    """
    if override is not None:
        return override
    if env.get("OMP_NUM_THREADS", "").strip():
        return None
    if local_world_size > 1:
        return max(1, cores // local_world_size)
    return 1 if cores <= 2 else None


_applied: int | None = None  # the thread count this process last set (None: not set)


def apply_threads(override: int | None = None) -> int | None:
    """Set this process's torch threads as :func:`choose_threads` says; returns the count set, or None.

    Called by :func:`main` before a command runs and by the trainer. Without ``override`` an
    earlier call's count stands. Before torch is imported the count goes into ``OMP_NUM_THREADS``
    (torch reads it when it loads, so the CLI need not import torch); after, ``torch.set_num_threads``.
    """
    global _applied
    if override is None and _applied is not None:
        return _applied
    try:
        local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE") or 1)
    except ValueError:
        local_world_size = 1
    cores = os.cpu_count() or 1
    n = choose_threads(cores, local_world_size, os.environ, override)
    if n is None:
        return None
    torch = sys.modules.get("torch")
    if torch is None:
        os.environ["OMP_NUM_THREADS"] = str(n)
    elif torch.get_num_threads() != n:
        torch.set_num_threads(n)
    if n != _applied:
        logger.info("torch threads per process: %d (%d cores, %d process(es) on this machine%s)", n, cores,
                    local_world_size, ", set by --threads / train.threads" if override is not None else "")
    _applied = n
    return n
