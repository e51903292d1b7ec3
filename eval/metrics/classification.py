"""Classification probes of frozen features: zero-shot (open_clip's classifier builder), linear probe, kNN.

Shape legend:
    N: samples, n: training samples of one rank (data-parallel kNN), D: feature dim, C: classes,
    E: CLIP embedding width, Q: queries of one kNN chunk, K: kNN candidates per query
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F

from unitok.eval.metrics.linear_probe import Shard


def zero_shot_classifier(
    model, tokenizer, classnames: Sequence[str], templates: Sequence[str | Callable], device: str | torch.device = "cpu"
) -> torch.Tensor:
    """(E, C) classifier: per class, the re-normalised mean of the normalised prompt embeddings.

    Built by ``open_clip.build_zero_shot_classifier``; ``model`` needs ``encode_text(tokens, normalize=True)``.
    """
    from open_clip import build_zero_shot_classifier

    with torch.no_grad():
        return build_zero_shot_classifier(model, tokenizer, classnames, templates, device=device)


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int = 1) -> float:
    """Fraction of rows whose label is among the ``k`` largest logits."""
    top = logits.topk(min(k, logits.shape[1]), dim=1).indices
    return (top == labels[:, None]).any(dim=1).float().mean().item()


def zero_shot_accuracy(
    image_features: torch.Tensor, classifier: torch.Tensor, labels: torch.Tensor
) -> dict[str, float]:
    """Top-1 / top-5 of ``100 · normalise(features) @ classifier``."""
    logits = 100.0 * F.normalize(image_features.float(), dim=-1) @ classifier.float()
    return {"top1": topk_accuracy(logits, labels, 1), "top5": topk_accuracy(logits, labels, 5)}


def linear_probe_accuracy(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    epochs: int = 100,
    lr: float = 0.1,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> float:
    """Top-1 of a linear classifier (standardised features, full-batch AdamW, cross-entropy) on frozen features.

    A small, fast probe for demos; the DINOv2 protocol (13 lrs x 2 block settings, SGD) is the
    ``image.linear_probe`` suite.
    """
    g = torch.Generator().manual_seed(seed)
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    xs, xt = (train_x.float() - mean) / std, (test_x.float() - mean) / std
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    head = torch.nn.Linear(xs.shape[1], num_classes)
    with torch.no_grad():
        head.weight.normal_(0, 0.01, generator=g)
        head.bias.zero_()
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    with torch.enable_grad():
        for _ in range(epochs):
            opt.zero_grad()
            F.cross_entropy(head(xs), train_y).backward()
            opt.step()
            sched.step()
    with torch.no_grad():
        return topk_accuracy(head(xt), test_y, 1)


def knn_accuracies(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    ks: Sequence[int] = (20,),
    temperature: float = 0.07,
    query_chunk: int | None = None,
    num_classes: int | None = None,
    shard: Shard | None = None,
) -> dict[int, float]:
    """Top-1 of DINO's weighted kNN for several k at once: cosine similarity, votes ``exp(sim / T)``.

    Computed on ``train_x``'s device in chunks of ``query_chunk`` test samples (None: all at once), so only a
    (query_chunk, N_train) similarity block exists at any time; one top-k for the largest k serves every k.
    Neighbours are ranked by similarity, ties by the lower training index, so the result is deterministic.

    Args:
        train_x, test_x: (N, D) and (M, D) features (normalised here); (n, D) training features with ``shard``.
        train_y, test_y: (N,) and (M,) labels.
        ks: neighbour counts (each capped at N).
        num_classes: C (default: the largest label + 1).
        shard: data-parallel search: ``train_x`` holds the samples ``shard.indices`` (ascending) of the whole
            training set, and every rank of the default process group calls this with its own shard and the same
            test samples. Each rank takes its local top-k; the candidates of all ranks are gathered and merged into
            the global top-k, so every rank gets the single-process result. None: one process, all samples.

    Returns:
        k -> top-1 accuracy.
    """
    device = train_x.device
    a = F.normalize(train_x.float(), dim=-1)
    train_y = train_y.to(device)
    index = torch.arange(len(a), device=device) if shard is None else shard.indices.to(device)
    if len(index) != len(a) or (index.diff() <= 0).any():
        raise ValueError(f"the shard must list the {len(a)} training samples held, in ascending order")
    largest = _largest_label(train_y, test_y, len(test_x), shard is not None)
    num_classes = num_classes or largest + 1
    kmax = min(max(ks), len(a) if shard is None else shard.total)
    chunk = query_chunk or max(len(test_x), 1)
    correct = dict.fromkeys(ks, 0)
    for start in range(0, len(test_x), chunk):
        b = F.normalize(test_x[start : start + chunk].to(device).float(), dim=-1)
        y = test_y[start : start + chunk].to(device)
        sims, idx, neighbours = _nearest(b @ a.T, index, train_y, kmax)
        if shard is not None:
            sims, idx, neighbours = _ranked(*(_all_gather_cat(t) for t in (sims, idx, neighbours)), kmax)
        weights = (sims / temperature).exp()
        for k in ks:
            votes = torch.zeros(len(b), num_classes, device=device)
            votes.scatter_add_(1, neighbours[:, :k], weights[:, :k])
            correct[k] += (votes.argmax(dim=1) == y).sum().item()
    return {k: correct[k] / max(len(test_x), 1) for k in ks}


def _largest_label(train_y: torch.Tensor, test_y: torch.Tensor, queries: int, distributed: bool) -> int:
    """The largest label of both sets (of all ranks' training shards); checks that every rank has the same queries."""
    top = torch.cat([train_y.new_zeros(1), train_y, test_y.to(train_y.device)]).max()
    if not distributed:
        return int(top)
    found = torch.stack([top, top.new_tensor(queries), top.new_tensor(-queries)])
    dist.all_reduce(found, op=dist.ReduceOp.MAX)
    if found[1] != queries or -found[2] != queries:
        raise ValueError(f"every rank needs the same test samples, but they hold {-found[2]} to {found[1]}")
    return int(found[0])


def _nearest(
    sims: torch.Tensor, index: torch.Tensor, labels: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(Q, n) similarities to the samples ``index`` (n,) ascending, labels (n,) -> the (Q, k) best of them.

    Returns their similarities, indices and labels, ranked by :func:`_ranked`. Of samples tied with the k-th
    similarity the lowest indices are kept. With n < k, the missing candidates have similarity -inf.
    """
    q, n = sims.shape
    vals, pos = sims.topk(min(k, n), dim=1)
    if n > k > 0:
        kth = vals[:, -1:]
        rows = ((sims >= kth).sum(1) > k).nonzero().squeeze(1)  # ties across the k-th place: topk picks any of them
        if len(rows):
            sub, t = sims[rows], kth[rows]
            above, tied = sub > t, sub == t
            keep = above | (tied & (tied.cumsum(1) <= k - above.sum(1, keepdim=True)))
            pos[rows] = keep.nonzero()[:, 1].view(len(rows), k)  # k per row, in index order
            vals[rows] = sub.gather(1, pos[rows])
    idx, lab = index[pos], labels[pos]
    if n < k:
        vals = torch.cat([vals, vals.new_full((q, k - n), -math.inf)], 1)
        idx = torch.cat([idx, idx.new_full((q, k - n), torch.iinfo(torch.long).max)], 1)
        lab = torch.cat([lab, lab.new_zeros(q, k - n)], 1)
    return _ranked(vals, idx, lab, k)


def _ranked(
    sims: torch.Tensor, index: torch.Tensor, labels: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The first k of (Q, K) candidates ordered by similarity, largest first, then by index: (Q, k) each."""
    order = index.argsort(dim=1)
    sims, index, labels = (t.gather(1, order) for t in (sims, index, labels))
    order = sims.argsort(dim=1, descending=True, stable=True)[:, :k]
    return sims.gather(1, order), index.gather(1, order), labels.gather(1, order)


def _all_gather_cat(t: torch.Tensor) -> torch.Tensor:
    """(Q, K) on every rank -> (Q, world · K): the ranks' tensors side by side, in rank order."""
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts, dim=1)


def knn_accuracy(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    k: int = 20,
    temperature: float = 0.07,
    query_chunk: int | None = None,
) -> float:
    """Top-1 of a cosine-similarity kNN vote weighted by ``exp(sim / T)`` (the DINO kNN protocol)."""
    return knn_accuracies(train_x, train_y, test_x, test_y, [k], temperature, query_chunk)[k]
