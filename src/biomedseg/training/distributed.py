"""Multi-process training through ``torchrun`` and PyTorch's DistributedDataParallel.

Launch: ``torchrun --nproc_per_node=N -m biomedseg.cli train DATA --out RUN ...`` (or across
nodes with ``--nnodes``/``--rdzv-endpoint``). Each rank draws its own patches (sampler seeded by
seed, epoch and rank); gradients are averaged by DDP; only rank 0 validates and writes files.
The gloo backend is used on CPU, NCCL on CUDA.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group when started by torchrun (``WORLD_SIZE`` > 1), else single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    info = DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    if device_type == "cuda":
        torch.cuda.set_device(info.local_rank)
    return info


def wrap_model(model: torch.nn.Module, info: DistInfo, device: torch.device) -> torch.nn.Module:
    if not info.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index if device.index is not None else info.local_rank] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def broadcast_flag(flag: bool, info: DistInfo) -> bool:
    """Rank 0's decision (e.g. "the time budget is spent") for every rank."""
    if not info.enabled:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32)
    dist.broadcast(t, src=0)
    return bool(t.item())


def any_rank(flag: bool, info: DistInfo) -> bool:
    """True on every rank when ``flag`` is true on at least one (e.g. "my loss is not finite")."""
    if not info.enabled:
        return flag
    nccl = dist.get_backend() == "nccl"  # NCCL reduces CUDA tensors only
    t = torch.tensor(
        [1 if flag else 0],
        dtype=torch.int32,
        device=torch.device("cuda", torch.cuda.current_device()) if nccl else None,
    )
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def broadcast_object(obj, info: DistInfo):
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def parameter_checksum(model: torch.nn.Module) -> float:
    """Sum of all parameters in float64: equal on every rank when they are in sync."""
    net = getattr(model, "module", model)
    return float(sum(p.detach().double().sum() for p in net.parameters()))


def gather_objects(obj, info: DistInfo) -> list:
    if not info.enabled:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def shutdown(info: DistInfo) -> None:
    """Leave the process group: every rank waits here for the others, then the group is destroyed.

    Call it after the DistributedDataParallel wrapper is gone (it holds the group)."""
    if info.enabled and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
