"""Configuration and presets of the unitok speech tokenizer (:class:`~.vtp_speech.SpeechTokenizerModel`).

Preset names carry the geometry: ``unitok_speech_<size>_p<frame samples>_d<latent dim>`` (16 kHz audio, frames of
320 samples: 50 latents per second). Sizes are the ViT ones of the image presets (tiny is CPU-sized for tests and
demos); the text towers are GUESSES (no published speech-text VTP): open_clip's ViT-B text tower (512 wide, 12
layers, 8 heads) for S, VTP's (768, 12, 12) for B.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from unitok.config import ConfigError
from unitok.models.text import TextTowerConfig
from unitok.models.transformer import TransformerConfig


def _encoder_default() -> TransformerConfig:
    return TransformerConfig(dim=384, depth=12, num_heads=6, coord_ndim=1, class_token=True, mask_token=True)


def _decoder_default() -> TransformerConfig:
    return TransformerConfig(dim=384, depth=12, num_heads=6, coord_ndim=1, norm="layernorm", class_token=False,
                             mask_token=False)  # fmt: skip


@dataclass
class SpeechTokenizerConfig:
    """Attributes:
    sample_rate: Hz of the audio (16 kHz).
    frame_size: samples per token and per latent frame F (320: 50 Hz; 400: 40 Hz as Semantic-VAE).
    reference_frames: frames spanning RoPE coordinate 1.0 (see :class:`~.adapter.SpeechAdapter`).
    latent_dim: latent channels L.
    bottleneck: 'linear' or 'gaussian' (mean and log-variance heads, log-variance clamped to [-12, 12]).
    bottleneck_bias: bias of the bottleneck heads (Semantic-VAE's ``fc_mu`` / ``fc_var`` have one).
    encoder: the encoder stack (1-D coordinates, a CLS token for the utterance embedding and DINO, a mask token for
        iBOT).
    decoder: the decoder stack (no prefix tokens); None builds an encoder-only model.
    clip_feat: the utterance embedding: 'cls' (the CLS token) or 'mean' (mean of the valid frame tokens), read
        before the bottleneck (as VTP's ``vision_bottleneck_ae_only``) and projected to the text width.
    text: the text tower; None builds a model without the speech-text head.
    init_logit_scale, init_logit_bias: CLIP temperature (log) and SigLIP bias (None: no bias).
    """

    sample_rate: int = 16000
    frame_size: int = 320
    reference_frames: int = 250
    latent_dim: int = 64
    bottleneck: str = "linear"
    bottleneck_bias: bool = True
    encoder: TransformerConfig = field(default_factory=_encoder_default)
    decoder: TransformerConfig | None = field(default_factory=_decoder_default)
    clip_feat: str = "cls"
    text: TextTowerConfig | None = field(default_factory=TextTowerConfig)
    init_logit_scale: float = math.log(1 / 0.07)
    init_logit_bias: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.encoder, dict):
            self.encoder = TransformerConfig(**{**vars(_encoder_default()), **self.encoder})
        if isinstance(self.decoder, dict):
            self.decoder = TransformerConfig(**{**vars(_decoder_default()), **self.decoder})
        if isinstance(self.text, dict):
            self.text = TextTowerConfig(**self.text)
        stacks = [("encoder", self.encoder)] + ([("decoder", self.decoder)] if self.decoder is not None else [])
        for name, stack in stacks:
            if stack.coord_ndim != 1:
                raise ConfigError(f"{name}.coord_ndim must be 1 for audio frames, got {stack.coord_ndim}")
        if self.clip_feat not in ("cls", "mean"):
            raise ConfigError(f"clip_feat must be 'cls' or 'mean', got {self.clip_feat!r}")
        if self.clip_feat == "cls" and self.text is not None and not self.encoder.class_token:
            raise ConfigError("clip_feat='cls' needs a CLS token in the encoder (encoder.class_token=True)")
        if self.frame_size <= 0 or self.sample_rate <= 0:
            raise ConfigError(f"frame_size and sample_rate must be positive, got {self.frame_size}, {self.sample_rate}")


def _stacks(dim: int, depth: int, heads: int) -> dict[str, Any]:
    size = {"dim": dim, "depth": depth, "num_heads": heads}
    return {"encoder": dict(size), "decoder": dict(size)}


def _text(dim: int, depth: int, heads: int, context: int = 77) -> dict[str, Any]:
    return {"text": {"embed_dim": dim, "depth": depth, "num_heads": heads, "context_length": context}}


SPEECH_PRESETS: dict[str, dict[str, Any]] = {
    "unitok_speech_tiny_p320_d64": {**_stacks(64, 2, 2), **_text(64, 2, 2, context=32)},
    "unitok_speech_s_p320_d64": {**_stacks(384, 12, 6), **_text(512, 12, 8)},
    "unitok_speech_b_p320_d64": {**_stacks(768, 12, 12), **_text(768, 12, 12)},
}
