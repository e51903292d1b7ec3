"""Linear-probe head training: unitok's grouped heads against DINOv2-style independent heads, and kNN throughput.

Both train the 26 DINOv2 heads (n_blocks 1 and 4 x 13 learning rates, SGD momentum 0.9, cosine schedule) on the
same random frozen features (float16 (N, 4, D) class tokens + (N, D) avgpool, as the feature cache stores them),
with the same initial weights and the same batches:

* ``grouped``: :func:`unitok.eval.metrics.linear_probe.train_linear_probes` (13 heads of a block setting stacked
  into one (13·C, F) matmul, per-head learning rates by gradient scaling);
* ``dinov2``: 26 ``nn.Linear`` heads, each with its own forward and its own SGD parameter group, as DINOv2's
  ``linear.py`` builds them (``AllClassifiers`` of ``LinearClassifier``).

Reported: ms per training iteration (median over the timed iterations of a run; warm-up iterations excluded) for
both, their ratio (target: dinov2 / grouped >= 1), the largest weight difference after training (a sanity check:
the two must agree to float32 rounding), the evaluation time of all 26 heads, and kNN queries per second
(:func:`unitok.eval.metrics.classification.knn_accuracies`, k = 10, 20, 100, 200) with projections to the ImageNet
sizes (12,500 iterations; 50,000 queries against 1,281,167 training features).

Run:
    .venv/bin/python bench/linear_probe_heads.py                  # CPU, small sizes
    .venv/bin/python bench/linear_probe_heads.py --device cuda    # ImageNet widths (D 1024, C 1000, batch 1024)
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from unitok.eval.metrics.classification import knn_accuracies
from unitok.eval.metrics.linear_probe import (
    DEFAULT_LRS,
    ProbeTraining,
    TensorProbeData,
    batch_stream,
    evaluate_heads,
    make_head_groups,
    train_linear_probes,
)

BLOCKS = (1, 4)


class CachedFeatures:
    """Random cached-probe features; ``inputs`` pools the DINOv2 classifier inputs like the suite does."""

    def __init__(self, n: int, dim: int, classes: int, device: torch.device, seed: int = 0):
        g = torch.Generator(device=device).manual_seed(seed)
        self.cls = torch.randn(n, 4, dim, generator=g, device=device).half()
        self.avgpool = torch.randn(n, dim, generator=g, device=device).half()
        self.labels = torch.randint(0, classes, (n,), generator=g, device=device)

    def inputs(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        cls, avg = self.cls[idx], self.avgpool[idx]
        return {f"n{k}": torch.cat([cls[:, 4 - k :].flatten(1), avg], -1).float() for k in BLOCKS}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_grouped(data, dims, classes, batch, iters, device) -> tuple[list[float], dict]:
    """Time every iteration of train_linear_probes through a timing hook on the schedule."""
    stamps = []
    tiny_val = TensorProbeData({k: torch.zeros(1, d, device=device) for k, d in dims.items()}, data.labels[:1])

    class Timed:
        labels = data.labels

        def inputs(self, idx):
            _sync(device)
            stamps.append(time.perf_counter())
            return data.inputs(idx)

    cfg = ProbeTraining(batch_size=batch, epochs=1, epoch_length=iters)
    result = train_linear_probes(lambda e: Timed(), tiny_val, dims, classes, cfg)
    _sync(device)
    stamps.append(time.perf_counter())
    return [b - a for a, b in zip(stamps, stamps[1:], strict=False)], result.groups


def run_dinov2(data, dims, classes, batch, iters, device) -> tuple[list[float], dict]:
    """26 independent heads, one SGD parameter group each (DINOv2's linear.py)."""
    init = make_head_groups(dims, classes, [1.0] * len(DEFAULT_LRS), seed=0, device=device)
    heads, groups = {}, []
    for name, g in init.items():
        for h, lr in enumerate(DEFAULT_LRS):
            head = torch.nn.Linear(g.weight.shape[2], classes).to(device)
            with torch.no_grad():
                head.weight.copy_(g.weight[h])
                head.bias.copy_(g.bias[h])
            heads[(name, h)] = head
            groups.append({"params": head.parameters(), "lr": lr * batch / 256})
    opt = torch.optim.SGD(groups, momentum=0.9, weight_decay=0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, iters, eta_min=0)
    stream = batch_stream(len(data.labels), batch, torch.Generator().manual_seed(0))
    times = []
    for _ in range(iters):
        _sync(device)
        start = time.perf_counter()
        idx = next(stream).to(device)
        x, y = data.inputs(idx), data.labels[idx]
        loss = sum(F.cross_entropy(head(x[name]), y) for (name, _), head in heads.items())
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times, heads


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--n", type=int, default=None, help="training features held (default 262144 cuda / 4096 cpu)")
    p.add_argument("--iters", type=int, default=None, help="training iterations per implementation")
    args = p.parse_args()
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    n, dim, classes, batch = (args.n or 262144, 1024, 1000, 1024) if gpu else (args.n or 4096, 256, 100, 256)
    iters = args.iters or (60 if gpu else 8)
    warm = min(10, iters // 4)
    name = torch.cuda.get_device_name(device) if gpu else platform.processor() or platform.machine()
    print(f"machine: {name}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"features: N {n}, D {dim}, C {classes}, batch {batch}, 26 heads, {iters} iterations ({warm} warm-up)")
    data = CachedFeatures(n, dim, classes, device)
    dims = {f"n{k}": (k + 1) * dim for k in BLOCKS}

    t_grouped, ours = run_grouped(data, dims, classes, batch, iters, device)
    t_dino, ref = run_dinov2(data, dims, classes, batch, iters, device)
    ms_g, ms_d = (1e3 * statistics.median(t[warm:]) for t in (t_grouped, t_dino))
    diff = max((ours[g].weight[h] - head.weight).abs().max().item() for (g, h), head in ref.items())
    print(f"grouped: {ms_g:8.2f} ms/it   dinov2-style: {ms_d:8.2f} ms/it   ratio dinov2/grouped {ms_d / ms_g:.2f}")
    print(f"max |weight difference| after {iters} iterations: {diff:.2e}")
    print(f"ImageNet schedule (12,500 iterations): grouped {12.5 * ms_g:.0f} s, dinov2-style {12.5 * ms_d:.0f} s")

    m = min(n, 50_000 if gpu else 2_000)
    _sync(device)
    start = time.perf_counter()
    evaluate_heads(ours, CachedFeatures(m, dim, classes, device, seed=1), DEFAULT_LRS)
    _sync(device)
    print(f"evaluation of 26 heads on {m} samples: {time.perf_counter() - start:.2f} s")

    q = min(n, 10_240 if gpu else 1_024)
    train_x, test = data.cls[:, -1], CachedFeatures(q, dim, classes, device, seed=2)
    knn_accuracies(train_x, data.labels, test.cls[:q, -1], test.labels, ks=[10], query_chunk=1024)  # warm-up
    _sync(device)
    start = time.perf_counter()
    knn_accuracies(train_x, data.labels, test.cls[:, -1], test.labels, ks=[10, 20, 100, 200], query_chunk=1024)
    _sync(device)
    elapsed = time.perf_counter() - start
    rate = q * n / elapsed
    print(f"kNN: {q} queries x {n} train in {elapsed:.2f} s ({rate / 1e9:.2f} G pairs/s); ImageNet 50k x 1.28M: "
          f"{50_000 * 1_281_167 / rate:.0f} s")  # fmt: skip
    if gpu:
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB")
    assert math.isfinite(diff)


if __name__ == "__main__":
    main()
