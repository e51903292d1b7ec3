"""Semantic-VAE (arXiv 2509.22167) and the vanilla acoustic VAE, numerically equal to the official code.

``SemanticVAE`` = DAC conv encoder (hop 400 at 16 kHz) -> causal attention projection -> Gaussian head
(``fc_mu``, ``fc_var``, log-variance clamped to [-12, 12]) -> BigVGAN-v2 decoder, plus the SSL projector that
maps WavLM features into the latent space for the alignment loss (training only). The vanilla acoustic VAE
is the same model with ``DAC.distill = False``. Checkpoints: :meth:`SemanticVAE.from_pretrained` reads the
released folders (``metainfo.json`` + ``dac/*.pth``) and ``config.json`` + ``model.safetensors`` directories;
state-dict keys are the official ones.

Shape legend:
    B: batch, T: samples, N: latent frames (ceil(T / hop)), C: latent width (``vae_dim``),
    D: encoder width, S: SSL frames, E: SSL width (``distill_hidden_dim``)
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from unitok.losses.alignment import masked_negative_cosine
from unitok.losses.regularizers import gaussian_kl
from unitok.modalities.speech.bigvgan import BigVGAN
from unitok.modalities.speech.semantic_vae_config import SEMANTIC_VAE_PRESETS, SemanticVAEConfig
from unitok.modalities.speech.semantic_vae_modules import AttnProjection, DACEncoder, SSLProjector, valid_frames

#: log-variance clamp of the official bottleneck
LOGVAR_RANGE = (-12.0, 12.0)


class SemanticVAE(nn.Module):
    """The official ``DAC`` generator of Semantic-VAE with a unitok API.

    Args:
        config: a :class:`SemanticVAEConfig`, or a dict in the ``metainfo.json`` layout (None: the released
            16 kHz, 64-d Semantic-VAE).
        with_projector: build the SSL projector (``projectors.*``); inference does not need it.
    """

    def __init__(self, config: SemanticVAEConfig | dict[str, Any] | None = None, with_projector: bool = True):
        super().__init__()
        if not isinstance(config, SemanticVAEConfig):
            config = SemanticVAEConfig.from_dict(config)
        self.config = config
        dac, c = config.dac, config.dac.vae_dim
        self.encoder = DACEncoder(dac.encoder_dim, dac.encoder_rates, dac.encoder_out_dim)
        self.pre_block = AttnProjection(dac.encoder_out_dim, c, num_heads=8)
        self.fc_mu = nn.Linear(c, c)
        self.fc_var = nn.Linear(c, c)
        self.decoder = BigVGAN(config.decoder)
        self.projectors = (
            SSLProjector(len(dac.sampling_ratios), dac.distill_hidden_dim, 2 * c, c) if with_projector else None
        )

    @property
    def hop_length(self) -> int:
        """Samples per latent frame (400 for the released 16 kHz models: 40 latents per second)."""
        return self.config.dac.hop_length

    @property
    def sample_rate(self) -> int:
        return self.config.dac.sample_rate

    @property
    def latent_dim(self) -> int:
        """Latent channels C."""
        return self.config.dac.vae_dim

    # ------------------------------------------------------------------------------------------ encode / decode
    def pad(self, wav: torch.Tensor) -> torch.Tensor:
        """Right-pad (B, 1, T) audio with zeros to a multiple of the hop length."""
        if wav.dim() != 3 or wav.shape[1] != 1:
            raise ValueError(f"expected mono audio of shape (B, 1, T), got {tuple(wav.shape)}")
        return F.pad(wav, (0, -wav.shape[-1] % self.hop_length))

    def encode(
        self, wav: torch.Tensor, sample: bool = True, eps: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Encode audio to the Gaussian latent.

        Args:
            wav: (B, 1, T) audio at ``sample_rate``; zero-padded on the right to a multiple of the hop.
            sample: return ``z = mu + exp(logvar / 2) * eps`` (the official latent); False: ``z = mu``.
            eps: (B, N, C) noise for the sample (default: standard normal).

        Returns:
            ``mu``, ``logvar`` (clamped to [-12, 12]) and ``z``, each (B, N, C).
        """
        h = self.pre_block(self.encoder(self.pad(wav)).transpose(1, 2))
        mu = self.fc_mu(h)
        logvar = self.fc_var(h).clamp(*LOGVAR_RANGE)
        if not sample:
            return {"mu": mu, "logvar": logvar, "z": mu}
        if eps is None:
            eps = torch.randn_like(mu)
        elif eps.shape != mu.shape:
            raise ValueError(f"eps has shape {tuple(eps.shape)}, expected the latent shape {tuple(mu.shape)}")
        return {"mu": mu, "logvar": logvar, "z": eps * torch.exp(0.5 * logvar) + mu}

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B, N, C) latents -> (B, 1, N·hop) audio in [-1, 1] (not trimmed)."""
        if z.dim() != 3 or z.shape[-1] != self.latent_dim:
            raise ValueError(f"expected latents of shape (B, N, {self.latent_dim}), got {tuple(z.shape)}")
        return self.decoder(z.transpose(1, 2))

    # ------------------------------------------------------------------------------------------ losses
    def project_ssl(
        self, ssl_features: torch.Tensor, ssl_lengths: torch.Tensor | None, num_frames: int
    ) -> torch.Tensor:
        """Map (B, S, E) SSL features to (B, num_frames, C); frames at indices >= ``ssl_lengths`` are zero.

        As upstream, ``ssl_lengths`` (default S) are compared with *latent* frame indices directly.
        """
        if self.projectors is None:
            raise RuntimeError("this SemanticVAE was built without the SSL projector (with_projector=False)")
        if ssl_features.dim() != 3 or ssl_features.shape[-1] != self.config.dac.distill_hidden_dim:
            raise ValueError(
                f"expected SSL features of shape (B, S, {self.config.dac.distill_hidden_dim}) "
                f"(DAC.distill_hidden_dim), got {tuple(ssl_features.shape)}"
            )
        lengths = self._ssl_lengths(ssl_features, ssl_lengths)
        return self.projectors(ssl_features, lengths, num_frames)

    @staticmethod
    def _ssl_lengths(ssl_features: torch.Tensor, ssl_lengths: torch.Tensor | None) -> torch.Tensor:
        b, s = ssl_features.shape[:2]
        if ssl_lengths is None:
            return torch.full((b,), s, dtype=torch.long, device=ssl_features.device)
        lengths = torch.as_tensor(ssl_lengths, device=ssl_features.device)
        if lengths.shape != (b,) or bool((lengths < 1).any()) or bool((lengths > s).any()):
            raise ValueError(f"ssl_lengths must be (B={b},) integers in [1, {s}], got {lengths.tolist()}")
        return lengths

    def alignment_loss(
        self, z: torch.Tensor, ssl_features: torch.Tensor, ssl_lengths: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Semantic alignment: -cos(z, projected SSL) averaged over valid frames per item, then over the batch.

        Args:
            z: (B, N, C) sampled latents (the official loss aligns the sample, not ``mu``).
            ssl_features: (B, S, E) SSL features (WavLM-large last layer at 50 Hz upstream).
            ssl_lengths: (B,) valid SSL frames (default S); latent frames at indices >= length do not count.
        """
        lengths = self._ssl_lengths(ssl_features, ssl_lengths)
        target = self.project_ssl(ssl_features, lengths, z.shape[1])
        return masked_negative_cosine(z, target, valid_frames(lengths, z.shape[1]))

    # ------------------------------------------------------------------------------------------ forward
    def forward(
        self,
        wav: torch.Tensor,
        ssl_features: torch.Tensor | None = None,
        ssl_lengths: torch.Tensor | None = None,
        eps: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Encode, sample, decode (the official training forward).

        Args:
            wav: (B, 1, T) audio.
            ssl_features: (B, S, E) SSL features; required in training mode when ``DAC.distill`` is set.
            ssl_lengths: (B,) valid SSL frames (default S).
            eps: (B, N, C) reparameterisation noise (default: standard normal).

        Returns:
            ``audio`` (B, 1, T) trimmed to the input length, ``mu``, ``logvar``, ``z`` (B, N, C), ``kl_loss``,
            and ``align_loss`` in training mode with ``DAC.distill``.
        """
        enc = self.encode(wav, sample=True, eps=eps)
        out = {"audio": self.decode(enc["z"])[..., : wav.shape[-1]], **enc}
        out["kl_loss"] = gaussian_kl(enc["mu"], enc["logvar"])  # upstream's KL, + 1e-6 on the variance
        if self.training and self.config.dac.distill:
            if ssl_features is None:
                raise ValueError(
                    "training a distilled SemanticVAE (DAC.distill=True) needs ssl_features for the alignment loss; "
                    "pass them, or use DAC.distill=False for the vanilla acoustic VAE"
                )
            out["align_loss"] = self.alignment_loss(enc["z"], ssl_features, ssl_lengths)
        return out

    # ------------------------------------------------------------------------------------------ checkpoints
    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        use_ema: bool | None = None,
        with_projector: bool | None = None,
        trust_pickle: bool = False,
        **overrides: Any,
    ) -> SemanticVAE:
        """Load a released folder or a ``save_pretrained`` directory strictly (see :mod:`.semantic_vae_io`).

        Args:
            path: a released ``<name>/`` folder (``metainfo.json`` + ``dac/ema_state_dict.pth`` or
                ``dac/weights.pth``) or a directory with ``config.json`` + ``model.safetensors``.
            use_ema: released folders: True reads the EMA weights, False the online ones, None the EMA
                weights when present.
            with_projector: True requires the SSL projector in the checkpoint, False drops it, None follows
                the checkpoint.
            trust_pickle: allow ``.pth`` files holding Python objects beyond tensors (full unpickling).
            overrides: nested config overrides, e.g. ``dac={"distill": False}``.

        Returns:
            The model in eval mode.
        """
        from unitok.modalities.speech.semantic_vae_io import load_semantic_vae

        return load_semantic_vae(cls, path, use_ema, with_projector, trust_pickle, overrides)

    def save_pretrained(self, path: str | os.PathLike, state_dict: dict[str, torch.Tensor] | None = None) -> str:
        """Write ``config.json`` (metainfo layout + ``model_type``) and ``model.safetensors`` (official keys).

        ``state_dict``: the tensors to write (e.g. a training run's EMA weights); default ``self.state_dict()``.
        """
        from unitok.models.pretrained import write_pretrained

        weights = self.state_dict() if state_dict is None else state_dict
        return str(write_pretrained(path, self.config.to_dict(), weights))


def create_semantic_vae(name: str, with_projector: bool = True, **overrides: Any) -> SemanticVAE:
    """A randomly initialised model from a preset name (see ``SEMANTIC_VAE_PRESETS``).

    Args:
        name: ``semantic_vae_16k_d64``, ``acoustic_vae_16k_d16``, ``acoustic_vae_16k_d64`` or ``semantic_vae_tiny``.
        with_projector: build the SSL projector.
        overrides: nested config overrides, e.g. ``dac={"vae_dim": 32}, decoder={"num_mels": 32}``.
    """
    if name not in SEMANTIC_VAE_PRESETS:
        raise KeyError(f"unknown Semantic-VAE preset {name!r}; available: {sorted(SEMANTIC_VAE_PRESETS)}")
    model = SemanticVAE(SemanticVAEConfig.from_dict(SEMANTIC_VAE_PRESETS[name], **overrides), with_projector)
    model.preset = name
    return model
