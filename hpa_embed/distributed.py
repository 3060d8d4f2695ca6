"""The process group that training and embedding share: one process, or DDP under ``torchrun``.

:func:`distributed_context` joins the group ``torchrun`` describes (or runs alone) and says which
rank this process is and which device it uses; :func:`all_reduce_sum` and :func:`all_gather_rows`
are the two collective operations the stages need.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistributedContext", "distributed_context", "all_reduce_sum", "all_gather_rows"]


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands: ``rank`` of ``world_size`` processes, on ``device``."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def distributed_context(device: str = "auto") -> DistributedContext:
    """Join the process group that ``torchrun`` describes (``WORLD_SIZE`` > 1), else run alone.

    The backend is NCCL on CUDA and gloo on the CPU. ``device``: ``"auto"`` (CUDA when there is
    one), ``"cpu"`` or ``"cuda"``; a CUDA process takes the GPU of its ``LOCAL_RANK``.
    """
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was asked for but torch sees no CUDA device")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    world_size = dist.get_world_size() if dist.is_initialized() else 1
    if use_cuda:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        return DistributedContext(rank, world_size, torch.device("cuda", local_rank))
    return DistributedContext(rank, world_size, torch.device("cpu"))


def all_reduce_sum(values: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    """Sum of ``values`` over every rank (``values`` itself when alone), on the CPU."""
    if context.world_size > 1:
        values = values.to(context.device)
        dist.all_reduce(values)
    return values.cpu()


def all_gather_rows(tensor: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    """Concatenate equal-shaped ``[n, ...]`` tensors from every rank (rank order)."""
    if context.world_size == 1:
        return tensor
    tensor = tensor.to(context.device).contiguous()
    parts = [torch.empty_like(tensor) for _ in range(context.world_size)]
    dist.all_gather(parts, tensor)
    return torch.cat([part.cpu() for part in parts])
