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
from unitok.eval.metrics.image import psnr


def test_psnr_of_known_arrays():
    a = torch.zeros(2, 3, 4, 4)
    b = torch.full((2, 3, 4, 4), 0.1)  # error 25.5 on the 0-255 scale everywhere
    assert psnr(a, b).tolist() == pytest.approx([20 * math.log10(255 / 25.5)] * 2, rel=1e-6)
    assert math.isinf(psnr(a, a)[0].item())
    with pytest.raises(ValueError, match="same shape"):
        psnr(a, b[:, :, :2])


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
