"""Multi-source batch sampler: several datasets, each with its own supervision kind.

Policies (which source each batch slot draws from):

* ``mix``: every slot of every batch picks a source at random with probability
  proportional to its weight (sources mixed inside a batch).
* ``alternate``: whole batches from one source at a time, cycling through the sources;
  integer weights repeat a source (weights (1, 2) -> A, B, B, A, B, B, ...). The ALP paper
  (alp-fcos-mo, Sec. 3.3, "Training") samples alternating batches from COCO and LocNar when the
  datasets differ in size.
* ``switchable``: VLOSS's switchable training technique (vloss, Sec. 3.4 and Fig. 3): each
  epoch is split into a *warmup* sub-epoch (detection + image-text data) followed by a
  *cooldown* sub-epoch (panoptic + image-text data); inside a sub-epoch whole batches
  alternate between that phase's sources as in ``alternate``. A source may belong to both
  phases (the image-text data). The paper gives no sub-epoch lengths; by default each
  sub-epoch lasts one pass (per rank) over its sources, ``sum(size_i // (world_size * B))``.

The sampler is infinite, seeded and resumable: everything it yields is a function of
``(seed, rank, world_size)`` and the counters in :meth:`state_dict` (plain ints), so a run
restored from a state continues the exact same sequence. Each source is reshuffled every
pass (its own "epoch") and split across ranks like ``DistributedSampler`` without padding:
rank r takes positions r, r + W, r + 2W, ... of the permutation (the ``size % W`` tail of a
pass is left out), so ranks draw disjoint indices within a pass. Batch compositions do not
depend on the rank, so all ranks consume every source at the same rate.

A yielded batch is a list of keys ``(source, index, aug_seed)``: the dataset applies the
transforms with ``np.random.default_rng(aug_seed)``, fresh for every draw.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Literal

import numpy as np

Policy = Literal["mix", "alternate", "switchable"]
POLICIES: tuple[str, ...] = ("mix", "alternate", "switchable")
Key = tuple[int, int, int]

_MIX_STREAM = 0x6D6978  # distinguishes the per-batch choice stream from per-source permutations


def _pattern(sources: Sequence[int], weights: Sequence[float]) -> list[int]:
    out: list[int] = []
    for s in sources:
        w = weights[s]
        if w != int(w) or w < 0:
            raise ValueError(f"alternating policies need non-negative integer weights, got {w} for source {s}")
        out += [s] * int(w)
    if not out:
        raise ValueError(f"alternating policy: sources {list(sources)} all have weight 0")
    return out


class MultiSourceBatchSampler:
    """Infinite, seeded, resumable, rank-aware batch sampler over several sources.

    Args:
        sizes: number of records of each source.
        batch_size: samples per batch (per rank).
        policy: "mix", "alternate" or "switchable" (see module docstring).
        weights: per-source weights (default 1 each): probabilities for ``mix`` (normalized),
            integer repeats for ``alternate`` / ``switchable``.
        warmup_sources, cooldown_sources: source indices of each ``switchable`` phase.
        warmup_batches, cooldown_batches: sub-epoch lengths in batches (default: one pass).
        rank, world_size: this process's rank among ``world_size`` data-parallel processes.
        seed: seed shared by all ranks.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        batch_size: int,
        policy: Policy = "mix",
        weights: Sequence[float] | None = None,
        warmup_sources: Sequence[int] = (),
        cooldown_sources: Sequence[int] = (),
        warmup_batches: int | None = None,
        cooldown_batches: int | None = None,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
    ):
        if policy not in POLICIES:
            raise ValueError(f"sampler policy must be one of {POLICIES}, got {policy!r}")
        if not sizes:
            raise ValueError("MultiSourceBatchSampler needs at least one source")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank} world_size={world_size}")
        self.sizes = [int(s) for s in sizes]
        for i, s in enumerate(self.sizes):
            if s < world_size:
                raise ValueError(f"source {i} has {s} records, fewer than world_size={world_size}")
        self.batch_size, self.policy = int(batch_size), policy
        self.rank, self.world_size, self.seed = int(rank), int(world_size), int(seed)
        self.weights = [1.0] * len(self.sizes) if weights is None else [float(w) for w in weights]
        if len(self.weights) != len(self.sizes) or any(w < 0 for w in self.weights) or sum(self.weights) <= 0:
            raise ValueError(f"weights {self.weights} must be {len(self.sizes)} non-negative numbers, not all 0")
        self.per_rank = [s // self.world_size for s in self.sizes]  # indices per rank per pass
        self._probs = np.asarray(self.weights) / sum(self.weights)
        self._phases: list[tuple[list[int], int]] = []
        if policy == "alternate":
            self._phases = [(_pattern(range(len(self.sizes)), self.weights), 1)]
        elif policy == "switchable":
            for name, srcs, n in (("warmup", warmup_sources, warmup_batches),
                                  ("cooldown", cooldown_sources, cooldown_batches)):
                srcs = [int(s) for s in srcs]
                if not srcs or any(not 0 <= s < len(self.sizes) for s in srcs):
                    raise ValueError(f"switchable: {name}_sources {srcs} must name sources in "
                                     f"[0, {len(self.sizes)})")
                if n is None:  # one pass per rank over the phase's sources
                    n = max(1, sum(self.per_rank[s] // self.batch_size for s in srcs))
                if n < 1:
                    raise ValueError(f"switchable: {name}_batches must be >= 1, got {n}")
                self._phases.append((_pattern(srcs, self.weights), int(n)))
        self.batch = 0  # batches yielded so far
        self.cursors = [0] * len(self.sizes)  # indices drawn so far from each source (this rank)
        self._perm_cache: dict[int, tuple[int, np.ndarray]] = {}

    # -- schedule -------------------------------------------------------------------------
    def phase_of(self, batch: int) -> str:
        """"warmup" or "cooldown" for ``switchable``; the policy name otherwise."""
        if self.policy != "switchable":
            return self.policy
        return "warmup" if batch % self.epoch_batches < self._phases[0][1] else "cooldown"

    @property
    def epoch_batches(self) -> int:
        """Batches per switchable epoch (warmup + cooldown); for other policies one pattern cycle."""
        if self.policy == "switchable":
            return self._phases[0][1] + self._phases[1][1]
        if self.policy == "alternate":
            return len(self._phases[0][0])
        return 1

    def sources_of(self, batch: int) -> list[int]:
        """Source of each slot of batch number ``batch`` (the same on every rank)."""
        if self.policy == "mix":
            rng = np.random.default_rng([self.seed, _MIX_STREAM, batch])
            return rng.choice(len(self.sizes), size=self.batch_size, p=self._probs).tolist()
        if self.policy == "alternate":
            pattern = self._phases[0][0]
            return [pattern[batch % len(pattern)]] * self.batch_size
        pos = batch % self.epoch_batches
        (warm, n_warm), (cool, _) = self._phases
        pattern, p = (warm, pos) if pos < n_warm else (cool, pos - n_warm)
        return [pattern[p % len(pattern)]] * self.batch_size

    # -- indices --------------------------------------------------------------------------
    def _perm(self, source: int, epoch: int) -> np.ndarray:
        cached = self._perm_cache.get(source)
        if cached is None or cached[0] != epoch:
            perm = np.random.default_rng([self.seed, source, epoch]).permutation(self.sizes[source])
            self._perm_cache[source] = cached = (epoch, perm)
        return cached[1]

    def index_at(self, source: int, cursor: int) -> int:
        """This rank's ``cursor``-th index drawn from ``source``."""
        n = self.per_rank[source]
        epoch, pos = divmod(cursor, n)
        return int(self._perm(source, epoch)[self.rank + self.world_size * pos])

    def aug_seed(self, source: int, cursor: int) -> int:
        return int(np.random.SeedSequence([self.seed, source, self.rank, cursor]).generate_state(1)[0])

    def next_batch(self) -> list[Key]:
        """The next batch of keys ``(source, index, aug_seed)``; advances the state."""
        out: list[Key] = []
        for s in self.sources_of(self.batch):
            c = self.cursors[s]
            out.append((s, self.index_at(s, c), self.aug_seed(s, c)))
            self.cursors[s] = c + 1
        self.batch += 1
        return out

    def __iter__(self) -> Iterator[list[Key]]:
        while True:
            yield self.next_batch()

    # -- state ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """JSON-able state: counters plus what they are only valid for."""
        return {
            "batch": self.batch,
            "cursors": list(self.cursors),
            "sizes": list(self.sizes),
            "batch_size": self.batch_size,
            "policy": self.policy,
            "seed": self.seed,
            "rank": self.rank,
            "world_size": self.world_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state``; refuses a state taken with other sources or layout."""
        for k in ("sizes", "batch_size", "policy", "seed", "rank", "world_size"):
            mine = self.state_dict()[k]
            if k in state and state[k] != mine:
                raise ValueError(f"sampler state has {k}={state[k]!r} but this sampler has {k}={mine!r}")
        cursors = [int(c) for c in state["cursors"]]
        if len(cursors) != len(self.sizes) or min(cursors) < 0 or int(state["batch"]) < 0:
            raise ValueError(f"sampler state has invalid counters: {state}")
        self.batch, self.cursors = int(state["batch"]), cursors
