"""GAN losses and the adaptive weight against their direct formulas (taming-transformers VQGAN conventions)."""

import math

import pytest
import torch

from unitok.losses.adversarial import (
    AdversarialConfig,
    AdversarialLoss,
    adaptive_weight,
    discriminator_loss,
    feature_matching_loss,
    generator_adversarial_loss,
    generator_side_maps,
    hinge_d_loss,
    hinge_g_loss,
    least_squares_d_loss,
    least_squares_g_loss,
    non_saturating_g_loss,
    split_feature_maps,
    vanilla_d_loss,
)

REAL = torch.tensor([2.0, 0.5, -1.0])
FAKE = torch.tensor([-2.0, 0.3])


def test_discriminator_losses():
    # hinge: relu(1 - real) = [0, .5, 2], relu(1 + fake) = [0, 1.3]
    assert hinge_d_loss(REAL, FAKE).item() == pytest.approx(0.5 * (2.5 / 3 + 1.3 / 2))
    sp = lambda x: math.log1p(math.exp(x))  # noqa: E731
    want = 0.5 * (sum(sp(-r) for r in REAL.tolist()) / 3 + sum(sp(f) for f in FAKE.tolist()) / 2)
    assert vanilla_d_loss(REAL, FAKE).item() == pytest.approx(want, rel=1e-6)


def test_generator_losses():
    assert hinge_g_loss(FAKE).item() == pytest.approx(0.85)
    want = sum(-math.log(1 / (1 + math.exp(-f))) for f in FAKE.tolist()) / 2
    assert non_saturating_g_loss(FAKE).item() == pytest.approx(want, rel=1e-6)


