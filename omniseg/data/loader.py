"""Train and test loaders: datasets + :mod:`omniseg.data.sampler` + :func:`collate` -> :class:`Batch`.

``build_train_loader`` returns a :class:`TrainLoader`, an endless iterator of batches whose
:meth:`TrainLoader.state_dict` is the sampler state *as of the last batch handed to the
caller* (the DataLoader prefetches ahead; those batches are replayed after a resume).
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from torch.utils.data import DataLoader, Dataset

from omniseg.data.batch import Batch, Sample, collate
from omniseg.data.dataset import InMemoryImages, RecordDataset, Transform
from omniseg.data.records import RecordSet
from omniseg.data.sampler import Key, MultiSourceBatchSampler, Policy

Phase = Literal["warmup", "cooldown", "both"]


@dataclass
class Source:
    """One training source.

    Attributes:
        data: a ready :class:`RecordDataset`, or a :class:`RecordSet` that the loader wraps
            with the loader's ``transforms`` (and ``load_image``).
        weight: mixing probability (``mix``) or integer repeat count (``alternate``/``switchable``).
        phase: which switchable sub-epoch uses it (VLOSS: detection -> "warmup", panoptic ->
            "cooldown", image-text -> "both"); ignored by the other policies.
        load_image: in-memory images for a RecordSet (``index -> H x W x 3 uint8``).
    """

    data: RecordDataset | RecordSet
    weight: float = 1.0
    phase: Phase = "both"
    load_image: InMemoryImages | None = None


class MultiSourceDataset(Dataset):
    """Routes sampler keys ``(source, index, aug_seed)`` to the source datasets."""

    def __init__(self, datasets: Sequence[RecordDataset]):
        self.datasets = list(datasets)

    def __len__(self) -> int:
        return sum(len(d) for d in self.datasets)

    def __getitem__(self, key: Key) -> Sample:
        source, index, aug_seed = key
        return self.datasets[source][(index, aug_seed)]


class _RecordingBatchSampler:
    """Wraps the sampler; remembers the sampler state after each batch it hands out."""

    def __init__(self, sampler: MultiSourceBatchSampler, states: deque):
        self.sampler, self.states = sampler, states

    def __iter__(self) -> Iterator[list[Key]]:
        while True:
            keys = self.sampler.next_batch()
            self.states.append(self.sampler.state_dict())
            yield keys


class TrainLoader:
    """Endless iterator of :class:`Batch` with a resumable state.

    Each ``iter()`` restarts from the state of the last delivered batch, so iterating,
    stopping and iterating again loses no batch.
    """

    def __init__(
        self,
        dataset: MultiSourceDataset,
        sampler: MultiSourceBatchSampler,
        num_workers: int = 0,
        pin_memory: bool = False,
        size_divisibility: int = 32,
        pad_size: tuple[int, int] | None = None,
    ):
        self.dataset, self.sampler = dataset, sampler
        self.num_workers, self.pin_memory = int(num_workers), pin_memory
        self.collate_fn = functools.partial(collate, size_divisibility=size_divisibility, pad_size=pad_size)
        self._delivered = sampler.state_dict()

    def __iter__(self) -> Iterator[Batch]:
        self.sampler.load_state_dict(self._delivered)
        states: deque = deque()
        loader = DataLoader(
            self.dataset,
            batch_sampler=_RecordingBatchSampler(self.sampler, states),
            num_workers=self.num_workers,
            collate_fn=self.collate_fn,
            pin_memory=self.pin_memory,
            persistent_workers=False,
        )
        for batch in loader:
            self._delivered = states.popleft()
            yield batch

    def state_dict(self) -> dict[str, Any]:
        """JSON-able sampler state after the last batch this loader delivered."""
        return dict(self._delivered)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state)
        self._delivered = self.sampler.state_dict()


def build_train_loader(
    sources: Sequence[Source | RecordDataset | RecordSet],
    policy: Policy = "mix",
    batch_size: int = 2,
    transforms: Transform | None = None,
    num_workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    *,
    warmup_batches: int | None = None,
    cooldown_batches: int | None = None,
    pin_memory: bool = False,
    size_divisibility: int = 32,
    pad_size: tuple[int, int] | None = None,
) -> TrainLoader:
    """Endless training loader over several sources combined by ``policy``.

    Args:
        sources: :class:`Source` s (or bare datasets / record sets, weight 1, phase "both").
        policy: "mix", "alternate" or "switchable" (see :mod:`omniseg.data.sampler`).
        batch_size: images per batch on this rank.
        transforms: applied to sources given as RecordSets (RecordDatasets keep their own).
        num_workers: DataLoader worker processes (0 = in the main process).
        rank, world_size: data-parallel layout; ranks draw disjoint indices within a pass.
        seed: the same on every rank.
        warmup_batches, cooldown_batches: switchable sub-epoch lengths (default one pass).
        pin_memory: pin batches for fast ``batch.to("cuda", non_blocking=True)``.
        size_divisibility, pad_size: padding of the collated images (see :func:`collate`).
    """
    srcs = [s if isinstance(s, Source) else Source(s) for s in sources]
    datasets = [
        s.data if isinstance(s.data, RecordDataset)
        else RecordDataset(s.data, transforms=transforms, load_image=s.load_image, seed=seed)
        for s in srcs
    ]
    sampler = MultiSourceBatchSampler(
        [len(d) for d in datasets],
        batch_size,
        policy=policy,
        weights=[s.weight for s in srcs],
        warmup_sources=[i for i, s in enumerate(srcs) if s.phase in ("warmup", "both")],
        cooldown_sources=[i for i, s in enumerate(srcs) if s.phase in ("cooldown", "both")],
        warmup_batches=warmup_batches,
        cooldown_batches=cooldown_batches,
        rank=rank,
        world_size=world_size,
        seed=seed,
    )
    return TrainLoader(MultiSourceDataset(datasets), sampler, num_workers, pin_memory, size_divisibility, pad_size)


def build_test_loader(
    rs: RecordSet | RecordDataset,
    batch_size: int = 1,
    transforms: Transform | None = None,
    num_workers: int = 0,
    load_image: InMemoryImages | None = None,
    rank: int = 0,
    world_size: int = 1,
    size_divisibility: int = 32,
) -> DataLoader:
    """One ordered pass over ``rs`` (this rank's share: records rank, rank + W, ...).

    ``transforms`` default to none (stored size); pass
    :func:`omniseg.data.transforms.build_test_transforms` to resize. ``Batch.orig_sizes``
    maps predictions back to the stored image.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank} world_size={world_size}")
    ds = rs if isinstance(rs, RecordDataset) else RecordDataset(rs, transforms=transforms, load_image=load_image)
    return DataLoader(
        ds,
        batch_size=batch_size,
        sampler=list(range(rank, len(ds), world_size)),
        num_workers=num_workers,
        collate_fn=functools.partial(collate, size_divisibility=size_divisibility),
    )
