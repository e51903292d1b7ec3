"""Adversarial losses for GAN fine-tuning of a decoder (taming-transformers VQGAN conventions), any modality.

Discriminator loss on logits of real x and fake x̂ (reconstructions):
    hinge   ½·(mean relu(1 - D(x)) + mean relu(1 + D(x̂)))
    vanilla ½·(mean softplus(-D(x)) + mean softplus(D(x̂)))
Generator loss: hinge ``-mean D(x̂)`` (taming's default) or non-saturating ``mean softplus(-D(x̂))``.

Adaptive weight (taming's ``calculate_adaptive_weight``): with W the generator's last layer,
``λ = ||∇_W L_rec|| / (||∇_W L_G|| + 1e-4)``, clamped to [0, 1e4] and detached; the generator term is
``disc_weight · λ · L_G``. Under data parallelism both gradients are averaged over ranks first (the gradients of
the global-batch losses), so λ does not depend on how the batch is split over ranks; with gradient accumulation
it is computed per micro-batch. Before ``disc_start`` the generator term is 0 and the discriminator is not trained.

Shape legend:
    logits: any shape (a PatchGAN gives a (B, 1, h, w) map of per-patch logits); W: the last layer's weight.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from unitok.engine.distributed import all_reduce_mean


@dataclass
class AdversarialConfig:
    """Attributes:
    disc_start: optimiser step from which the generator term counts and the discriminator trains.
    disc_weight: factor on the adaptive weight (taming's ``disc_weight``).
    gen_loss: 'hinge' (``-mean D(x̂)``, taming) or 'non_saturating'.
    disc_loss: 'hinge' (taming) or 'vanilla'.
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


D_LOSSES = {"hinge": hinge_d_loss, "vanilla": vanilla_d_loss}
G_LOSSES = {"hinge": hinge_g_loss, "non_saturating": non_saturating_g_loss}


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
        if cfg.gen_loss not in G_LOSSES:
            raise ValueError(f"adversarial gen_loss must be one of {sorted(G_LOSSES)}, got {cfg.gen_loss!r}")
        if cfg.disc_loss not in D_LOSSES:
            raise ValueError(f"adversarial disc_loss must be one of {sorted(D_LOSSES)}, got {cfg.disc_loss!r}")
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
        if self.cfg.adaptive:
            lam = adaptive_weight(rec_loss, g, last_layer, self.cfg.max_adaptive_weight, reduce=all_reduce_mean)
        else:
            lam = torch.ones((), device=g.device)
        weight = self.cfg.disc_weight * lam
        return {"gan_loss": weight * g, "gan_g": g.detach(), "gan_weight": weight}

    def discriminator_terms(self, logits_real: torch.Tensor, logits_fake: torch.Tensor) -> dict[str, torch.Tensor]:
        """``disc_loss`` plus the mean logits on real and fake inputs (detached, for reports)."""
        real, fake = logits_real.float(), logits_fake.float()
        return {"disc_loss": D_LOSSES[self.cfg.disc_loss](real, fake),
                "disc_logits_real": real.detach().mean(), "disc_logits_fake": fake.detach().mean()}  # fmt: skip