def _linear_losses(seed=0):
    """y = W x; L_rec = ½||y - t||², L_G = -Σ a ⊙ y: ∇_W L_rec = (y - t) xᵀ, ∇_W L_G = -a xᵀ."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(3, 4, generator=g, requires_grad=True)
    x, t, a = torch.randn(4, generator=g), torch.randn(3, generator=g), torch.randn(3, generator=g)
    y = W @ x
    rec, gen = 0.5 * ((y - t) ** 2).sum(), -(a * y).sum()
    grads = (torch.outer(y.detach() - t, x), -torch.outer(a, x))
    return W, rec, gen, grads


def test_adaptive_weight_is_the_ratio_of_last_layer_gradient_norms():
    W, rec, gen, (g_rec, g_gen) = _linear_losses()
    lam = adaptive_weight(rec, gen, W)
    assert lam.item() == pytest.approx((g_rec.norm() / (g_gen.norm() + 1e-4)).item(), rel=1e-6)
    assert not lam.requires_grad
    (rec + lam * gen).backward()  # the graph was kept for the real backward pass
    assert torch.allclose(W.grad, g_rec + lam * g_gen, atol=1e-5)


def test_adaptive_weight_is_clamped_and_reduced():
    W, rec, _, _ = _linear_losses()
    tiny = 1e-12 * W.sum()
    assert adaptive_weight(rec, tiny, W).item() == pytest.approx(1e4)
    assert adaptive_weight(rec, tiny, W, max_weight=7.0).item() == pytest.approx(7.0)
    W, rec, gen, (g_rec, _) = _linear_losses()
    seen = []
    drop_gen = lambda s: seen.append(s.shape) or s * torch.tensor([1.0, 0.0]).view(2, 1, 1)  # noqa: E731
    assert adaptive_weight(rec, gen, W, max_weight=1e9, reduce=drop_gen).item() == pytest.approx(
        g_rec.norm().item() / 1e-4, rel=1e-5
    )
    assert seen == [(2, 3, 4)]  # the stacked (rec, gen) gradients


def test_adversarial_loss_starts_at_disc_start_and_weights_the_generator_term():
    adv = AdversarialLoss(AdversarialConfig(disc_start=3, disc_weight=0.5))
    assert not adv.active(2) and adv.active(3)
    assert not AdversarialLoss(AdversarialConfig(disc_weight=0.0)).active(10)
    W, rec, _, (g_rec, _) = _linear_losses()
    logits = (W @ torch.ones(4)).view(1, 1, 3, 1)  # a (B, 1, h, w) logit map
    terms = adv.generator_terms(rec, logits, W)
    g = -logits.mean()
    g_gen = -torch.ones(3, 4) / 3
    lam = g_rec.norm() / (g_gen.norm() + 1e-4)
    assert terms["gan_g"].item() == pytest.approx(g.item())
    assert terms["gan_weight"].item() == pytest.approx(0.5 * lam.item(), rel=1e-5)
    assert terms["gan_loss"].item() == pytest.approx(0.5 * lam.item() * g.item(), rel=1e-5)
    fixed = AdversarialLoss(AdversarialConfig(adaptive=False, disc_weight=0.25, gen_loss="non_saturating"))
    assert fixed.generator_terms(rec, logits, W)["gan_weight"].item() == 0.25
    d = adv.discriminator_terms(REAL, FAKE)
    assert d["disc_loss"].item() == pytest.approx(hinge_d_loss(REAL, FAKE).item())
    assert d["disc_logits_real"].item() == pytest.approx(0.5) and d["disc_logits_fake"].item() == pytest.approx(-0.85)


def test_bad_adversarial_config_is_named():
    with pytest.raises(ValueError, match="gen_loss"):
        AdversarialLoss(AdversarialConfig(gen_loss="wasserstein"))
    with pytest.raises(ValueError, match="disc_loss"):
        AdversarialLoss(AdversarialConfig(disc_loss="lsgan"))


def test_least_squares_losses():
    # (1 - real)² = [1, .25, 4] -> 5.25/3; fake² = [4, .09] -> 4.09/2; (1 - fake)² = [9, .49] -> 9.49/2
    assert least_squares_d_loss(REAL, FAKE).item() == pytest.approx(5.25 / 3 + 4.09 / 2)
    assert least_squares_g_loss(FAKE).item() == pytest.approx(9.49 / 2)
    assert AdversarialLoss(AdversarialConfig(disc_loss="least_squares", gen_loss="least_squares")).cfg


def _two_discriminators():
    """Two sub-discriminators: one with two feature maps + logits, one with one feature map + logits."""
    t = lambda *v: torch.tensor(v)  # noqa: E731
    fake = [[t(1.0, 2.0), t(0.0, 0.0, 3.0), t(0.5, -1.0)], [t(2.0), t(1.0, 1.0)]]
    real = [[t(0.0, 2.0), t(1.0, 1.0, 1.0), t(1.0, 2.0)], [t(-2.0), t(0.0, 4.0)]]
    return fake, real


def test_multi_discriminator_losses_sum_over_discriminators_as_dac():
    fake, real = _two_discriminators()
    # D: Σ_k mean fake_k² + mean (1 - real_k)²
    d_want = (0.25 + 1.0) / 2 + (0 + 1) / 2 + (1 + 1) / 2 + (1 + 9) / 2
    assert discriminator_loss(fake, real).item() == pytest.approx(d_want)
    # G: Σ_k mean (1 - fake_k)²: (.25 + 4)/2 + 0
    assert generator_adversarial_loss(fake).item() == pytest.approx(4.25 / 2)
    assert generator_adversarial_loss(fake, kind="hinge").item() == pytest.approx(0.25 - 1.0)
    # FM: Σ_k Σ_j<last mean |fake - real|: (1 + 0)/2 + (1 + 1 + 2)/3 + 4/1; the logits never count
    assert feature_matching_loss(fake, real).item() == pytest.approx(0.5 + 4 / 3 + 4.0)


def test_feature_matching_detaches_the_real_maps_and_checks_structure():
    fake, real = _two_discriminators()
    fake = [[m.clone().requires_grad_() for m in maps] for maps in fake]
    real = [[m.clone().requires_grad_() for m in maps] for maps in real]
    feature_matching_loss(fake, real).backward()
    assert all(m.grad is None for maps in real for m in maps)
    assert fake[0][0].grad.tolist() == [0.5, 0.0]  # sign(1 - 0)/2, sign(0)=0
    assert fake[0][-1].grad is None  # logits are not matched
    with pytest.raises(ValueError, match="discriminator outputs"):
        discriminator_loss(fake, real[:1])
    with pytest.raises(ValueError, match="feature maps"):
        feature_matching_loss([fake[0][:2]], [real[0]])
    with pytest.raises(ValueError, match="discriminator loss must be one of"):
        discriminator_loss(fake, real, kind="lsgan")


def test_feature_map_terms_of_several_discriminators():
    torch.manual_seed(0)
    convs = [torch.nn.Conv1d(1, 2, 3), torch.nn.Conv1d(1, 2, 5)]

    def disc(x):  # two discriminators, each (feature map, logits)
        return [[c(x), c(x).mean(1, keepdim=True)] for c in convs]

    real, fake = torch.randn(2, 1, 16), torch.randn(2, 1, 16, requires_grad=True)
    d_real, d_fake = split_feature_maps(disc(torch.cat([real, fake.detach()])), 2)
    assert all(torch.allclose(a, b) for d, e in zip(d_real, disc(real), strict=True) for a, b in zip(d, e, strict=True))
    adv = AdversarialLoss(AdversarialConfig(disc_weight=0.5, adaptive=False, disc_loss="least_squares"))
    d = adv.feature_map_discriminator_terms(d_fake, d_real)
    assert d["disc_loss"].item() == pytest.approx(discriminator_loss(d_fake, d_real).item())
    assert d["disc_logits_real"].item() == pytest.approx(sum(m[-1].mean().item() for m in d_real) / 2, abs=1e-6)
    g_fake, g_real = generator_side_maps(disc, fake, real)
    assert g_fake[0][0].requires_grad and not g_real[0][0].requires_grad
    g = adv.feature_map_generator_terms(torch.tensor(0.0), g_fake, g_real, convs[0].weight, 2.0)
    want = 0.5 * generator_adversarial_loss(g_fake, adv.cfg.gen_loss) + 2.0 * feature_matching_loss(g_fake, g_real)
    assert g["gan_loss"].item() == pytest.approx(want.item()) and set(g) == {
        "gan_loss",
        "gan_g",
        "gan_fm",
        "gan_weight",
    }
