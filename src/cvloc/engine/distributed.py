"""Process-group setup for ``torchrun`` and the few collectives the trainer needs.

``torchrun --nproc_per_node N -m cvloc train ...`` sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`init_distributed` reads them
(env:// initialisation) and picks NCCL on CUDA, Gloo on CPU. Without those variables the
trainer runs as a single process and every helper here is a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job.

    Attributes:
        rank: global rank (0 for a single process).
        world_size: number of processes.
        local_rank: rank on this machine (selects the CUDA device).
        device: the device this process trains on.
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Whether this process logs, shows progress and writes checkpoints (rank 0)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether a process group is in use."""
        return self.world_size > 1


def select_device(device: str, local_rank: int = 0) -> torch.device:
    """The training device for a ``train.device`` setting.

    Args:
        device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
        local_rank: CUDA device index of this process.

    Returns:
        The device.

    Raises:
        RuntimeError: ``"cuda"`` was asked for but CUDA is not available.
    """
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but CUDA is not available")
    return torch.device("cuda", local_rank)


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group described by the torchrun environment, if any.

    Args:
        device: the ``train.device`` setting.

    Returns:
        This process's :class:`DistInfo`.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo(0, 1, 0, select_device(device))
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    target = select_device(device, local_rank)
    if target.type == "cuda":
        torch.cuda.set_device(target)
    if not dist.is_initialized():
        backend = "nccl" if target.type == "cuda" else "gloo"
        dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world_size)
    return DistInfo(rank, world_size, local_rank, target)


def cleanup(info: DistInfo) -> None:
    """Leave the process group joined by :func:`init_distributed`.

    Args:
        info: this process's :class:`DistInfo`.
    """
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    """Wait for every process (no-op for a single process).

    Args:
        info: this process's :class:`DistInfo`.
    """
    if info.distributed:
        dist.barrier()


def all_true(flag: bool, info: DistInfo) -> bool:
    """Whether ``flag`` holds on every process, so that all take the same branch.

    Args:
        flag: this process's value.
        info: this process's :class:`DistInfo`.

    Returns:
        The logical AND over processes.
    """
    if not info.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item() > 0.5)


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Collect one picklable object from every process, in rank order.

    Args:
        obj: this process's object.
        info: this process's :class:`DistInfo`.

    Returns:
        The list of ``world_size`` objects (on every process).
    """
    if not info.distributed:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_buffers(module: nn.Module, info: DistInfo) -> None:
    """Copy rank 0's buffers (BatchNorm statistics) to every process.

    DDP broadcasts buffers at the start of each forward pass, but every rank then updates
    its own copy with its own batch; before validation and at the end of training the
    ranks must agree.

    Args:
        module: the unwrapped model.
        info: this process's :class:`DistInfo`.
    """
    if not info.distributed:
        return
    for buffer in module.buffers():
        dist.broadcast(buffer, src=0)
