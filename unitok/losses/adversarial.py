"""Adversarial losses for GAN fine-tuning of a decoder (taming-transformers VQGAN conventions), any modality.

Discriminator loss on logits of real x and fake x̂ (reconstructions):
    hinge   ½·(mean relu(1 - D(x)) + mean relu(1 + D(x̂)))
    vanilla ½·(mean softplus(-D(x)) + mean softplus(D(x̂)))
    least_squares  mean (1 - D(x))² + mean D(x̂)²   (LSGAN as HiFi-GAN / DAC, no ½)
Generator loss: hinge ``-mean D(x̂)`` (taming's default), non-saturating ``mean softplus(-D(x̂))`` or least-squares
``mean (1 - D(x̂))²``.

Several discriminators (audio GANs: MPD + MRD, each returning a list of feature maps whose last entry is the
logits) are combined as DAC's ``GANLoss`` does: :func:`discriminator_loss` and :func:`generator_adversarial_loss`
**sum** the per-discriminator terms (each a mean over its logits); :func:`feature_matching_loss` **sums** the
element-mean L1 distances over every discriminator and every feature map but the logits, the real maps detached.
:func:`split_feature_maps` splits the maps of one call on ``cat([real, fake])``; :func:`generator_side_maps` runs the
discriminator for the generator's terms; :meth:`AdversarialLoss.feature_map_generator_terms` and
:meth:`AdversarialLoss.feature_map_discriminator_terms` are the per-logits terms for several discriminators.

Adaptive weight (taming's ``calculate_adaptive_weight``): with W the generator's last layer,
``λ = ||∇_W L_rec|| / (||∇_W L_G|| + 1e-4)``, clamped to [0, 1e4] and detached; the generator term is
``disc_weight · λ · L_G``. Under data parallelism both gradients are averaged over ranks first (the gradients of
the global-batch losses), so λ does not depend on how the batch is split over ranks; with gradient accumulation
it is computed per micro-batch. Before ``disc_start`` the generator term is 0 and the discriminator is not trained.

Shape legend:
    logits: any shape (a PatchGAN gives a (B, 1, h, w) map of per-patch logits); W: the last layer's weight.
    feature maps: ``d[k][j]`` is layer j of discriminator k, any shape; ``d[k][-1]`` its logits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from unitok.engine.distributed import all_reduce_mean


@dataclass
class AdversarialConfig:
    """Attributes:
    disc_start: optimiser step from which the generator term counts and the discriminator trains.
    disc_weight: factor on the adaptive weight (taming's ``disc_weight``).
    gen_loss: 'hinge' (``-mean D(x̂)``, taming), 'non_saturating' or 'least_squares'.
    disc_loss: 'hinge' (taming), 'vanilla' or 'least_squares'.
    adaptive: use the adaptive weight λ (False: λ = 1).
    max_adaptive_weight: upper clamp of λ (taming: 1e4).
    """

    disc_start: int = 0
    disc_weight: float = 0.5
    gen_loss: str = "hinge"
    disc_loss: str = "hinge"
    adaptive: bool = True
    max_adaptive_weight: float = 1e4


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """½·(mean relu(1 - real) + mean relu(1 + fake))."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def vanilla_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """½·(mean softplus(-real) + mean softplus(fake)): binary cross-entropy on logits."""
    return 0.5 * (F.softplus(-logits_real).mean() + F.softplus(logits_fake).mean())


def hinge_g_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """-mean fake (the generator side of the hinge GAN, as taming)."""
    return -logits_fake.mean()


def non_saturating_g_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """mean softplus(-fake) = -mean log σ(fake)."""
    return F.softplus(-logits_fake).mean()


def least_squares_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """mean (1 - real)² + mean fake² (LSGAN with targets 1 / 0, no ½: HiFi-GAN and DAC)."""
    return (1.0 - logits_real).square().mean() + logits_fake.square().mean()


def least_squares_g_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """mean (1 - fake)²."""
    return (1.0 - logits_fake).square().mean()


D_LOSSES = {"hinge": hinge_d_loss, "vanilla": vanilla_d_loss, "least_squares": least_squares_d_loss}
G_LOSSES = {"hinge": hinge_g_loss, "non_saturating": non_saturating_g_loss, "least_squares": least_squares_g_loss}

FeatureMaps = Sequence[Sequence[torch.Tensor]]


def _check_pair(d_fake: FeatureMaps, d_real: FeatureMaps) -> None:
    if len(d_fake) != len(d_real):
        raise ValueError(f"{len(d_fake)} discriminator outputs for the fake input but {len(d_real)} for the real one")
    for k, (fake, real) in enumerate(zip(d_fake, d_real, strict=True)):
        if len(fake) != len(real) or not len(fake):
            raise ValueError(f"discriminator {k} returned {len(fake)} fake and {len(real)} real feature maps")


def _lookup(table: dict, kind: str, what: str) -> Callable:
    if kind not in table:
        raise ValueError(f"{what} must be one of {sorted(table)}, got {kind!r}")
    return table[kind]


def discriminator_loss(d_fake: FeatureMaps, d_real: FeatureMaps, kind: str = "least_squares") -> torch.Tensor:
    """Σ_k D-loss(real logits_k, fake logits_k) over the discriminators (DAC ``GANLoss.discriminator_loss``).

    Args:
        d_fake: per-discriminator feature-map lists of the fake input (detached from the generator by the caller).
        d_real: the same for the real input.
        kind: a key of ``D_LOSSES`` ('least_squares' for DAC).
    """
    _check_pair(d_fake, d_real)
    fn = _lookup(D_LOSSES, kind, "discriminator loss")
    return sum(fn(real[-1].float(), fake[-1].float()) for fake, real in zip(d_fake, d_real, strict=True))


def generator_adversarial_loss(d_fake: FeatureMaps, kind: str = "least_squares") -> torch.Tensor:
    """Σ_k G-loss(fake logits_k) over the discriminators (the ``loss_g`` of DAC ``GANLoss.generator_loss``)."""
    if not len(d_fake) or not all(len(maps) for maps in d_fake):
        raise ValueError("generator_adversarial_loss needs at least one discriminator output with logits")
    fn = _lookup(G_LOSSES, kind, "generator loss")
    return sum(fn(fake[-1].float()) for fake in d_fake)


def feature_matching_loss(d_fake: FeatureMaps, d_real: FeatureMaps) -> torch.Tensor:
    """Σ_k Σ_j mean |fake_kj - real_kj| over every feature map but the logits, real maps detached (DAC)."""
    _check_pair(d_fake, d_real)
    terms = [
        F.l1_loss(fake[j].float(), real[j].detach().float())
        for fake, real in zip(d_fake, d_real, strict=True)
        for j in range(len(fake) - 1)
    ]
    if not terms:
        raise ValueError("feature_matching_loss needs discriminators with feature maps besides the logits")
    return sum(terms)


def split_feature_maps(maps: FeatureMaps, batch: int) -> tuple[FeatureMaps, FeatureMaps]:
    """Feature maps of a discriminator call on ``cat([first, second])`` -> (maps of first, maps of second)."""
    return [[m[:batch] for m in d] for d in maps], [[m[batch:] for m in d] for d in maps]


def generator_side_maps(
    discriminator: Callable[[torch.Tensor], FeatureMaps], fake: torch.Tensor, real: torch.Tensor
) -> tuple[FeatureMaps, FeatureMaps]:
    """(maps of ``fake``, maps of ``real``) for the generator's terms: the real call without autograd (feature
    matching detaches the real maps)."""
    d_fake = discriminator(fake)
    with torch.no_grad():
        d_real = discriminator(real)
    return d_fake, d_real


def adaptive_weight(
    rec_loss: torch.Tensor,
    gen_loss: torch.Tensor,
    last_layer: torch.Tensor,
    max_weight: float = 1e4,
    eps: float = 1e-4,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Detached ``clamp(||∇_W rec_loss|| / (||∇_W gen_loss|| + eps), 0, max_weight)``; the graph is kept.

    Args:
        last_layer: W, a tensor both losses depend on (the weight the last forward used).
        reduce: applied to the stacked gradients before the norms (e.g. the mean over data-parallel ranks).
    """
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    gen_grad = torch.autograd.grad(gen_loss, last_layer, retain_graph=True)[0]
    if reduce is not None:
        rec_grad, gen_grad = reduce(torch.stack([rec_grad.float(), gen_grad.float()])).unbind(0)
    weight = rec_grad.float().norm() / (gen_grad.float().norm() + eps)
    return weight.clamp(0.0, max_weight).detach()


