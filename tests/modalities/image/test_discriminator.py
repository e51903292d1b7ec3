"""PatchGAN discriminator: the pix2pix layout and logit-map shapes, norms, initialisation."""

import pytest
import torch

from unitok.modalities.image.discriminator import PatchDiscriminator, PatchDiscriminatorConfig


def test_default_layout_gives_30x30_logits_at_256_px():
    d = PatchDiscriminator()
    convs = [m for m in d.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 128, 256, 512, 1]
    assert [c.stride[0] for c in convs] == [2, 2, 2, 1, 1] and all(c.kernel_size == (4, 4) for c in convs)
    assert [c.bias is not None for c in convs] == [True, False, False, False, True]  # normed convs: no bias
    with torch.no_grad():
        assert d(torch.randn(1, 3, 256, 256)).shape == (1, 1, 30, 30)


@pytest.mark.parametrize("norm", ["group", "batch", "none"])
@pytest.mark.parametrize(("n_layers", "size", "out"), [(2, 64, 14), (3, 64, 6), (1, 32, 14)])
def test_logit_map_shapes(norm, n_layers, size, out):
    d = PatchDiscriminator(PatchDiscriminatorConfig(channels=16, n_layers=n_layers, norm=norm, norm_groups=8))
    x = torch.randn(2, 3, size, size, requires_grad=True)
    logits = d(x)
    assert logits.shape == (2, 1, out, out)
    logits.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_pix2pix_initialisation():
    d = PatchDiscriminator(PatchDiscriminatorConfig(channels=64, norm="group"))
    big = d.layers[-1 - 3]  # the 256 -> 512 stride-1 conv: 2M weights
    assert isinstance(big, torch.nn.Conv2d)
    assert big.weight.mean().item() == pytest.approx(0.0, abs=1e-3)
    assert big.weight.std().item() == pytest.approx(0.02, rel=0.02)
    gains = torch.cat([m.weight for m in d.modules() if isinstance(m, torch.nn.GroupNorm)])
    assert gains.mean().item() == pytest.approx(1.0, abs=0.01) and gains.std().item() == pytest.approx(0.02, rel=0.2)


def test_group_norm_keeps_samples_independent():
    d = PatchDiscriminator(PatchDiscriminatorConfig(channels=16, n_layers=2, norm_groups=8))
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(d(x)[:1], d(x[:1]), atol=1e-6)


def test_bad_config_is_named():
    with pytest.raises(ValueError, match="norm_groups=32 does not divide width 16"):
        PatchDiscriminator(PatchDiscriminatorConfig(channels=8, n_layers=1))
    with pytest.raises(ValueError, match="norm must be"):
        PatchDiscriminator(PatchDiscriminatorConfig(norm="spectral"))
