"""Trainer: one loop from a laptop to multi-node torchrun (DDP or FSDP2), resumable to the exact same weights.

Per optimiser step: ``grad_accum`` micro-batches under bf16 autocast (optional), gradient clipping, a
non-finite guard (skip the step; after ``max_consecutive_nonfinite`` in a row, roll weights back to the last
checkpoint and go on with new data), AdamW with per-step lr / weight-decay schedules, ``task.after_step``, an
EMA of the exported model, metrics, atomic checkpoints of the whole train state. A task with an auxiliary phase
(``Task.aux_trainable``, e.g. a GAN discriminator) gets a second AdamW with its own schedules, stepped after the
main one over the same micro-batches (before it when ``Task.aux_first``, see :mod:`unitok.engine.task`); a
non-finite auxiliary step is skipped.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from unitok.engine.checkpoint import latest_checkpoint, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from unitok.engine.distributed import (
    DistInfo,
    all_reduce_grads,
    all_reduce_mean,
    shard_copy,
    unsharded_params,
    wrap_trainable,
)
from unitok.engine.logging import MetricsLogger
from unitok.engine.optim import OptimConfig, apply_schedules, build_adamw, cosine_schedule, lr_schedule
from unitok.engine.state import EpochSeeded, ResumableSampler, TrainState
from unitok.engine.stream import StreamBatches
from unitok.engine.task import Task


@dataclass
class TrainConfig:
    """Attributes:
    steps: optimiser steps of the run.
    batch_size: samples per micro-batch per rank; 0 for a streaming data set that yields whole batches
        (``yields_batches``, e.g. speech cuts bucketed by duration, whose batch size the data set decides).
    grad_accum: micro-batches per optimiser step.
    precision: 'bf16' (autocast) or 'fp32'.
    device: 'auto', 'cpu' or 'cuda'.
    strategy: 'ddp', 'fsdp' (FSDP2 fully_shard) or 'none' when launched with several processes.
    compile: torch.compile the trainable modules.
    grad_checkpointing: recompute Transformer blocks in the backward pass.
    ema_decay: EMA of the exported model for evaluation (0 disables it); with a warm-up, its upper bound.
    ema_warmup_gamma, ema_warmup_power: EMA decay warm-up ``1 - (1 + step / gamma) ** -power`` (capped at
        ``ema_decay``; timm ``ModelEmaV3`` / ema_pytorch's formula); gamma 0 disables the warm-up.
    log_every, ckpt_every: in optimiser steps.
    keep_last: checkpoints kept on disk.
    max_consecutive_nonfinite: non-finite steps in a row before rolling back to the last checkpoint.
    num_workers: DataLoader workers.
    seed: base seed of data order, augmentations and initialisation.
    progress: show a progress bar.
    tensorboard: also log to TensorBoard.
    """

    steps: int = 1000
    batch_size: int = 32
    grad_accum: int = 1
    precision: str = "bf16"
    device: str = "auto"
    strategy: str = "ddp"
    compile: bool = False
    grad_checkpointing: bool = False
    ema_decay: float = 0.0
    ema_warmup_gamma: float = 0.0
    ema_warmup_power: float = 2 / 3
    log_every: int = 10
    ckpt_every: int = 200
    keep_last: int = 2
    max_consecutive_nonfinite: int = 5
    num_workers: int = 0
    seed: int = 0
    progress: bool = True
    tensorboard: bool = False


@dataclass
class _Phase:
    """One optimiser and the trainable modules it steps."""

    names: tuple[str, ...]
    cfg: OptimConfig
    optimizer: torch.optim.Optimizer
    lr_at: Callable[[int], float]
    wd_at: Callable[[int], float]

    def params(self) -> list[torch.nn.Parameter]:
        return [p for g in self.optimizer.param_groups for p in g["params"]]

    def lr(self) -> float:
        group = self.optimizer.param_groups[0]
        return group["lr"] / group["lr_mult"]


class Trainer:
    """Runs a :class:`Task` on a map-style or streaming data set.

    Args:
        task: the task (its ``trainable`` submodules are wrapped and optimised).
        dataset: map-style data set of samples, or a streaming one (an ``IterableDataset`` implementing
            :class:`~unitok.engine.stream.ResumableStream`); ``collate_fn`` makes batches.
        optim: optimiser and schedule configuration.
        cfg: loop configuration.
        run_dir: run directory (checkpoints/, metrics.jsonl); None disables checkpoints.
        info: distributed information from :func:`~unitok.engine.distributed.init_distributed`.
    """

    def __init__(self, task: Task, dataset: Dataset, collate_fn, optim: OptimConfig, cfg: TrainConfig,
                 run_dir: str | Path | None, info: DistInfo | None = None):  # fmt: skip
        self.cfg = cfg
        self.info = info or DistInfo()
        self.device = self.info.device
        self.task = task.to(self.device)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.ckpt_dir = self.run_dir / "checkpoints" if self.run_dir is not None else None
        self.state = TrainState()
        self.collate_fn = collate_fn
        self.stream = None  # streaming data: position in the checkpoint's "data"; map-style: in TrainState
        if isinstance(dataset, IterableDataset):
            self.stream = StreamBatches(dataset, collate_fn, cfg.batch_size, cfg.num_workers, cfg.seed,
                                        self.info.rank, self.info.world_size, self.device.type == "cuda")  # fmt: skip
        else:
            if cfg.batch_size <= 0:
                raise ValueError(
                    f"train.batch_size must be positive for the map-style data set {type(dataset).__name__} "
                    "(0 is for streaming data sets that yield whole batches)"
                )
            self.dataset = EpochSeeded(dataset, seed=cfg.seed)
            self.sampler = ResumableSampler(
                len(dataset), seed=cfg.seed, rank=self.info.rank, world_size=self.info.world_size
            )
        self.ema = None
        if cfg.ema_decay > 0:  # copied before wrapping; sharded like the model under FSDP
            from timm.utils import ModelEmaV3

            warmup = {"use_warmup": cfg.ema_warmup_gamma > 0, "warmup_gamma": cfg.ema_warmup_gamma or 1.0,
                      "warmup_power": cfg.ema_warmup_power}  # fmt: skip
            self.ema = ModelEmaV3(task.export_model(), decay=cfg.ema_decay, **warmup)
        self._setup_modules()
        aux = tuple(task.aux_trainable)
        if not set(aux) <= set(task.trainable) or (aux and task.aux_optim is None):
            raise ValueError(f"Task.aux_trainable {aux} must be a subset of trainable {task.trainable}, with aux_optim")
        self.phases = [self._make_phase([n for n in task.trainable if n not in aux], optim)]
        if aux:
            self.phases.append(self._make_phase(aux, task.aux_optim))
        self.optimizer = self.phases[0].optimizer
        self.logger = MetricsLogger(self.run_dir, enabled=self.info.is_main, tensorboard=cfg.tensorboard)
        self._consecutive_nonfinite = 0

    # ------------------------------------------------------------------------------------------ set-up
    def _setup_modules(self) -> None:
        from unitok.models.transformer import TransformerStack

        for name in self.task.trainable:
            module = getattr(self.task, name)
            if self.cfg.grad_checkpointing:
                for m in module.modules():
                    if isinstance(m, TransformerStack):
                        m.cfg.grad_checkpointing = True
            if self.cfg.compile:
                module.compile()
            if not any(p.requires_grad for p in module.parameters()):
                continue  # nothing to synchronise (DDP refuses such a module)
            wrapped = wrap_trainable(module, self.info, self.cfg.strategy)
            if wrapped is not module:
                self.task.set_wrapper(name, wrapped)
        if self.cfg.strategy == "fsdp":  # EMA copies are sharded like the model, so their updates stay shard-local
            copies = [getattr(self.task, n) for n in self._teachers()]
            copies += [self.ema.module] if self.ema is not None else []
            for module in copies:
                shard_copy(module, self.info)

    def _root(self, names: Iterable[str] | None = None) -> torch.nn.Module:
        """The named task modules (default: all trainable ones) under one root, for optimisers and state dicts."""
        return torch.nn.ModuleDict(
            {n: getattr(self.task, n) for n in (self.task.trainable if names is None else names)}
        )

    def _teachers(self) -> tuple[str, ...]:
        """The task's EMA teachers that exist (a task may leave one unset, e.g. VTP without SSL)."""
        return tuple(n for n in self.task.teachers if getattr(self.task, n) is not None)

    def _make_phase(self, names: Iterable[str], optim: OptimConfig) -> _Phase:
        names = tuple(names)
        if not any(p.requires_grad for n in names for p in getattr(self.task, n).parameters()):
            raise ValueError(f"trainable modules {names} have no parameter that requires a gradient")
        steps = self.cfg.steps
        return _Phase(names, optim, build_adamw(self._root(names), optim), lr_schedule(optim, steps),
                      cosine_schedule(optim.weight_decay, optim.weight_decay_end, steps))  # fmt: skip

    # ------------------------------------------------------------------------------------------ data
    def _batches(self):
        """Batches forever, keeping ``state.epoch`` / ``state.batch_in_epoch`` equal to what was consumed."""
        if self.stream is not None:
            yield from self.stream
            return
        while True:
            self.sampler.set_epoch(self.state.epoch, start=self.state.batch_in_epoch * self.cfg.batch_size)
            self.dataset.set_epoch(self.state.epoch)
            loader = DataLoader(
                self.dataset, batch_size=self.cfg.batch_size, sampler=self.sampler, collate_fn=self.collate_fn,
                num_workers=self.cfg.num_workers, drop_last=True, pin_memory=self.device.type == "cuda",
                generator=torch.Generator().manual_seed(self.cfg.seed + self.state.epoch),
            )  # fmt: skip
            for batch in loader:
                self.state.batch_in_epoch += 1
                yield batch
            self.state.epoch += 1
            self.state.batch_in_epoch = 0

    def _to_device(self, batch: Any) -> Any:
        if torch.is_tensor(batch):
            return batch.to(self.device, non_blocking=True)
        if isinstance(batch, dict):
            return {k: self._to_device(v) for k, v in batch.items()}
        if isinstance(batch, list | tuple):
            return type(batch)(self._to_device(v) for v in batch)
        return batch

    # ------------------------------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_sd = get_model_state_dict(self._root(), options=opts)
        # an optimiser that never stepped is saved as None (saving would fake a step in it; every rank agrees)
        optim_sds = [get_optimizer_state_dict(self._root(ph.names), ph.optimizer, options=opts)
                     if ph.optimizer.state else None for ph in self.phases]  # fmt: skip
        # teachers may be sharded: gathered like the trainable modules, and saved with the rest of the task
        own = set(self.task.trainable) | set(self.task.teachers)
        rest = {k: v for k, v in self.task.state_dict().items() if k.split(".", 1)[0] not in own}
        if self._teachers():
            rest |= get_model_state_dict(self._root(self._teachers()), options=opts)
        ema = get_model_state_dict(self.ema.module, options=opts) if self.ema is not None else None
        sd = {"trainable": model_sd, "task_rest": rest, "optimizer": optim_sds[0], "state": self.state.state_dict(),
              "ema": ema, "rng": rng_state(), "data": self.stream.state_dict() if self.stream else None}  # fmt: skip
        if len(self.phases) > 1:
            sd["aux_optimizer"] = optim_sds[1]
        return sd

    def load_state_dict(self, ckpt: dict[str, Any], restore_data_and_rng: bool = True) -> None:
        """Restore :meth:`state_dict`'s output (a checkpoint without ``aux_optimizer`` leaves that one fresh)."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True)
        set_model_state_dict(self._root(), ckpt["trainable"], options=opts)
        # not strict: a parameter that never had a gradient yet (e.g. frozen prototypes) has no optimiser state
        loose = StateDictOptions(full_state_dict=True, strict=False)
        for phase, key in zip(self.phases, ("optimizer", "aux_optimizer"), strict=False):
            if ckpt.get(key) is not None:
                root = self._root(phase.names)
                set_optimizer_state_dict(root, phase.optimizer, ckpt[key], options=loose)
                # loading first fakes a step of every parameter (zero gradient, lr 0) to create its state; such a
                # parameter keeps no state, or its first real step would count as the second (Adam bias correction)
                for name, p in root.named_parameters():
                    if name not in ckpt[key]["state"]:
                        phase.optimizer.state.pop(p, None)
        teachers = self._teachers()
        rest = {k: v for k, v in ckpt["task_rest"].items() if k.split(".", 1)[0] not in teachers}
        self.task.load_state_dict(rest, strict=False)
        if teachers:
            mine = {k: v for k, v in ckpt["task_rest"].items() if k.split(".", 1)[0] in teachers}
            set_model_state_dict(self._root(teachers), mine, options=opts)
        if self.ema is not None and ckpt.get("ema") is not None:
            set_model_state_dict(self.ema.module, ckpt["ema"], options=opts)
        saved = TrainState()
        saved.load_state_dict(ckpt["state"])
        if restore_data_and_rng:
            self.state = saved
            set_rng_state(ckpt["rng"])
            if self.stream is not None:
                self.stream.load_state_dict(ckpt.get("data"))
        else:  # a rollback keeps the data position and RNG moving forward, and counts itself
            self.state.step = saved.step

    def export_state_dict(self) -> dict[str, torch.Tensor]:
        """Full (unsharded, CPU) state dict of the exported model (EMA when enabled). Collective under FSDP."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        model = self.ema.module if self.ema is not None else self.task.export_model()
        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def save(self) -> None:
        if self.ckpt_dir is None:
            return
        sd = self.state_dict()  # collective under FSDP: every rank takes part
        if self.info.is_main:
            save_checkpoint(self.ckpt_dir, self.state.step, sd, keep_last=self.cfg.keep_last)
        if self.info.enabled:  # every rank returns once the checkpoint is on disk: a resume right after reads it
            ids = [self.device.index] if self.device.type == "cuda" else None
            torch.distributed.barrier(device_ids=ids)

    def maybe_resume(self) -> bool:
        """Resume from the run directory's latest checkpoint, if any."""
        path = latest_checkpoint(self.ckpt_dir) if self.ckpt_dir is not None else None
        if path is None:
            return False
        self.load_state_dict(load_checkpoint(path))
        self.logger.log(self.state.step, {"event": f"resumed from {path.name}"})
        return True

    # ------------------------------------------------------------------------------------------ loop
    def _autocast(self):
        enabled = self.cfg.precision == "bf16"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def _no_sync(self, last_micro: bool):
        stack = contextlib.ExitStack()
        if not last_micro:
            for wrapper in self.task._wrapped.values():
                if hasattr(wrapper, "no_sync"):
                    stack.enter_context(wrapper.no_sync())
        return stack

    @contextlib.contextmanager
    def _training_only(self, phase: _Phase):
        """With several phases: only ``phase``'s parameters require gradients, and calls route accordingly."""
        others = [p for ph in self.phases if ph is not phase for p in ph.params()]
        for p in others:
            p.requires_grad_(False)
        self.task.set_phase(phase.names if others else None)
        try:
            yield
        finally:
            for p in others:
                p.requires_grad_(True)
            self.task.set_phase(None)

    def _backward(self, phase: _Phase, forward, inputs: Iterable[tuple]) -> tuple[dict[str, float], float, bool]:
        """Forward + backward of one phase over its micro-batches, clipping -> (mean report, grad norm, finite)."""
        apply_schedules(phase.optimizer, phase.lr_at(self.state.step), phase.wd_at(self.state.step))
        reports, total = [], 0.0
        with self._training_only(phase):
            for micro, args in enumerate(inputs):
                with self._no_sync(micro == self.cfg.grad_accum - 1), self._autocast():
                    loss, report = forward(*args)
                    (loss / self.cfg.grad_accum).backward()
                total += float(report.get("loss", loss.detach()))
                reports.append(report)
        report = {k: sum(r[k] for r in reports) / len(reports) for k in reports[0]}
        if self.info.enabled:  # log the mean over ranks, not rank 0's share
            values = all_reduce_mean(torch.tensor(list(report.values()), dtype=torch.float64, device=self.device))
            report = dict(zip(report, values.tolist(), strict=True))
        if self.info.enabled and self.cfg.strategy == "fsdp":  # parameters FSDP left out (0-d): average here
            all_reduce_grads(unsharded_params(phase.params()))
        clip = phase.cfg.grad_clip
        grad_norm = torch.nn.utils.clip_grad_norm_(phase.params(), clip if clip > 0 else math.inf)
        finite = torch.tensor(float(math.isfinite(total) and bool(torch.isfinite(grad_norm))), device=self.device)
        return report, float(grad_norm), bool(all_reduce_mean(finite).item() == 1.0)

    def train_step(self, batches) -> dict[str, float]:
        """One optimiser step over ``grad_accum`` micro-batches and the auxiliary phase (after the main one, or
        before it when ``Task.aux_first``); the averaged report."""
        step = self.state.step
        self.task.train()
        kept: list[tuple] = []  # (batch, step, cache) of each micro-batch, for the auxiliary phase
        two = len(self.phases) > 1
        aux_now = two and self.task.aux_active(step)

        def micro_batches():
            for _ in range(self.cfg.grad_accum):
                batch = self._to_device(next(batches))
                if not two:
                    yield batch, step
                else:
                    kept.append((batch, step, {}))
                    yield kept[-1]

        aux_report: dict[str, float] = {}
        inputs = micro_batches()
        if aux_now and self.task.aux_first:  # the auxiliary step first, over micro-batches loaded up front
            inputs = list(inputs)
            aux_report = self._aux_step(self.phases[1], inputs)
        main = self.phases[0]
        report, grad_norm, finite = self._backward(main, self.task.training_forward, inputs)
        report.update(aux_report)
        if not finite:
            main.optimizer.zero_grad(set_to_none=True)
            return self._on_nonfinite(report)
        self._consecutive_nonfinite = 0
        self.task.before_optimizer_step(step)
        main.optimizer.step()
        main.optimizer.zero_grad(set_to_none=True)
        self.task.after_step(step)
        if self.ema is not None:
            self.ema.update(self.task.export_model(), step=step)
        if aux_now and not self.task.aux_first:
            report.update(self._aux_step(self.phases[1], kept))
        self.state.step += 1
        report.update(grad_norm=grad_norm, lr=main.lr())
        return report

    def _aux_step(self, phase: _Phase, kept: list[tuple]) -> dict[str, float]:
        """The auxiliary phase over the kept micro-batches; a non-finite one is skipped (and reported)."""
        report, grad_norm, finite = self._backward(phase, self.task.aux_forward, kept)
        report.update(aux_grad_norm=grad_norm, aux_lr=phase.lr())
        if finite:
            phase.optimizer.step()
        else:
            report["aux_skipped"] = 1.0
            self.logger.log(self.state.step, {"event": f"non-finite auxiliary loss/gradient: step {self.state.step} "
                                              "auxiliary update skipped"})  # fmt: skip
        phase.optimizer.zero_grad(set_to_none=True)
        return report

    def _on_nonfinite(self, report: dict[str, float]) -> dict[str, float]:
        self.state.skipped_steps += 1
        self._consecutive_nonfinite += 1
        event = f"non-finite loss/gradient: step {self.state.step} skipped ({self._consecutive_nonfinite} in a row)"
        if self._consecutive_nonfinite >= self.cfg.max_consecutive_nonfinite:
            path = latest_checkpoint(self.ckpt_dir) if self.ckpt_dir is not None else None
            if path is None:
                raise FloatingPointError(f"{event}; no checkpoint to roll back to")
            self.load_state_dict(load_checkpoint(path), restore_data_and_rng=False)
            self.state.rollbacks += 1
            self._consecutive_nonfinite = 0
            event += f"; rolled back to {path.name}"
        self.logger.log(self.state.step, {"event": event, **report})
        return {**report, "skipped": 1.0}

    def fit(self, until: int | None = None) -> dict[str, float]:
        """Train to ``cfg.steps`` (or stop after step ``until``), resuming from the run directory's checkpoint.

        Stopping early keeps every schedule of the full run, so a later ``fit()`` continues the same run.
        """
        self.maybe_resume()
        last = self.cfg.steps if until is None else min(until, self.cfg.steps)
        batches = self._batches()
        bar = None
        if self.cfg.progress and self.info.is_main:
            from tqdm.auto import tqdm

            bar = tqdm(total=self.cfg.steps, initial=self.state.step, desc="train", dynamic_ncols=True)
        report: dict[str, float] = {}
        while self.state.step < last:
            before = self.state.step
            report = self.train_step(batches)
            if bar is not None and self.state.step > before:
                bar.update(self.state.step - bar.n)
                bar.set_postfix(loss=f"{report['loss']:.4f}")
            if self.state.step > before and (
                self.state.step % self.cfg.log_every == 0 or self.state.step == self.cfg.steps
            ):
                self.logger.log(self.state.step, report, echo=bar is None)
            if self.state.step > before and (self.state.step % self.cfg.ckpt_every == 0 or self.state.step == last):
                self.save()
        if bar is not None:
            bar.close()
        self.logger.close()
        return report