class AdversarialLoss:
    """Generator and discriminator terms with the adaptive weight and the start step (see module docstring)."""

    def __init__(self, cfg: AdversarialConfig):
        _lookup(G_LOSSES, cfg.gen_loss, "adversarial gen_loss")
        _lookup(D_LOSSES, cfg.disc_loss, "adversarial disc_loss")
        if cfg.disc_start < 0 or cfg.disc_weight < 0:
            raise ValueError("adversarial disc_start and disc_weight must be >= 0")
        self.cfg = cfg

    def active(self, step: int) -> bool:
        """Whether the generator term counts and the discriminator trains at ``step``."""
        return self.cfg.disc_weight > 0 and step >= self.cfg.disc_start

    def generator_terms(
        self, rec_loss: torch.Tensor, logits_fake: torch.Tensor, last_layer: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """``gan_loss`` = disc_weight·λ·L_G (to add to the reconstruction loss), plus ``gan_g`` = L_G and
        ``gan_weight`` = disc_weight·λ (detached, for reports)."""
        g = G_LOSSES[self.cfg.gen_loss](logits_fake.float())
        weight = self._weight(rec_loss, g, last_layer)
        return {"gan_loss": weight * g, "gan_g": g.detach(), "gan_weight": weight}

    def feature_map_generator_terms(
        self,
        rec_loss: torch.Tensor,
        d_fake: FeatureMaps,
        d_real: FeatureMaps,
        last_layer: torch.Tensor,
        feature_matching_weight: float,
    ) -> dict[str, torch.Tensor]:
        """Several discriminators: ``gan_loss`` = disc_weight·λ·L_G + feature_matching_weight·L_fm, plus ``gan_g``,
        ``gan_fm`` and ``gan_weight`` (detached, for reports)."""
        g = generator_adversarial_loss(d_fake, self.cfg.gen_loss)
        fm = feature_matching_loss(d_fake, d_real)
        weight = self._weight(rec_loss, g, last_layer)
        return {"gan_loss": weight * g + feature_matching_weight * fm, "gan_g": g.detach(), "gan_fm": fm.detach(),
                "gan_weight": weight}  # fmt: skip

    def _weight(self, rec_loss: torch.Tensor, g: torch.Tensor, last_layer: torch.Tensor) -> torch.Tensor:
        """disc_weight·λ (λ = 1 without the adaptive weight)."""
        if self.cfg.adaptive:
            lam = adaptive_weight(rec_loss, g, last_layer, self.cfg.max_adaptive_weight, reduce=all_reduce_mean)
        else:
            lam = torch.ones((), device=g.device)
        return self.cfg.disc_weight * lam

    def discriminator_terms(self, logits_real: torch.Tensor, logits_fake: torch.Tensor) -> dict[str, torch.Tensor]:
        """``disc_loss`` plus the mean logits on real and fake inputs (detached, for reports)."""
        real, fake = logits_real.float(), logits_fake.float()
        return {"disc_loss": D_LOSSES[self.cfg.disc_loss](real, fake),
                "disc_logits_real": real.detach().mean(), "disc_logits_fake": fake.detach().mean()}  # fmt: skip

    def feature_map_discriminator_terms(self, d_fake: FeatureMaps, d_real: FeatureMaps) -> dict[str, torch.Tensor]:
        """Several discriminators: ``disc_loss`` (:func:`discriminator_loss`) plus the mean over discriminators of
        their mean logits on real and fake inputs (detached, for reports)."""
        loss = discriminator_loss(d_fake, d_real, self.cfg.disc_loss)
        real = torch.stack([r[-1].detach().float().mean() for r in d_real]).mean()
        fake = torch.stack([f[-1].detach().float().mean() for f in d_fake]).mean()
        return {"disc_loss": loss, "disc_logits_real": real, "disc_logits_fake": fake}
