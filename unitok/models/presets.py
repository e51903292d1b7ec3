"""The presets table: model name -> factory and configuration.

Names carry geometry: ``unitok_<size>_<img|wav>_p<patch>_d<latent>`` (patch = pixels per side for images,
samples per frame for 16 kHz audio), the speech tokenizers ``unitok_speech_<size>_p<frame>_d<latent>`` (with their
speech-text head), the released VTP names ``vtp_<s|b|l>_f16d64`` and the Semantic-VAE baselines.
"""

from __future__ import annotations

from typing import Any

from unitok.config import build_config
from unitok.models.autoencoder import AutoencoderConfig, TransformerAutoencoder

#: (dim, depth, heads) of the ViT sizes
SIZES = {"tiny": (64, 2, 2), "s": (384, 12, 6), "b": (768, 12, 12), "l": (1024, 24, 16)}


def _ae(size: str, patch_dim: int, latent: int, coord_ndim: int) -> dict[str, Any]:
    dim, depth, heads = SIZES[size]
    stack = {"dim": dim, "depth": depth, "num_heads": heads, "coord_ndim": coord_ndim}
    return {
        "factory": "unitok.models.presets:create_autoencoder",
        "kwargs": {"patch_dim": patch_dim, "latent_dim": latent, "encoder": dict(stack),
                   "decoder": {**stack, "norm": "layernorm", "class_token": False, "mask_token": False}},
    }  # fmt: skip


PRESETS: dict[str, dict[str, Any]] = {
    # images: RGB patches of 16 (3·16·16 values), 2-D coordinates
    **{f"unitok_{s}_img_p16_d64": _ae(s, 3 * 16 * 16, 64, 2) for s in ("s", "b", "l")},
    "unitok_tiny_img_p16_d8": _ae("tiny", 3 * 16 * 16, 8, 2),
    # speech: 16 kHz mono, frames of 320 samples (50 latents per second), 1-D coordinates
    **{f"unitok_{s}_wav_p320_d64": _ae(s, 320, 64, 1) for s in ("s", "b")},
    "unitok_tiny_wav_p320_d8": _ae("tiny", 320, 8, 1),
    # the speech tokenizer (speech-text head, Gaussian or linear bottleneck): SpeechTokenizerModel, SPEECH_PRESETS
    **{f"unitok_speech_{s}_p320_d64": {"factory": "unitok.modalities.speech.vtp_speech:create_speech_tokenizer"}
       for s in ("tiny", "s", "b")},
    # the released VTP tokenizers (official architecture and checkpoint layout)
    **{name: {"factory": "unitok.modalities.image.vtp:create_vtp"} for name in
       ("vtp_s_f16d64", "vtp_b_f16d64", "vtp_l_f16d64")},
    # the Semantic-VAE / acoustic VAE baselines (SEMANTIC_VAE_PRESETS in modalities/speech/semantic_vae_config.py)
    **{name: {"factory": "unitok.modalities.speech.semantic_vae:create_semantic_vae"} for name in
       ("semantic_vae_16k_d64", "acoustic_vae_16k_d16", "acoustic_vae_16k_d64", "semantic_vae_tiny")},
}  # fmt: skip


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def create_autoencoder(name: str, **overrides: Any) -> TransformerAutoencoder:
    """A :class:`TransformerAutoencoder` from a preset; nested ``overrides`` (e.g. encoder={'depth': 2})."""
    base = PRESETS[name]["kwargs"]
    kwargs = {k: v for k, v in overrides.items()}
    cfg = build_config(AutoencoderConfig, _merge(base, kwargs))
    model = TransformerAutoencoder(cfg)
    model.preset = name
    return model
