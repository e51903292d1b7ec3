"""Semantic-VAE configuration: the ``DAC`` / ``Decoder`` / ``Discriminator`` blocks of a released ``metainfo.json``.

The official code (``ZhikangNiu/Semantic-VAE``) builds its generator from ``DAC(**metainfo["DAC"])`` and the
BigVGAN json that ``metainfo["Decoder"]`` holds inline. :class:`DACConfig` has the ``DAC`` constructor's field
names (defaults: the released 16 kHz ``conf/svae/example.yml`` for the keys the yml sets, the constructor's own
defaults for the rest, so a metainfo reads exactly as the official code reads it), :class:`BigVGANConfig` the
json's. Unknown keys are errors; keys starting with ``_`` (provenance notes) and ``model_type`` are ignored.
The ``Discriminator`` block is carried through unchanged (the discriminator lives in ``discriminator.py``).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

from unitok.config import ConfigError, build_config, to_dict

#: the ``model_type`` written into ``config.json`` by ``save_pretrained``
MODEL_TYPE = "semantic_vae"

_BLOCKS = {"DAC": "dac", "Decoder": "decoder", "Discriminator": "discriminator"}


@dataclass
class DACConfig:
    """The ``DAC`` block: encoder, bottleneck and SSL projector (the decoder comes from ``Decoder``).

    Attributes:
        sample_rate: audio sample rate in Hz.
        encoder_dim: width of the first encoder conv; doubled by each encoder block.
        encoder_rates: encoder strides; their product is the hop length.
        latent_dim: encoder output width (None: ``encoder_dim * 2 ** len(encoder_rates)``).
        vae_dim: latent channels C of ``mu`` / ``logvar`` / ``z``.
        distill: train with the semantic alignment loss (False: the vanilla acoustic VAE).
        distill_hidden_dim: width of the SSL features fed to the projector (WavLM-large: 1024).
        sampling_ratios: one Conv-GroupNorm-Mish block of the projector per entry (values unused upstream).
        attn_proj: recorded flag; the official encoder uses the attention projection whatever it says.
        decoder_dim, decoder_rates, decoder_type, post_vae_block, bigvgan_conf: recorded, unused upstream
            (the decoder is always the BigVGAN described by ``Decoder``; ``bigvgan_conf`` is the repo path
            of that json).
    """

    sample_rate: int = 16000
    encoder_dim: int = 64
    encoder_rates: list[int] = field(default_factory=lambda: [4, 4, 5, 5])
    latent_dim: int | None = None
    decoder_dim: int = 1024
    decoder_rates: list[int] = field(default_factory=lambda: [5, 5, 4, 4])
    vae_dim: int = 64
    decoder_type: str = "bigvgan"
    bigvgan_conf: str = "conf/bigvgan_conf/bigvgan_v2_16khz_40hz_base_vae64.json"
    distill: bool = True
    distill_hidden_dim: int = 1024
    attn_proj: bool = True
    post_vae_block: bool = False
    sampling_ratios: list[int] = field(default_factory=lambda: [0, 1])

    @property
    def encoder_out_dim(self) -> int:
        """The width of the encoder output (the attention projection's input)."""
        return self.latent_dim if self.latent_dim is not None else self.encoder_dim * 2 ** len(self.encoder_rates)

    @property
    def hop_length(self) -> int:
        """Samples per latent frame (the product of the encoder strides)."""
        return math.prod(self.encoder_rates)


@dataclass
class BigVGANConfig:
    """The ``Decoder`` block: a BigVGAN-v2 generator json (``conf/bigvgan_conf/*.json``).

    Attributes:
        num_mels: input channels (the latent width, equal to ``DAC.vae_dim``).
        upsample_rates, upsample_kernel_sizes: the transposed-conv stages (product = hop length).
        upsample_initial_channel: channels after ``conv_pre``; halved by every stage.
        resblock: "1" (AMP block with convs1 + convs2) or "2" (convs only).
        resblock_kernel_sizes, resblock_dilation_sizes: the AMP blocks averaged at every stage.
        activation: "snakebeta" or "snake", anti-aliased (2x up, act, 2x down).
        snake_logscale: alpha/beta stored on a log scale.
        use_tanh_at_final: tanh on the output (False: clamp to [-1, 1]).
        use_bias_at_final: bias on ``conv_post``.
    """

    resblock: str = "1"
    num_mels: int = 64
    upsample_rates: list[int] = field(default_factory=lambda: [5, 5, 2, 2, 2, 2])
    upsample_kernel_sizes: list[int] = field(default_factory=lambda: [9, 9, 4, 4, 4, 4])
    upsample_initial_channel: int = 1024
    resblock_kernel_sizes: list[int] = field(default_factory=lambda: [3, 7, 11])
    resblock_dilation_sizes: list[list[int]] = field(default_factory=lambda: [[1, 3, 5], [1, 3, 5], [1, 3, 5]])
    use_tanh_at_final: bool = False
    use_bias_at_final: bool = False
    activation: str = "snakebeta"
    snake_logscale: bool = True

    def __post_init__(self) -> None:
        if self.resblock not in ("1", "2"):
            raise ConfigError(f"Decoder.resblock must be '1' or '2', got {self.resblock!r}")
        if self.activation not in ("snake", "snakebeta"):
            raise ConfigError(f"Decoder.activation must be 'snake' or 'snakebeta', got {self.activation!r}")
        if len(self.upsample_rates) != len(self.upsample_kernel_sizes):
            raise ConfigError("Decoder.upsample_rates and upsample_kernel_sizes must have the same length")
        if len(self.resblock_kernel_sizes) != len(self.resblock_dilation_sizes):
            raise ConfigError("Decoder.resblock_kernel_sizes and resblock_dilation_sizes must have the same length")
        if self.upsample_initial_channel % 2 ** len(self.upsample_rates):
            raise ConfigError(
                f"Decoder.upsample_initial_channel {self.upsample_initial_channel} must be divisible by "
                f"2 ** {len(self.upsample_rates)} (it is halved by every upsampling stage)"
            )


def _default_discriminator() -> dict[str, Any]:
    return {
        "sample_rate": 16000,
        "rates": [],
        "periods": [2, 3, 5, 7, 11],
        "fft_sizes": [2048, 1024, 512],
        "bands": [[0.0, 0.1], [0.1, 0.25], [0.25, 0.5], [0.5, 0.75], [0.75, 1.0]],
    }


@dataclass
class SemanticVAEConfig:
    """The whole model: ``metainfo.json``'s three blocks (default: the released 16 kHz, 64-d Semantic-VAE)."""

    dac: DACConfig = field(default_factory=DACConfig)
    decoder: BigVGANConfig = field(default_factory=BigVGANConfig)
    discriminator: dict[str, Any] = field(default_factory=_default_discriminator)

    def __post_init__(self) -> None:
        dac, dec = self.dac, self.decoder
        if dec.num_mels != dac.vae_dim:
            raise ConfigError(f"Decoder.num_mels ({dec.num_mels}) must equal DAC.vae_dim ({dac.vae_dim})")
        if math.prod(dec.upsample_rates) != dac.hop_length:
            raise ConfigError(
                f"the decoder upsamples by {math.prod(dec.upsample_rates)} (Decoder.upsample_rates "
                f"{dec.upsample_rates}) but the encoder hop is {dac.hop_length} (DAC.encoder_rates {dac.encoder_rates})"
            )
        din, dout = dac.encoder_out_dim, dac.vae_dim
        if din % dout and dout % din:
            raise ConfigError(f"the attention projection needs one of {din} (encoder output) and {dout} "
                              "(DAC.vae_dim) to divide the other")  # fmt: skip
        if max(din, dout) % 8:
            raise ConfigError(f"the attention projection width {max(din, dout)} must be divisible by its 8 heads")

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None = None, **overrides: Any) -> SemanticVAEConfig:
        """From a ``metainfo.json`` / ``config.json`` dict (blocks ``DAC``/``Decoder``/``Discriminator`` or
        ``dac``/``decoder``/``discriminator``); ``overrides`` are nested dicts merged on top.

        Raises:
            ConfigError: unknown keys, wrong types, inconsistent blocks.
        """
        return build_config(cls, _normalise(data), _normalise(overrides))

    def to_dict(self) -> dict[str, Any]:
        """The ``metainfo.json`` layout (``DAC``, ``Decoder``, ``Discriminator``) plus ``model_type``."""
        d = to_dict(self)
        return {"model_type": MODEL_TYPE, **{block: d[name] for block, name in _BLOCKS.items()}}


