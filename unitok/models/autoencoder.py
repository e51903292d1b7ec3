"""TransformerAutoencoder: in-proj -> encoder stack -> bottleneck -> decoder stack -> out-proj, on any Tokens.

The autoencoder never knows the modality: an adapter turns signals into :class:`~unitok.adapter.Tokens` of
``patch_dim`` values and back. A conv patch embedding with kernel = stride = p is the in-projection of
flattened (C, p, p) patches; a 1x1 conv + PixelShuffle output is the out-projection + unpatchify.

Bottleneck: ``linear`` (one projection D -> L, the VTP one) or ``gaussian`` (a VAE posterior: mean and log-variance
heads D -> L, the log-variance clamped to [``logvar_min``, ``logvar_max``] as Semantic-VAE's [-12, 12]; latents
are sampled ``mu + exp(logvar / 2)·eps`` in training and are the mean otherwise).

Shape legend:
    B: batch, N: tokens, P: patch_dim, D: encoder width, L: latent dim, Dd: decoder width
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from unitok.adapter import Tokens
from unitok.models.transformer import StackOutput, TransformerConfig, TransformerStack


def _decoder_default() -> TransformerConfig:
    return TransformerConfig(norm="layernorm", class_token=False, mask_token=False)


@dataclass
class AutoencoderConfig:
    """Attributes:
    patch_dim: values per input token P (e.g. 3 * 16 * 16 for RGB patches of 16).
    latent_dim: bottleneck width L; equal to the encoder width means no bottleneck layer.
    encoder: the encoder stack.
    decoder: the decoder stack (no prefix tokens); None builds an encoder-only model.
    bottleneck_bias: bias of the bottleneck projection(s) (VTP: none).
    bottleneck: 'linear' (latents = a projection) or 'gaussian' (mean and log-variance heads, sampled latents).
    logvar_min, logvar_max: clamp of the Gaussian log-variance (Semantic-VAE: [-12, 12]).
    """

    patch_dim: int = 768
    latent_dim: int = 64
    encoder: TransformerConfig = field(default_factory=TransformerConfig)
    decoder: TransformerConfig | None = field(default_factory=_decoder_default)
    bottleneck_bias: bool = False
    bottleneck: str = "linear"
    logvar_min: float = -12.0
    logvar_max: float = 12.0

    def __post_init__(self) -> None:
        if self.bottleneck not in ("linear", "gaussian"):
            raise ValueError(f"bottleneck must be 'linear' or 'gaussian', got {self.bottleneck!r}")
        if self.logvar_min >= self.logvar_max:
            raise ValueError(f"need logvar_min < logvar_max, got [{self.logvar_min}, {self.logvar_max}]")
        if isinstance(self.encoder, dict):
            self.encoder = TransformerConfig(**self.encoder)
        if isinstance(self.decoder, dict):
            self.decoder = TransformerConfig(**self.decoder)
        if self.decoder is None:
            return
        if self.decoder.num_prefix_tokens:
            raise ValueError("the decoder stack takes no prefix tokens (set class_token=False, num_registers=0)")
        if self.encoder.coord_ndim != self.decoder.coord_ndim:
            raise ValueError("encoder and decoder must use the same coordinate dimensionality")


@dataclass
class EncoderOutput:
    """Attributes:
    cls: (B, D) final-normed CLS token, or None without one.
    prefix: (B, P, D) final-normed prefix tokens.
    tokens: (B, N, D) final-normed tokens (before the bottleneck).
    prenorm: (B, P + N, D).
    """

    cls: torch.Tensor | None
    prefix: torch.Tensor
    tokens: torch.Tensor
    prenorm: torch.Tensor


class TransformerAutoencoder(nn.Module):
    """A modality-agnostic Transformer autoencoder over :class:`Tokens`."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        self.cfg = cfg
        enc, dec = cfg.encoder, cfg.decoder
        self.patch_embed = nn.Linear(cfg.patch_dim, enc.dim)
        self.encoder = TransformerStack(enc)
        gaussian = cfg.bottleneck == "gaussian"
        self.bottleneck = (
            nn.Linear(enc.dim, cfg.latent_dim, bias=cfg.bottleneck_bias)
            if cfg.latent_dim != enc.dim or gaussian
            else None
        )  # the mean head of a Gaussian bottleneck
        self.bottleneck_logvar = nn.Linear(enc.dim, cfg.latent_dim, bias=cfg.bottleneck_bias) if gaussian else None
        self.decoder_embed = nn.Linear(cfg.latent_dim, dec.dim) if dec is not None else None
        self.decoder = TransformerStack(dec) if dec is not None else None
        self.decoder_head = nn.Linear(dec.dim, cfg.patch_dim) if dec is not None else None
        self.init_weights()

    def init_weights(self) -> None:
        """Projections trunc_normal(0.02); the patch embedding as a conv (uniform ±1/sqrt(P)), as DINOv3."""
        bound = self.cfg.patch_dim**-0.5
        nn.init.uniform_(self.patch_embed.weight, -bound, bound)
        nn.init.uniform_(self.patch_embed.bias, -bound, bound)
        for lin in (self.bottleneck, self.bottleneck_logvar, self.decoder_embed, self.decoder_head):
            if lin is not None:
                nn.init.trunc_normal_(lin.weight, std=0.02)
                if lin.bias is not None:
                    nn.init.zeros_(lin.bias)

    @property
    def latent_dim(self) -> int:
        return self.cfg.latent_dim

    @property
    def is_gaussian(self) -> bool:
        """Whether the bottleneck is a Gaussian posterior (mean and log-variance heads)."""
        return self.bottleneck_logvar is not None

    # ------------------------------------------------------------------------------------------ encoder
    def embed(self, tokens: Tokens, pre_embedded: bool = False) -> torch.Tensor:
        """(B, N, P) token values -> (B, N, D) through the in-projection.

        ``pre_embedded=True`` means ``tokens.x`` already went through this projection (an image adapter can run it
        as a strided conv on the pixels: the same map, in the official summation order, without copying patches).
        """
        if tokens.coord_ndim != self.cfg.encoder.coord_ndim:
            raise ValueError(
                f"tokens have {tokens.coord_ndim}-d coordinates but the model uses {self.cfg.encoder.coord_ndim}-d"
            )
        width = self.cfg.encoder.dim if pre_embedded else self.cfg.patch_dim
        if tokens.x.shape[-1] != width:
            what = "embedded tokens" if pre_embedded else "token values (patch_dim)"
            raise ValueError(
                f"tokens carry {tokens.x.shape[-1]} values each but the autoencoder expects {width} {what}"
            )
        return tokens.x if pre_embedded else self.patch_embed(tokens.x)

    def encode_features(
        self, tokens: Tokens, token_mask: torch.Tensor | None = None, pre_embedded: bool = False
    ) -> EncoderOutput:
        """Tokens -> final-normed encoder features (no bottleneck); ``pre_embedded`` as in :meth:`embed`."""
        out: StackOutput = self.encoder(self.embed(tokens, pre_embedded), tokens.coords, tokens.mask, token_mask)
        cls = out.prefix[:, 0] if self.encoder.cfg.class_token else None
        return EncoderOutput(cls=cls, prefix=out.prefix, tokens=out.tokens, prenorm=out.prenorm)

    def apply_bottleneck(self, features: torch.Tensor) -> torch.Tensor:
        """(..., D) -> (..., L): the projection, or the posterior mean of a Gaussian bottleneck."""
        return self.bottleneck(features) if self.bottleneck is not None else features

    def posterior(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(..., D) -> (mean (..., L), clamped log-variance (..., L) or None for a linear bottleneck)."""
        mean = self.apply_bottleneck(features)
        if self.bottleneck_logvar is None:
            return mean, None
        return mean, self.bottleneck_logvar(features).clamp(self.cfg.logvar_min, self.cfg.logvar_max)

    @staticmethod
    def sample_latents(
        mean: torch.Tensor, logvar: torch.Tensor | None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``mean + exp(logvar / 2)·eps`` with eps ~ N(0, I) (the mean itself when ``logvar`` is None)."""
        if logvar is None:
            return mean
        eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + torch.exp(0.5 * logvar) * eps

    def encode(self, tokens: Tokens, sample: bool = False) -> Tokens:
        """Tokens -> latent Tokens: x is (B, N, L), the same coordinates, mask and meta.

        A Gaussian bottleneck gives its mean, or a sample with ``sample=True``.
        """
        mean, logvar = self.posterior(self.encode_features(tokens).tokens)
        return tokens.with_x(self.sample_latents(mean, logvar) if sample else mean)

    def forward_intermediates(
        self, tokens: Tokens, indices=None, norm: bool = False, stop_early: bool = True, pre_embedded: bool = False
    ):
        """Encoder block outputs; see :meth:`TransformerStack.forward_intermediates`."""
        return self.encoder.forward_intermediates(
            self.embed(tokens, pre_embedded),
            tokens.coords,
            tokens.mask,
            indices=indices,
            norm=norm,
            stop_early=stop_early,
        )

    # ------------------------------------------------------------------------------------------ decoder
    def decode(self, latents: Tokens) -> Tokens:
        """Latent Tokens (x (B, N, L)) -> Tokens of patch values (x (B, N, P))."""
        if self.decoder is None:
            raise RuntimeError("this autoencoder was built without a decoder (decoder=None)")
        if latents.x.shape[-1] != self.cfg.latent_dim:
            raise ValueError(f"latents have {latents.x.shape[-1]} channels, the decoder expects {self.cfg.latent_dim}")
        out = self.decoder(self.decoder_embed(latents.x), latents.coords, latents.mask)
        return latents.with_x(self.decoder_head(out.tokens))

    def forward(self, tokens: Tokens, sample: bool | None = None) -> dict[str, Any]:
        """Tokens -> dict(latents (Tokens), recon (Tokens), features (EncoderOutput), aux (dict)).

        A Gaussian bottleneck decodes a sample (``sample``; default: in training mode) and puts ``mean`` and
        ``logvar`` (B, N, L) in ``aux``.
        """
        features = self.encode_features(tokens)
        mean, logvar = self.posterior(features.tokens)
        aux = {} if logvar is None else {"mean": mean, "logvar": logvar}
        sample = self.training if sample is None else sample
        latents = tokens.with_x(self.sample_latents(mean, logvar) if sample else mean)
        recon = self.decode(latents) if self.decoder is not None else None
        return {"latents": latents, "recon": recon, "features": features, "aux": aux}

    # ------------------------------------------------------------------------------------------ checkpoints
    model_type = "unitok_autoencoder"

    def save_pretrained(self, path, state_dict: dict[str, torch.Tensor] | None = None) -> str:
        """Write ``config.json`` (model_type + the configuration) and ``model.safetensors``.

        ``state_dict``: the full tensors to write (e.g. gathered from a sharded model); default ``self.state_dict()``.
        """
        from unitok.config import to_dict
        from unitok.models.pretrained import write_pretrained

        config = {"model_type": self.model_type, "preset": getattr(self, "preset", None), "config": to_dict(self.cfg)}
        return str(write_pretrained(path, config, state_dict if state_dict is not None else self.state_dict()))

    @classmethod
    def from_pretrained(cls, path, **overrides) -> TransformerAutoencoder:
        """Load a directory written by :meth:`save_pretrained`; ``overrides`` replace configuration fields."""
        from unitok.config import build_config
        from unitok.models.pretrained import load_state_dict_strict, read_config, read_weights

        raw = read_config(path)
        if "config" not in raw:
            raise ValueError(f"{path}/config.json has no 'config' section (not written by unitok?)")
        model = cls(build_config(AutoencoderConfig, raw["config"], overrides))
        model.preset = raw.get("preset")
        load_state_dict_strict(model, read_weights(path), source=f"{path}/model.safetensors")
        return model.eval()
