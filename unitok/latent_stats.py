"""Per-channel latent statistics in LightningDiT's ``latents_stats.pt`` format, kept next to a tokenizer checkpoint.

LightningDiT trains on ``(z - mean) / std * multiplier`` and samples with ``z = x * std / multiplier + mean``, where
``mean`` and ``std`` are the per-channel mean and unbiased standard deviation of the latents over every other
dimension. The file holds exactly ``{'mean': (1, C, 1, 1) float32, 'std': (1, C, 1, 1) float32}``; the multiplier
lives in the DiT config and is never stored. The file sits in a pretrained directory beside ``config.json`` and
``model.safetensors`` so the released layout is unchanged and the official code still loads that directory.

Shapes:
    B: batch, C: latent channels, h, w: latent grid (images), T: latent frames (speech)
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from unitok.engine.checkpoint import atomic_torch_save

LATENT_STATS_FILE = "latents_stats.pt"
_HINT = (
    "`unitok-eval image.latent_stats --ckpt DIR store_in_checkpoint=true` "
    "(or `speech.latent_stats` for a speech tokenizer) writes them"
)


def _problem(mean: torch.Tensor, std: torch.Tensor) -> str | None:
    """What is wrong with a (mean, std) pair, or None."""
    if mean.numel() == 0 or mean.numel() != std.numel():
        return f"'mean' has {mean.numel()} values and 'std' {std.numel()}: they need one value per channel each"
    bad = (~torch.isfinite(std.reshape(-1).double())) | (std.reshape(-1).double() <= 0)
    if bad.any():
        idx = bad.nonzero().flatten().tolist()
        return f"'std' must be positive and finite in every channel; channels {idx[:8]} are not"
    if not torch.isfinite(mean.double()).all():
        return "'mean' holds non-finite values"
    return None


@dataclass(eq=False)
class LatentStats:
    """Per-channel mean and std of latents, and the DiT's latent multiplier.

    Attributes:
        mean: per-channel mean, stored as (1, C, 1, 1) float32 (any shape with C values is accepted).
        std: per-channel unbiased standard deviation, same layout, positive.
        multiplier: the DiT's ``latent_multiplier`` (1.0 in every VTP config); not part of the file.
    """

    mean: torch.Tensor
    std: torch.Tensor
    multiplier: float = 1.0

    def __post_init__(self) -> None:
        problem = _problem(self.mean, self.std)
        if problem:
            raise ValueError(f"invalid latent statistics: {problem}")
        if not (math.isfinite(self.multiplier) and self.multiplier != 0):
            raise ValueError(f"latent multiplier must be finite and non-zero, got {self.multiplier}")
        c = self.mean.numel()
        self.mean = self.mean.detach().to(torch.float32).reshape(1, c, 1, 1)
        self.std = self.std.detach().to(torch.float32).reshape(1, c, 1, 1)
        self.multiplier = float(self.multiplier)

    @property
    def num_channels(self) -> int:
        return self.mean.shape[1]

    def _stats_like(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if z.ndim < 2 or z.shape[1] != self.num_channels:
            got = z.shape[1] if z.ndim >= 2 else "no"
            raise ValueError(
                f"latents of shape {tuple(z.shape)} have {got} channels in dim 1, "
                f"the latent statistics have {self.num_channels}"
            )
        shape = (1, self.num_channels) + (1,) * (z.ndim - 2)
        return (
            self.mean.reshape(shape).to(device=z.device, dtype=z.dtype),
            self.std.reshape(shape).to(device=z.device, dtype=z.dtype),
        )

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (B, C, ...) -> DiT input ``(z - mean) / std * multiplier``."""
        mean, std = self._stats_like(z)
        return (z - mean) / std * self.multiplier

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """DiT output (B, C, ...) -> latents ``x * std / multiplier + mean`` (the inverse of :meth:`normalize`)."""
        mean, std = self._stats_like(x)
        return x * std / self.multiplier + mean

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LatentStats):
            return NotImplemented
        return (
            self.multiplier == other.multiplier
            and torch.equal(self.mean.cpu(), other.mean.cpu())
            and torch.equal(self.std.cpu(), other.std.cpu())
        )

    __hash__ = None  # mutable tensors

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly ``{"mean": [...], "std": [...], "multiplier": m}`` for reports."""
        return {
            "mean": self.mean.flatten().tolist(),
            "std": self.std.flatten().tolist(),
            "multiplier": self.multiplier,
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``{'mean', 'std'}`` as (1, C, 1, 1) float32 CPU tensors, atomically (LightningDiT's format)."""
        c = self.num_channels
        payload = {
            "mean": self.mean.detach().cpu().to(torch.float32).reshape(1, c, 1, 1).clone(),
            "std": self.std.detach().cpu().to(torch.float32).reshape(1, c, 1, 1).clone(),
        }
        return atomic_torch_save(payload, path)

    @classmethod
    def load(cls, path: str | os.PathLike, multiplier: float = 1.0) -> LatentStats:
        """Read a ``latents_stats.pt`` file (ours or LightningDiT's), checking its keys and values."""
        p = Path(path).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"latent statistics file {p} does not exist")
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:  # truncated files and foreign pickles raise several error types
            raise ValueError(f"latent statistics file {p} cannot be read ({e})") from None
        if not isinstance(obj, dict):
            raise ValueError(f"latent statistics file {p} must hold a dict {{'mean', 'std'}}, got {type(obj).__name__}")
        missing = [k for k in ("mean", "std") if k not in obj]
        if missing:
            raise ValueError(f"latent statistics file {p} misses key(s) {missing}; it must hold {{'mean', 'std'}}")
        for k in ("mean", "std"):
            if not isinstance(obj[k], torch.Tensor):
                raise ValueError(f"latent statistics file {p}: {k!r} is a {type(obj[k]).__name__}, not a tensor")
        problem = _problem(obj["mean"], obj["std"])
        if problem:
            raise ValueError(f"latent statistics file {p}: {problem}")
        return cls(obj["mean"], obj["std"], multiplier)


