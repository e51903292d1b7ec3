"""Classification probes of frozen features: zero-shot (open_clip's classifier builder), linear probe, kNN.

Shape legend:
    N: samples, D: feature dim, C: classes, E: CLIP embedding width
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F


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
) -> dict[int, float]:
    """Top-1 of DINO's weighted kNN for several k at once: cosine similarity, votes ``exp(sim / T)``.

    Computed on ``train_x``'s device in chunks of ``query_chunk`` test samples (None: all at once), so only a
    (query_chunk, N_train) similarity block exists at any time; one top-k for the largest k serves every k.

    Args:
        train_x, test_x: (N, D) and (M, D) features (normalised here).
        train_y, test_y: (N,) and (M,) labels.
        ks: neighbour counts (each capped at N).
        num_classes: C (default: the largest label + 1).

    Returns:
        k -> top-1 accuracy.
    """
    device = train_x.device
    a = F.normalize(train_x.float(), dim=-1)
    train_y = train_y.to(device)
    num_classes = num_classes or int(max(train_y.max(), test_y.max())) + 1
    kmax = min(max(ks), a.shape[0])
    chunk = query_chunk or max(len(test_x), 1)
    correct = dict.fromkeys(ks, 0)
    for start in range(0, len(test_x), chunk):
        b = F.normalize(test_x[start : start + chunk].to(device).float(), dim=-1)
        y = test_y[start : start + chunk].to(device)
        sims, idx = (b @ a.T).topk(kmax, dim=1)  # sorted, largest first
        weights, neighbours = (sims / temperature).exp(), train_y[idx]
        for k in ks:
            votes = torch.zeros(len(b), num_classes, device=device)
            votes.scatter_add_(1, neighbours[:, :k], weights[:, :k])
            correct[k] += (votes.argmax(dim=1) == y).sum().item()
    return {k: correct[k] / max(len(test_x), 1) for k in ks}


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
