"""Data-parallel training under ``torchrun`` (PyTorch DDP): one process per device, rank 0 writes.

``torchrun --nproc_per_node K -m autoprune.cli train|compare|progressive ...`` starts K processes;
``init_from_env`` joins them into a process group (gloo on CPU, NCCL on GPU). Every rank draws the
same global batches from the same seed and trains on its slice (``rank::world``); the loss is
scaled so DDP's gradient average equals the single-process gradient of the whole batch, so K
processes train like one with the same global batch -- except for BatchNorm, whose batch
statistics are per rank (DDP's default; running statistics follow rank 0). Decisions that must agree across ranks
(which channels a cut removes, which allocation an allocator picks) are made on rank 0 and
broadcast (``from_main``).
"""
from __future__ import annotations

import os
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.nn as nn


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_and_world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if active() else (0, 1)


def is_main() -> bool:
    """True in a single process and on rank 0: the one process that writes files and prints."""
    return rank_and_world()[0] == 0


def init_from_env() -> bool:
    """Join torchrun's process group (``WORLD_SIZE`` > 1 in the environment); False when not under torchrun."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or active():
        return active()
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))  # "cuda" now means this rank's GPU
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")
    return True


def wrap(model: nn.Module) -> nn.Module:
    """``model`` in DistributedDataParallel when running under torchrun (parameters broadcast from rank 0)."""
    if not active():
        return model
    from torch.nn.parallel import DistributedDataParallel

    if next(model.parameters()).is_cuda:
        return DistributedDataParallel(model, device_ids=[torch.cuda.current_device()])
    return DistributedDataParallel(model)


def unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


def shard(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's slice of a global batch."""
    rank, world = rank_and_world()
    return (x, y) if world == 1 else (x[rank::world], y[rank::world])


def from_main(compute: Callable[[], Any]) -> Any:
    """``compute()`` on rank 0, its (picklable) result broadcast to every rank; plain call without DDP."""
    if not active():
        return compute()
    box = [compute() if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if active():
        dist.barrier()
