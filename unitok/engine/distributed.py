"""torch.distributed set-up from torchrun's environment, and wrapping of trainable modules (DDP or FSDP2).

Single- or multi-node without any scheduler: ``torchrun --nnodes N --nproc-per-node G --rdzv-backend c10d
--rdzv-endpoint HOST:PORT -m unitok.train RECIPE``. Nothing here runs at import time.
"""

from __future__ import annotations

import os
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
    Frozen 0-d parameters (e.g. a frozen CLIP logit scale), which ``fully_shard`` refuses, stay unsharded: they
    need no gradient synchronisation and are identical on every rank.
    """
    if not info.enabled or strategy == "none":
        return module
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [info.device.index] if info.device.type == "cuda" else None
        return DDP(module, device_ids=ids, find_unused_parameters=False)
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        ignored = {p for p in module.parameters() if p.ndim == 0 and not p.requires_grad} or None
        for name, sub in module.named_modules():
            if name.endswith(("blocks", "resblocks")) and isinstance(sub, nn.ModuleList):
                for block in sub:
                    fully_shard(block, ignored_params=ignored)
        fully_shard(module, ignored_params=ignored)
        return module
    raise ValueError(f"distributed strategy must be 'ddp', 'fsdp' or 'none', got {strategy!r}")


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
