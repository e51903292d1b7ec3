"""DINOv2 linear-probe training on frozen features: many linear heads trained jointly, evaluated every epoch.

The heads are grouped by input: a group holds H heads (one per learning rate) on the same (B, F) input as one
stacked (H, C, F) weight, applied by a single matmul (``F.linear`` with the flattened (H·C, F) weight). One SGD
optimiser drives every group; per-head learning rates stay exact because the optimiser's learning rate is only the
schedule factor s_t (cosine, 1 -> 0) and each head's gradient is multiplied by its constant learning rate lr_h
before the step. With momentum m, no dampening and no weight decay the momentum buffer is then lr_h · b_t, where
b_t is the buffer of an independent head, so the update s_t · lr_h · b_t equals that of an independent
``SGD(lr=lr_h)`` head under the same ``CosineAnnealingLR`` (DINOv2's ``linear.py``).

Data-parallel training (a :class:`Shard` per rank): every rank draws the same seeded global batches of indices into
the whole set, keeps the samples it holds, and adds their cross-entropies divided by the GLOBAL batch size; the
head gradients are summed over the ranks before each step. Every step is thus the step of one process on the whole
batch (up to float summation order), while each rank holds only its part of the features.

Shape legend:
    N: samples (of the whole set), n: samples of one rank, B: global batch, b: a rank's part of it,
    H: heads in a group, C: classes, F: a group's input width
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

#: DINOv2's 13 base learning rates (each scaled by batch / 256).
DEFAULT_LRS = (1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1)


class ProbeData(Protocol):
    """Frozen features of N samples (n on a rank of data-parallel training) as the probe trainer reads them."""

    labels: torch.Tensor  # (N,) int64, on the training device

    def inputs(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """Samples ``idx`` (B,) -> group name -> (B, F) float32 classifier input."""
        ...


@dataclass(frozen=True)
class Shard:
    """This rank's part of a training set split over the ranks of the default process group.

    Attributes:
        indices: (n,) position in the whole set of each of the rank's samples (row i of its :class:`ProbeData`);
            the ranks' indices are disjoint and together cover range(total).
        total: N, samples of all ranks together.
    """

    indices: torch.Tensor
    total: int

    def rows(self) -> torch.Tensor:
        """(N,) int64 CPU lookup: this rank's row of every sample of the whole set, -1 where another rank holds it."""
        rows = torch.full((self.total,), -1, dtype=torch.long)
        rows[self.indices.cpu()] = torch.arange(len(self.indices))
        return rows


@dataclass
class TensorProbeData:
    """:class:`ProbeData` over ready-made inputs: group name -> (N, F) features."""

    features: dict[str, torch.Tensor]
    labels: torch.Tensor

    def inputs(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: f[idx].float() for name, f in self.features.items()}


def head_name(group: str, lr: float) -> str:
    """``n4`` and 0.001 -> ``n4_lr0.001``."""
    return f"{group}_lr{lr:g}"


class LinearHeadGroup(nn.Module):
    """H linear heads (each ``nn.Linear(dim, C)``, weight N(0, 0.01), bias 0) on one input, one matmul.

    Args:
        dim: input width F.
        num_classes: C.
        lrs: the H per-head learning rates (already scaled by batch / 256).
        generator: CPU generator for the initial weights (drawn head after head, on the CPU, so the
            initialisation does not depend on the device).
    """

    def __init__(self, dim: int, num_classes: int, lrs: Sequence[float], generator: torch.Generator | None = None):
        super().__init__()
        weight = torch.empty(len(lrs), num_classes, dim).normal_(0.0, 0.01, generator=generator)
        self.weight = nn.Parameter(weight)  # (H, C, F)
        self.bias = nn.Parameter(torch.zeros(len(lrs), num_classes))  # (H, C)
        self.register_buffer("lrs", torch.tensor(list(lrs), dtype=torch.float32), persistent=False)

    @property
    def num_heads(self) -> int:
        return self.weight.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, F) -> (B, H, C) logits of every head."""
        h, c, f = self.weight.shape
        return F.linear(x, self.weight.reshape(h * c, f), self.bias.reshape(h * c)).view(-1, h, c)

    def loss(self, x: torch.Tensor, labels: torch.Tensor, batch: int | None = None) -> torch.Tensor:
        """Sum over heads of each head's cross-entropy summed over the samples and divided by ``batch``.

        ``batch`` defaults to the samples given (the mean); a rank of data-parallel training passes the global
        batch, so that the ranks' gradients sum to the gradient of the whole batch's mean.
        """
        logits = self(x).flatten(0, 1)  # (b·H, C), row i·H + h
        targets = labels.repeat_interleave(self.num_heads)
        return F.cross_entropy(logits, targets, reduction="sum") / (batch or len(labels))

    @torch.no_grad()
    def scale_gradients(self) -> None:
        """Multiply each head's gradient by its learning rate (see the module docstring)."""
        self.weight.grad.mul_(self.lrs[:, None, None])
        self.bias.grad.mul_(self.lrs[:, None])