def _normalise(data: dict[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in (data or {}).items():
        if key.startswith("_") or key == "model_type":
            continue
        name = _BLOCKS.get(key, key)
        if name in out:
            raise ConfigError(f"config block {key!r} given twice (as {name!r} and {key!r})")
        out[name] = copy.deepcopy(value)
    return out


_RELEASED_DAC = {"sample_rate": 16000, "encoder_dim": 64, "encoder_rates": [4, 4, 5, 5], "decoder_dim": 1024,
                 "decoder_rates": [5, 5, 4, 4], "vae_dim": 64, "decoder_type": "bigvgan", "distill": True,
                 "attn_proj": True, "sampling_ratios": [0, 1]}  # fmt: skip


def _released(vae_dim: int, distill: bool) -> dict[str, Any]:
    conf = f"conf/bigvgan_conf/bigvgan_v2_16khz_40hz_base_vae{vae_dim}.json"
    return {
        "DAC": {**_RELEASED_DAC, "vae_dim": vae_dim, "distill": distill, "bigvgan_conf": conf},
        "Decoder": {"num_mels": vae_dim},
    }


#: tiny_default of shared/parity/semantic_vae: the released classes at small widths (tests, demos)
_TINY = {
    "DAC": {**_RELEASED_DAC, "encoder_dim": 8, "vae_dim": 8, "distill_hidden_dim": 32,
            "bigvgan_conf": "conf/bigvgan_conf/tiny_default.json"},
    "Decoder": {"num_mels": 8, "upsample_initial_channel": 64},
}  # fmt: skip

#: preset name -> ``SemanticVAEConfig.from_dict`` input (released checkpoints of HF ``zkniu/Semantic-VAE``)
SEMANTIC_VAE_PRESETS: dict[str, dict[str, Any]] = {
    "semantic_vae_16k_d64": _released(64, distill=True),
    "acoustic_vae_16k_d16": _released(16, distill=False),
    "acoustic_vae_16k_d64": _released(64, distill=False),
    "semantic_vae_tiny": _TINY,
}
