"""torch.distributed set-up from torchrun's environment, and wrapping of trainable modules (DDP or FSDP2).

Single- or multi-node without any scheduler: ``torchrun --nnodes N --nproc-per-node G --rdzv-backend c10d
--rdzv-endpoint HOST:PORT -m unitok.train RECIPE``. Nothing here runs at import time.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistInfo:
    """Initialise the process group when launched by torchrun (WORLD_SIZE > 1); pick the device.

    Args:
        device: 'auto' (CUDA when available), 'cpu' or 'cuda'.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("device=cuda was asked for but CUDA is not available")
    dev = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", rank=rank, world_size=world)
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=dev)


def wrap_trainable(module: nn.Module, info: DistInfo, strategy: str = "ddp") -> nn.Module:
    """Wrap one trainable module for data parallelism ('ddp', 'fsdp' = FSDP2 ``fully_shard``, or 'none').

    FSDP2 shards every Transformer block (any submodule list named ``blocks`` or ``resblocks``) and then the root.
    0-d parameters (a CLIP logit scale and bias, 0-d in the official checkpoint layout), which ``fully_shard``
    refuses, are left out of FSDP: they stay plain, replicated tensors on every rank, and FSDP does not average
    their gradients; the trainer does it with :func:`all_reduce_grads` (every plain-tensor parameter of an
    FSDP-wrapped optimiser) before clipping, so they stay identical on every rank.
    """
    if not info.enabled or strategy == "none":
        return module
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [info.device.index] if info.device.type == "cuda" else None
        return DDP(module, device_ids=ids, find_unused_parameters=False)
    if strategy == "fsdp":
        return _fully_shard(module)
    raise ValueError(f"distributed strategy must be 'ddp', 'fsdp' or 'none', got {strategy!r}")


def shard_copy(module: nn.Module, info: DistInfo) -> nn.Module:
    """FSDP2-shard a frozen copy of a trainable module (EMA teacher, EMA model) exactly like :func:`wrap_trainable`.

    Same shards as the original, so an EMA update (a lerp over both parameter lists) stays shard-local. The root's
    parameters are resharded after every forward too: no backward pass does it for a module without gradients.
    """
    return _fully_shard(module, reshard_root=True) if info.enabled else module


def _fully_shard(module: nn.Module, reshard_root: bool | None = None) -> nn.Module:
    from torch.distributed.fsdp import fully_shard

    ignored = {p for p in module.parameters() if p.ndim == 0} or None
    for name, sub in module.named_modules():
        if name.endswith(("blocks", "resblocks")) and isinstance(sub, nn.ModuleList):
            for block in sub:
                fully_shard(block, ignored_params=ignored)
    fully_shard(module, ignored_params=ignored, reshard_after_forward=reshard_root)
    return module


def unsharded_params(params: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    """The parameters that FSDP2 left out (plain tensors, not DTensor shards): their gradients need
    :func:`all_reduce_grads`."""
    from torch.distributed.tensor import DTensor

    return [p for p in params if not isinstance(p, DTensor)]


def all_reduce_grads(params: Iterable[torch.Tensor]) -> None:
    """Average gradients over ranks in place, in one collective (no-op without a process group).

    A parameter without a gradient on some ranks counts as a zero gradient there (as under DDP / FSDP); one
    without a gradient on every rank keeps ``None``. Every rank must pass the same parameters in the same order.
    """
    params = list(params)
    if not params or not (dist.is_available() and dist.is_initialized()):
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    has = torch.tensor([float(p.grad is not None) for p in params], device=grads[0].device)
    flat = torch.cat([*(g.detach().reshape(-1).double() for g in grads), has.double()])
    dist.all_reduce(flat)
    world = dist.get_world_size()
    sizes = [g.numel() for g in grads]
    values, counts = flat[: sum(sizes)].split(sizes), flat[sum(sizes) :]
    for p, g, v, n in zip(params, grads, values, counts, strict=True):
        if n == 0:
            p.grad = None
        elif p.grad is None:
            p.grad = (v / world).to(g.dtype).view_as(g)
        else:
            p.grad.copy_((v / world).view_as(g))


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Mean over ranks (identity without a process group)."""
    if dist.is_available() and dist.is_initialized():
        value = value.clone()
        dist.all_reduce(value)
        value /= dist.get_world_size()
    return value


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
