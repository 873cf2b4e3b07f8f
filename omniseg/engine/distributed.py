"""torch.distributed plumbing: init from torchrun's environment, rank helpers, gathers.

Every helper works without an initialized process group (rank 0 of a world of 1), so the
same code runs single-process, under ``torchrun --nproc_per_node N`` (env:// rendezvous:
RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) and on CPU with gloo in tests.
"""

from __future__ import annotations

import datetime
import os
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def get_local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0")) if is_distributed() else 0


def is_main_process() -> bool:
    return get_rank() == 0


def init_distributed(backend: str | None = None, timeout_s: float = 1800.0) -> bool:
    """Initialize the default process group from torchrun's environment variables.

    Does nothing (returns False) when ``WORLD_SIZE`` is unset or 1. The backend defaults
    to nccl when CUDA is available, gloo otherwise; with CUDA each process is pinned to
    ``cuda:LOCAL_RANK``.

    Returns:
        True when a multi-process group is (now) initialized.
    """
    if is_distributed():
        return True
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return False
    for key in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        if key not in os.environ:
            raise RuntimeError(
                f"init_distributed: WORLD_SIZE={world} but {key} is not set (launch with torchrun)"
            )
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(
        backend=backend, init_method="env://", timeout=datetime.timedelta(seconds=timeout_s)
    )
    return True


def destroy_distributed() -> None:
    if is_distributed():
        dist.destroy_process_group()


def barrier() -> None:
    if get_world_size() > 1:
        dist.barrier()


def all_gather_object(obj: Any) -> list[Any]:
    """Gather a picklable object from every rank; returns ``[obj_rank0, obj_rank1, ...]``.

    Used to collect per-rank evaluation predictions on every rank. Objects travel
    between processes of the same run only; nothing is unpickled from files.
    """
    world = get_world_size()
    if world == 1:
        return [obj]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def any_rank_true(flag: bool, device: torch.device | str = "cpu") -> bool:
    """True on every rank if ``flag`` is True on at least one (a collective: call on all ranks)."""
    if get_world_size() == 1:
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def reduce_mean(values: dict[str, float], device: torch.device | str = "cpu") -> dict[str, float]:
    """Average scalar metrics over ranks (for logging). Keys must match on all ranks."""
    if get_world_size() == 1 or not values:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= get_world_size()
    return dict(zip(keys, t.tolist()))


def shard_indices(n: int, rank: int, world: int) -> list[int]:
    """Indices ``rank, rank + world, ...`` of ``range(n)``: disjoint across ranks, covering all.

    Ranks may differ by one element when ``world`` does not divide ``n``; pad or drop
    at the caller if equal sizes matter (DDP needs the same number of steps per rank).
    """
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"shard_indices: need 0 <= rank < world, got rank={rank}, world={world}")
    if n < 0:
        raise ValueError(f"shard_indices: n must be >= 0, got {n}")
    return list(range(rank, n, world))


def wrap_ddp(model: nn.Module, device: torch.device, find_unused_parameters: bool = False) -> nn.Module:
    """Wrap in DistributedDataParallel when running distributed; otherwise return ``model``."""
    if get_world_size() == 1 or isinstance(model, nn.parallel.DistributedDataParallel):
        return model
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(
        model, device_ids=device_ids, find_unused_parameters=find_unused_parameters
    )