class LatentStatsAccumulator:
    """Exact streaming per-channel mean and unbiased std (Chan et al.'s parallel merge of (count, mean, M2)).

    Every batch is reduced to per-channel (count, mean, M2 = sum of squared deviations) in float64 and merged, so
    channels with a large offset keep their precision. State lives on the CPU in float64; batches are reduced on
    their own device.

    Args:
        num_channels: C.
        channel_dim: the channel dimension of the tensors given to :meth:`update` (1 for (B, C, h, w) and
            (B, C, T); -1 for token latents (B, N, C)).
    """

    def __init__(self, num_channels: int, channel_dim: int = 1):
        if num_channels < 1:
            raise ValueError(f"num_channels must be >= 1, got {num_channels}")
        self.num_channels = int(num_channels)
        self.channel_dim = int(channel_dim)
        self.count = torch.zeros(self.num_channels, dtype=torch.float64)
        self.mean = torch.zeros(self.num_channels, dtype=torch.float64)
        self.m2 = torch.zeros(self.num_channels, dtype=torch.float64)

    def _merge(self, count: torch.Tensor, mean: torch.Tensor, m2: torch.Tensor) -> None:
        n = self.count + count
        safe = torch.where(n > 0, n, torch.ones_like(n))
        delta = mean - self.mean
        self.mean = torch.where(n > 0, self.mean + delta * (count / safe), self.mean)
        self.m2 = self.m2 + m2 + delta.square() * (self.count * count / safe)
        self.count = n

    @torch.no_grad()
    def update(self, z: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """Add a batch of latents; statistics run over every dimension except ``channel_dim``.

        Args:
            z: latents with C channels in ``channel_dim``.
            mask: optional boolean mask of z's shape without the channel dimension; False positions (padding) are
                left out.
        """
        if z.ndim < 1 or z.shape[self.channel_dim] != self.num_channels:
            raise ValueError(
                f"latents of shape {tuple(z.shape)} do not have {self.num_channels} channels in dim {self.channel_dim}"
            )
        x = z.detach().movedim(self.channel_dim, -1).reshape(-1, self.num_channels).double()
        if mask is not None:
            expected = z.movedim(self.channel_dim, -1).shape[:-1]
            if tuple(mask.shape) != tuple(expected):
                raise ValueError(
                    f"mask of shape {tuple(mask.shape)} does not match latents without channels {tuple(expected)}"
                )
            x = x[mask.reshape(-1).to(device=x.device, dtype=torch.bool)]
        if x.shape[0] == 0:
            return
        mean = x.mean(0)
        m2 = (x - mean).square().sum(0)
        count = torch.full_like(mean, float(x.shape[0]))
        self._merge(count.cpu(), mean.cpu(), m2.cpu())

    def add_moments(self, count: torch.Tensor, mean: torch.Tensor, m2: torch.Tensor) -> LatentStatsAccumulator:
        """Fold K groups given by their own per-channel moments, each (K, C) or (C,): count, mean and M2 (e.g.
        per-image moments cached by an interrupted pass); exact, in float64. Returns self."""
        count, mean, m2 = (t.detach().double().cpu().reshape(-1, self.num_channels) for t in (count, mean, m2))
        total = count.sum(0)
        safe = torch.where(total > 0, total, torch.ones_like(total))
        pooled = (count * mean).sum(0) / safe
        spread = m2.sum(0) + (count * (mean - pooled).square()).sum(0)
        self._merge(total, pooled, spread)
        return self

    def merge(self, other: LatentStatsAccumulator) -> LatentStatsAccumulator:
        """Fold another accumulator's data into this one (exact); returns self."""
        if other.num_channels != self.num_channels:
            raise ValueError(f"cannot merge statistics of {other.num_channels} channels into {self.num_channels}")
        self._merge(other.count.clone(), other.mean.clone(), other.m2.clone())
        return self

    def all_reduce(self, group: Any = None) -> LatentStatsAccumulator:
        """Combine the states of every rank in rank order (no-op without a process group); returns self.

        Afterwards every rank holds the statistics of all ranks' data, exactly as one process that saw it all.
        Call it once: a second call would count every rank's data again.
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return self
        device = torch.device("cpu")
        if dist.get_backend(group) == "nccl":
            device = torch.device("cuda", torch.cuda.current_device())
        local = torch.stack([self.count, self.mean, self.m2]).to(device)
        gathered = [torch.empty_like(local) for _ in range(dist.get_world_size(group))]
        dist.all_gather(gathered, local, group=group)
        self.count, self.mean, self.m2 = (torch.zeros_like(self.count) for _ in range(3))
        for g in gathered:
            count, mean, m2 = g.cpu()
            self._merge(count, mean, m2)
        return self

    def state_dict(self) -> dict[str, Any]:
        """The partial state (to save and resume an interrupted pass)."""
        return {
            "count": self.count.clone(),
            "mean": self.mean.clone(),
            "m2": self.m2.clone(),
            "channel_dim": self.channel_dim,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        for k in ("count", "mean", "m2"):
            if k not in state:
                raise KeyError(f"latent statistics state misses {k!r}")
            if tuple(state[k].shape) != (self.num_channels,):
                raise ValueError(
                    f"latent statistics state {k!r} has shape {tuple(state[k].shape)}, expected ({self.num_channels},)"
                )
        self.count, self.mean, self.m2 = (state[k].detach().cpu().double().clone() for k in ("count", "mean", "m2"))
        self.channel_dim = int(state.get("channel_dim", self.channel_dim))

    def std(self) -> torch.Tensor:
        """Unbiased per-channel std (C,) in float64."""
        if self.count.min() < 2:
            raise ValueError(f"latent statistics need at least 2 values per channel, got {int(self.count.min())}")
        return (self.m2 / (self.count - 1)).sqrt()

    def compute(self, multiplier: float = 1.0) -> LatentStats:
        """The :class:`LatentStats` (float32, (1, C, 1, 1)) of everything seen so far."""
        return LatentStats(self.mean.clone(), self.std(), multiplier)


def checkpoint_target(ckpt_dir: str | os.PathLike) -> Path:
    """The pretrained directory :func:`save_to_checkpoint` would write into, checked to hold its config + weights.

    Raises:
        FileNotFoundError: naming the missing files, when the directory cannot take ``latents_stats.pt``.
    """
    from unitok.models.pretrained import CONFIG_NAME, WEIGHTS_NAME, resolve_dir

    d = resolve_dir(ckpt_dir)
    missing = [n for n in (CONFIG_NAME, WEIGHTS_NAME) if not (d / n).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{d} is not a pretrained directory (missing {', '.join(missing)}); latent statistics are stored beside "
            f"{CONFIG_NAME} and {WEIGHTS_NAME}"
        )
    return d


def save_to_checkpoint(ckpt_dir: str | os.PathLike, stats: LatentStats) -> Path:
    """Write ``ckpt_dir/latents_stats.pt`` into an existing pretrained directory."""
    return stats.save(checkpoint_target(ckpt_dir) / LATENT_STATS_FILE)


def load_from_checkpoint(ckpt_dir: str | os.PathLike, multiplier: float = 1.0) -> LatentStats | None:
    """The statistics stored in a pretrained directory, or None when it has no ``latents_stats.pt``."""
    from unitok.models.pretrained import resolve_dir

    path = resolve_dir(ckpt_dir) / LATENT_STATS_FILE
    return LatentStats.load(path, multiplier) if path.is_file() else None


def stats_for(model: Any) -> LatentStats:
    """``model.latent_stats`` (set by ``unitok.load_pretrained``), looking through DDP / compile wrappers."""
    for m in (model, getattr(model, "module", None), getattr(model, "_orig_mod", None)):
        stats = getattr(m, "latent_stats", None) if m is not None else None
        if stats is not None:
            return stats
    raise RuntimeError(
        f"{type(model).__name__} has no latent statistics: its checkpoint has no {LATENT_STATS_FILE}; {_HINT}"
    )
