"""One training path for one CPU process or many (torchrun + torch.distributed).

Under ``torchrun`` the environment carries RANK/WORLD_SIZE; we join a process group
(gloo on CPU, nccl on CUDA) and wrap models in DDP. In one plain process every call
here degrades to a no-op, so training loops are written once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in a (possibly single-process) job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that logs and writes outputs."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when more than one process takes part."""
        return self.world_size > 1


def init_distributed(device: str | None = None) -> DistContext:
    """Join the torchrun process group if the environment describes one.

    Args:
        device: "cpu" or "cuda"; default: CUDA when available (and there is a GPU for every
            local process), else CPU.

    Returns:
        The DistContext of this process.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
        device = "cuda" if torch.cuda.is_available() and torch.cuda.device_count() >= local_world else "cpu"
    if device == "cuda":
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, device=device)


def wrap_model(model: torch.nn.Module, ctx: DistContext, **ddp_kwargs: Any) -> torch.nn.Module:
    """Wrap ``model`` in DistributedDataParallel when the job has several processes."""
    if not ctx.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [ctx.local_rank] if ctx.device.startswith("cuda") else None
    return DistributedDataParallel(model, device_ids=ids, **ddp_kwargs)


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """Return the module inside a DDP wrapper (or the module itself)."""
    return getattr(model, "module", model)


def all_reduce_mean(value: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Average ``value`` over all processes (returns a new tensor)."""
    out = value.detach().clone()
    if ctx.distributed:
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        out /= ctx.world_size
    return out


def broadcast_object(obj: Any, ctx: DistContext, src: int = 0) -> Any:
    """Send a picklable object from rank ``src`` to every process."""
    if not ctx.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier(ctx: DistContext) -> None:
    """Wait for every process (no-op in one process)."""
    if ctx.distributed:
        dist.barrier()


def shard(n: int, ctx: DistContext) -> range:
    """The indices of ``range(n)`` this process handles (strided, so shards differ by at most one)."""
    return range(ctx.rank, n, ctx.world_size)


def rank_seed(seed: int, ctx: DistContext) -> int:
    """A per-process seed derived from the run seed (seed * world + rank)."""
    return seed * ctx.world_size + ctx.rank


def cleanup(ctx: DistContext) -> None:
    """Leave the process group if this process joined one."""
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()