def batch_stream(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless batches of sample indices: successive seeded permutations, each cut into full batches (drop_last).

    A set smaller than the batch gives one batch of the whole (shuffled) set per permutation.
    """
    b = min(batch_size, n)
    while True:
        perm = torch.randperm(n, generator=generator)
        for i in range(n // b):
            yield perm[i * b : (i + 1) * b]


@dataclass
class ProbeTraining:
    """Optimisation settings of the probe (DINOv2 defaults).

    Attributes:
        learning_rates: base learning rates, one head per rate and group; each is scaled by ``batch / 256``.
        batch_size: global batch (DINOv2: 128 per GPU x 8 GPUs). A set smaller than it trains on whole-set
            batches, and the learning rates are then scaled by the batch actually used.
        epochs: evaluations (one after each epoch).
        epoch_length: iterations per epoch; 0 = ceil(N / batch).
        momentum: SGD momentum (weight decay is 0).
        seed: initial weights and batch order.
        eval_batch: samples per evaluation matmul.
    """

    learning_rates: Sequence[float] = DEFAULT_LRS
    batch_size: int = 1024
    epochs: int = 10
    epoch_length: int = 0
    momentum: float = 0.9
    seed: int = 0
    eval_batch: int = 4096


@dataclass
class ProbeResult:
    """Per-head, per-epoch validation top-1 of a probe run.

    Attributes:
        accuracy: head name -> top-1 after each epoch.
        heads: head name -> (group, base learning rate).
        scaled_lrs: head name -> learning rate after the batch / 256 scaling (the schedule's peak).
        lr_factors: the cosine factor used at every iteration (1 at the first, 0 after the last).
        batch_size: the batch actually used; epoch_length: iterations per epoch.
        groups: the trained head groups (input group name -> module).
    """

    accuracy: dict[str, list[float]]
    heads: dict[str, tuple[str, float]]
    scaled_lrs: dict[str, float]
    lr_factors: list[float] = field(default_factory=list)
    batch_size: int = 0
    epoch_length: int = 0
    groups: dict[str, LinearHeadGroup] = field(default_factory=dict)

    def best(self, epoch: int | None = None) -> tuple[float, str, int]:
        """(top-1, head, epoch index) of the best head over all epochs, or at ``epoch`` only (-1: the last)."""
        cands = [
            (accs[e], name, e)
            for name, accs in self.accuracy.items()
            for e in (range(len(accs)) if epoch is None else [range(len(accs))[epoch]])
        ]
        return max(cands, key=lambda t: (t[0], -t[2]))  # ties: the earliest epoch, then dict order


def make_head_groups(
    group_dims: dict[str, int], num_classes: int, scaled_lrs: Sequence[float], seed: int, device: torch.device
) -> dict[str, LinearHeadGroup]:
    """One :class:`LinearHeadGroup` per input group, initialised from ``seed`` in group order."""
    g = torch.Generator().manual_seed(seed)
    return {name: LinearHeadGroup(dim, num_classes, scaled_lrs, g).to(device) for name, dim in group_dims.items()}


@torch.no_grad()
def evaluate_heads(
    groups: dict[str, LinearHeadGroup],
    data: ProbeData,
    lrs: Sequence[float],
    chunk: int = 4096,
    distributed: bool = False,
) -> dict[str, float]:
    """Top-1 of every head on ``data``: head name -> accuracy.

    ``distributed``: ``data`` is this rank's part of the evaluation set; correct and sample counts are summed over
    the ranks of the default process group, so every rank gets the accuracy on the whole set.
    """
    n = len(data.labels)
    correct = torch.zeros(len(groups), len(lrs), dtype=torch.long, device=data.labels.device)
    for start in range(0, n, chunk):
        idx = torch.arange(start, min(start + chunk, n), device=data.labels.device)
        x, y = data.inputs(idx), data.labels[idx]
        for i, (name, g) in enumerate(groups.items()):
            correct[i] += (g(x[name]).argmax(-1) == y[:, None]).sum(0)
    counts = torch.cat([correct.flatten(), correct.new_tensor([n])])
    if distributed:
        dist.all_reduce(counts)
    *counts, n = counts.tolist()
    return {head_name(name, lr): counts[i * len(lrs) + h] / max(n, 1)
            for i, name in enumerate(groups) for h, lr in enumerate(lrs)}  # fmt: skip


def train_linear_probes(
    train: Callable[[int], ProbeData],
    val: ProbeData,
    group_dims: dict[str, int],
    num_classes: int,
    cfg: ProbeTraining,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    shard: Shard | None = None,
) -> ProbeResult:
    """Train len(group_dims) x len(learning_rates) heads jointly; evaluate every head on ``val`` after every epoch.

    Args:
        train: epoch index -> the training features of that epoch (e.g. its augmented view); every epoch's data
            has the same N samples (the same n of a shard), and the batch order continues across epochs.
        val: evaluation features.
        group_dims: input group name -> input width F (``train(e).inputs`` gives every group).
        num_classes: C.
        progress: a tqdm bar over the training iterations.
        log: receives one line per epoch (the best head so far).
        shard: data-parallel training (see the module docstring): ``train(e)`` holds the samples ``shard.indices``
            of the whole set, and ``val`` is this rank's part of the evaluation set. Every rank of the default
            process group calls this with its own shard and gets the same result. None: one process, all samples.

    Returns:
        the per-head, per-epoch accuracies (selection over heads and epochs is the caller's, on ``val``).
    """
    from tqdm.auto import tqdm

    data = train(0)
    device, n = data.labels.device, (len(data.labels) if shard is None else shard.total)
    if shard is not None and len(shard.indices) != len(data.labels):
        raise ValueError(f"the shard lists {len(shard.indices)} samples but the rank holds {len(data.labels)}")
    rows = None if shard is None else shard.rows()
    batch = min(cfg.batch_size, n)
    epoch_length = cfg.epoch_length or math.ceil(n / cfg.batch_size)
    total = cfg.epochs * epoch_length
    scaled = [lr * batch / 256 for lr in cfg.learning_rates]
    groups = make_head_groups(group_dims, num_classes, scaled, cfg.seed, device)
    params = [p for g in groups.values() for p in g.parameters()]
    opt = torch.optim.SGD(params, lr=1.0, momentum=cfg.momentum, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, total, eta_min=0.0)
    stream = batch_stream(n, batch, torch.Generator().manual_seed(cfg.seed))
    result = ProbeResult({}, {}, {}, batch_size=batch, epoch_length=epoch_length, groups=groups)
    for name in groups:
        for lr, s in zip(cfg.learning_rates, scaled, strict=True):
            result.heads[head_name(name, lr)], result.scaled_lrs[head_name(name, lr)] = (name, lr), s
            result.accuracy[head_name(name, lr)] = []
    bar = tqdm(total=total, desc="linear probe", unit="it", disable=not progress)
    for epoch in range(cfg.epochs):
        data = data if epoch == 0 else train(epoch)
        with torch.enable_grad():
            for _ in range(epoch_length):
                idx = next(stream)  # (B,) into the whole set, on the CPU
                if rows is not None:
                    idx = rows[idx]
                    idx = idx[idx >= 0]  # (b,) this rank's rows of the batch, in batch order
                idx = idx.to(device)
                x, y = data.inputs(idx), data.labels[idx]
                loss = sum(g.loss(x[name], y, batch) for name, g in groups.items())
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if shard is not None:
                    for p in params:
                        dist.all_reduce(p.grad)
                for g in groups.values():
                    g.scale_gradients()
                result.lr_factors.append(opt.param_groups[0]["lr"])
                opt.step()
                sched.step()
                bar.update(1)
        for name, acc in evaluate_heads(groups, val, cfg.learning_rates, cfg.eval_batch, shard is not None).items():
            result.accuracy[name].append(acc)
        if log is not None:
            top, head, _ = result.best(-1)
            best, best_head, best_epoch = result.best()
            log(f"epoch {epoch + 1}/{cfg.epochs}: best head {head} top-1 {top:.4f} "
                f"(best so far {best:.4f}: {best_head}, epoch {best_epoch + 1})")  # fmt: skip
    bar.close()
    return result
