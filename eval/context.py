"""What every evaluation suite receives: the checkpoint, the data path, run options and the process group.

A suite is a :class:`Suite` (name, protocol config dataclass, run function) registered in
``unitok.registry.SUITES``; ``unitok-eval`` builds one :class:`EvalContext` per invocation and hands it to each
suite it runs. Suites return a :class:`SuiteOutput`; the CLI turns it into the result files.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from unitok.engine.distributed import DistInfo
from unitok.eval.checkpoints import LoadedCheckpoint


@dataclass
class EvalOptions:
    """Run options shared by every suite (CLI flags).

    Attributes:
        batch_size: images (or utterances) per forward pass and per rank.
        num_workers: DataLoader workers per rank.
        precision: 'auto' (bf16 autocast on CUDA, fp32 elsewhere), 'bf16' or 'fp32'; a suite whose official
            protocol fixes a precision for one step (e.g. the fp32 decode of reconstruction) keeps it.
        max_samples: evaluate a fixed random subset (seed 0) of this many samples per split (None: all).
        chunk_size: samples per cache file of resumable extraction.
        cache_dir: where extracted features are cached (default ``OUT/cache``).
        progress: show progress bars (main rank only).
    """

    batch_size: int = 50
    num_workers: int = 4
    precision: str = "auto"
    max_samples: int | None = None
    chunk_size: int = 1000
    cache_dir: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"precision must be auto, bf16 or fp32, got {self.precision!r}")
        if self.batch_size < 1 or self.chunk_size < 1 or self.num_workers < 0:
            raise ValueError("batch_size and chunk_size must be >= 1 and num_workers >= 0")


@dataclass
class EvalContext:
    """One evaluation invocation.

    Attributes:
        ckpt: the loaded checkpoint (its model already on ``dist.device``).
        data: the ``--data`` path (None when not given).
        out_dir: where results, artifacts and (by default) the cache go.
        options: :class:`EvalOptions`.
        dist: rank, world size and device (from ``torchrun``'s environment).
    """

    ckpt: LoadedCheckpoint
    data: str | None
    out_dir: Path
    options: EvalOptions = field(default_factory=EvalOptions)
    dist: DistInfo = field(default_factory=DistInfo)

    @property
    def device(self) -> torch.device:
        return self.dist.device

    @property
    def bf16(self) -> bool:
        p = self.options.precision
        return p == "bf16" or (p == "auto" and self.device.type == "cuda")

    def autocast(self, enabled: bool = True):
        """bf16 autocast when the run's precision asks for it (and ``enabled``), else a no-op."""
        if enabled and self.bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @property
    def cache_root(self) -> Path:
        return Path(self.options.cache_dir) if self.options.cache_dir else self.out_dir / "cache"

    def barrier(self) -> None:
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            torch.distributed.barrier(device_ids=ids)

    def log(self, message: str) -> None:
        if self.dist.is_main:
            print(message, flush=True)


@dataclass
class SuiteOutput:
    """A suite's findings.

    Attributes:
        metrics: metric name (without the suite prefix) -> number.
        data: what was evaluated (path, split, sample count, ...).
        artifacts: name -> file written under ``out_dir`` (relative path).
        details: anything else worth keeping in the result file (per-head accuracies, curves, hashes, ...).
    """

    metrics: dict[str, float]
    data: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Suite:
    """A registered evaluation protocol.

    Attributes:
        name: ``<modality>.<protocol>``, also the prefix of its metric keys.
        config: dataclass of the protocol's settings (``key=value`` on the command line).
        run: ``run(ctx, config) -> SuiteOutput``.
        summary: one line for ``unitok-eval list``.
        needs_data: whether ``--data`` is required.
    """

    name: str
    config: type
    run: Callable[[EvalContext, Any], SuiteOutput]
    summary: str
    needs_data: bool = True
