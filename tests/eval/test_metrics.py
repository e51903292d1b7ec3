import math

import pytest
import torch

from unitok.eval.metrics.classification import (
    knn_accuracy,
    linear_probe_accuracy,
    topk_accuracy,
    zero_shot_accuracy,
    zero_shot_classifier,
)
from unitok.eval.metrics.image import psnr, ssim


def test_psnr_of_known_arrays():
    a = torch.zeros(2, 3, 4, 4)
    b = torch.full((2, 3, 4, 4), 0.1)  # error 25.5 on the 0-255 scale everywhere
    assert psnr(a, b).tolist() == pytest.approx([20 * math.log10(255 / 25.5)] * 2, rel=1e-6)
    assert math.isinf(psnr(a, a)[0].item())
    with pytest.raises(ValueError, match="same shape"):
        psnr(a, b[:, :, :2])


def _ssim_by_formula(x, y, window=11, sigma=1.5):
    """Slow SSIM straight from the definition: reflect-padded Gaussian-weighted local moments at every pixel."""
    r = window // 2
    t = torch.arange(window, dtype=torch.float64) - r
    w = torch.exp(-(t**2) / (2 * sigma**2))
    w = torch.outer(w, w) / torch.outer(w, w).sum()
    pad = lambda a: torch.nn.functional.pad(a[None], (r, r, r, r), mode="reflect")[0]
    xp, yp = pad(x.double()), pad(y.double())
    c1, c2 = 0.01**2, 0.03**2
    values = []
    for c in range(x.shape[0]):
        for i in range(x.shape[1]):
            for j in range(x.shape[2]):
                a, b = xp[c, i : i + window, j : j + window], yp[c, i : i + window, j : j + window]
                ma, mb = (w * a).sum(), (w * b).sum()
                va, vb = (w * (a - ma) ** 2).sum(), (w * (b - mb) ** 2).sum()
                cov = (w * (a - ma) * (b - mb)).sum()
                values.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return torch.stack(values).mean().item()


def test_ssim_of_identical_images_is_one_and_matches_the_definition():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 16, 20, generator=g)
    y = (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    assert ssim(x, x).tolist() == pytest.approx([1.0, 1.0], abs=1e-6)
    scores = ssim(x, y)
    assert (scores < 0.99).all()
    assert scores[1].item() == pytest.approx(_ssim_by_formula(x[1], y[1]), abs=1e-5)
    with pytest.raises(ValueError, match="same shape"):
        ssim(x, y[:, :2])


def test_ssim_matches_torchmetrics_as_the_official_tool_calls_it():
    from torchmetrics.image import StructuralSimilarityIndexMeasure

    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 3, 64, 48, generator=g)
    y = (x * 0.8 + 0.2 * torch.rand(x.shape, generator=g)).clamp(0, 1)
    reference = StructuralSimilarityIndexMeasure(data_range=1.0)(y, x).item()
    assert ssim(y, x).mean().item() == pytest.approx(reference, abs=1e-5)


def test_topk_and_zero_shot_accuracy():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.5], [0.2, 0.3, 0.4]])
    labels = torch.tensor([1, 2, 0])
    assert topk_accuracy(logits, labels, 1) == pytest.approx(1 / 3)
    assert topk_accuracy(logits, labels, 2) == pytest.approx(2 / 3)
    classifier = torch.eye(3)
    assert zero_shot_accuracy(torch.eye(3) * 5, classifier, torch.arange(3))["top1"] == 1.0


class _TextModel:
    """A duck-typed CLIP text encoder: embedding = one-hot of the first token id."""

    def encode_text(self, tokens, normalize=False):
        emb = torch.nn.functional.one_hot(tokens[:, 0], 8).float() + 0.1 * tokens[:, 1:2].float()
        return torch.nn.functional.normalize(emb, dim=-1) if normalize else emb


def test_zero_shot_classifier_is_open_clips_mean_of_normalised_prompts():
    classnames, templates = ["a", "b"], ["{}", "x {}"]
    vocab = {"a": 1, "b": 2, "x": 3}

    def tokenizer(texts):
        ids = [[vocab[w] for w in t.split()] for t in texts]
        return torch.tensor([row + [0] * (2 - len(row)) for row in ids])

    W = zero_shot_classifier(_TextModel(), tokenizer, classnames, templates)
    model = _TextModel()
    for c, name in enumerate(classnames):
        emb = model.encode_text(tokenizer([t.format(name) for t in templates]), normalize=True).mean(0)
        assert torch.allclose(W[:, c], emb / emb.norm(), atol=1e-6)


def test_probes_separate_linearly_separable_features():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(4, 16, generator=g) * 5
    y = torch.arange(200) % 4
    x = centers[y] + torch.randn(200, 16, generator=g)
    assert linear_probe_accuracy(x[:150], y[:150], x[150:], y[150:]) == 1.0
    assert knn_accuracy(x[:150], y[:150], x[150:], y[150:], k=5) == 1.0
    noise = torch.randn(200, 16, generator=g)
    assert linear_probe_accuracy(noise[:150], y[:150], noise[150:], y[150:]) < 0.6
