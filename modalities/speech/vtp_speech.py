"""The unitok speech tokenizer: 16 kHz waveform frames -> Transformer autoencoder -> L-d latents at 50 Hz -> waveform,
with a speech-text (CLIP) head: the speech instantiation of the core that VTP is for images.

``SpeechTokenizerModel`` = :class:`~.adapter.SpeechAdapter` (frames of ``frame_size`` samples, 1-D time
coordinates, length masks) + :class:`~unitok.models.autoencoder.TransformerAutoencoder` (encoder with a CLS and a
mask token and 1-D RoPE, a linear or Gaussian bottleneck, decoder to frame samples) + a CLIP head: the utterance
embedding (CLS or mean of the valid frame tokens, before the bottleneck, projected by ``audio_proj``), open_clip's
``TextTransformer`` built by the same builder as VTP's (:mod:`unitok.models.text`), logit scale and bias.

Public API (used by the speech evaluation suites): ``encode(audio, lengths) -> (B, N, L)`` latents (the mean of a
Gaussian bottleneck, or a sample), ``posterior`` (mean / log-variance / frames), ``decode(latents, lengths) ->
(B, 1, T)``, ``sample_rate``, ``frame_size`` (= ``hop_length``), ``latent_rate`` (Hz), ``latent_dim``; CLIP:
``get_clip_audio_feature``, ``get_clip_text_feature``, ``get_tokenizer``; ``save_pretrained`` / ``from_pretrained``
(``config.json`` with ``model_type: unitok_speech`` + ``model.safetensors``).

Shape legend:
    B: batch, T: samples (longest clip), F: frame_size, N = ceil(T / F) frames, D: encoder width,
    L: latent channels, E: text embedding width, C: text context length
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from unitok.adapter import Tokens
from unitok.config import build_config, to_dict
from unitok.modalities.speech.adapter import SpeechAdapter, valid_lengths
from unitok.modalities.speech.vtp_speech_config import SPEECH_PRESETS, SpeechTokenizerConfig
from unitok.models.autoencoder import AutoencoderConfig, EncoderOutput, TransformerAutoencoder
from unitok.models.text import build_text_tower


def autoencoder_config(cfg: SpeechTokenizerConfig) -> AutoencoderConfig:
    """The core autoencoder configuration of a speech tokenizer."""
    return AutoencoderConfig(patch_dim=cfg.frame_size, latent_dim=cfg.latent_dim, encoder=cfg.encoder,
                             decoder=cfg.decoder, bottleneck_bias=cfg.bottleneck_bias,
                             bottleneck=cfg.bottleneck)  # fmt: skip


class SpeechTokenizerModel(nn.Module):
    """The speech tokenizer (see the module docstring).

    Args:
        config: a :class:`SpeechTokenizerConfig` or a dict of its fields.
    """

    model_type = "unitok_speech"

    def __init__(self, config: SpeechTokenizerConfig | dict[str, Any] | None = None):
        super().__init__()
        if not isinstance(config, SpeechTokenizerConfig):
            config = build_config(SpeechTokenizerConfig, config or {})
        self.config = cfg = config
        self.adapter = SpeechAdapter(cfg.frame_size, cfg.sample_rate, cfg.reference_frames)
        self.autoencoder = TransformerAutoencoder(autoencoder_config(cfg))
        self.audio_proj = self.text = self.logit_scale = self.logit_bias = None
        if cfg.text is not None:
            self.audio_proj = nn.Linear(cfg.encoder.dim, cfg.text.embed_dim, bias=False)
            nn.init.trunc_normal_(self.audio_proj.weight, std=0.02)
            self.text = build_text_tower(cfg.text)
            self.logit_scale = nn.Parameter(torch.tensor(float(cfg.init_logit_scale)))
            if cfg.init_logit_bias is not None:
                self.logit_bias = nn.Parameter(torch.tensor(float(cfg.init_logit_bias)))

    # ------------------------------------------------------------------------------------------ geometry
    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def frame_size(self) -> int:
        """Samples per token and per latent frame."""
        return self.config.frame_size

    @property
    def hop_length(self) -> int:
        """Alias of :attr:`frame_size` (the name Semantic-VAE uses)."""
        return self.config.frame_size

    @property
    def latent_rate(self) -> float:
        """Latent frames per second (50 Hz for 320-sample frames at 16 kHz)."""
        return self.config.sample_rate / self.config.frame_size

    @property
    def latent_dim(self) -> int:
        return self.config.latent_dim

    @property
    def is_gaussian(self) -> bool:
        return self.autoencoder.is_gaussian

    def frames(self, lengths: torch.Tensor) -> torch.Tensor:
        """(B,) samples -> (B,) latent frames (a partial last frame counts)."""
        return (lengths + self.frame_size - 1) // self.frame_size

    # ------------------------------------------------------------------------------------------ encoder
    def tokens(self, audio: torch.Tensor, lengths: torch.Tensor | None = None) -> Tokens:
        """(B, T) or (B, 1, T) audio -> Tokens of (B, N, F) frames with a length mask."""
        return self.adapter.patchify({"audio": audio, "audio_lens": lengths})

    def encode_features(
        self, audio: torch.Tensor, lengths: torch.Tensor | None = None, token_mask: torch.Tensor | None = None
    ) -> tuple[Tokens, EncoderOutput]:
        """One encoder pass: (Tokens, final-normed un-bottlenecked features); ``token_mask`` (B, N): iBOT masking."""
        tokens = self.tokens(audio, lengths)
        return tokens, self.autoencoder.encode_features(tokens, token_mask=token_mask)

    def utterance_embedding(self, tokens: Tokens, feats: EncoderOutput, normalize: bool = True) -> torch.Tensor:
        """(B, E) projected utterance embedding of an encoder pass (CLS, or mean of the valid frame tokens)."""
        self._require("clip")
        if self.config.clip_feat == "cls":
            x = feats.cls
        else:
            valid = tokens.mask.unsqueeze(-1).to(feats.tokens.dtype)
            x = (feats.tokens * valid).sum(1) / valid.sum(1).clamp_min(1)
        x = self.audio_proj(x)
        return F.normalize(x, dim=-1) if normalize else x

    def posterior(self, audio: torch.Tensor, lengths: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``mean`` (B, N, L) (and ``logvar`` for a Gaussian bottleneck), ``frames`` (B,), ``mask`` (B, N).

        Frames past each clip's end are zero in ``mean`` and ``logvar``.
        """
        tokens, feats = self.encode_features(audio, lengths)
        mean, logvar = self.autoencoder.posterior(feats.tokens)
        valid = tokens.mask.unsqueeze(-1)
        out = {"mean": mean * valid, "frames": tokens.mask.sum(1), "mask": tokens.mask}
        if logvar is not None:
            out["logvar"] = logvar * valid
        return out

    def encode(
        self,
        audio: torch.Tensor,
        lengths: torch.Tensor | None = None,
        sample: bool = False,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """(B, T) or (B, 1, T) audio, valid up to ``lengths`` (B,) samples -> (B, N, L) latents, zero past each clip.

        A Gaussian bottleneck gives its mean, or a sample ``mean + exp(logvar / 2)·eps`` with ``sample=True``.
        """
        post = self.posterior(audio, lengths)
        if not sample:
            return post["mean"]
        z = self.autoencoder.sample_latents(post["mean"], post.get("logvar"), generator)
        return z * post["mask"].unsqueeze(-1)

    # ------------------------------------------------------------------------------------------ decoder
    def latent_tokens(self, latents: torch.Tensor, lengths: torch.Tensor | None = None) -> Tokens:
        """(B, N, L) latents -> Tokens with frame coordinates, the length mask and the meta of ``lengths`` samples."""
        if latents.ndim != 3 or latents.shape[-1] != self.latent_dim:
            raise ValueError(f"latents must be (B, N, {self.latent_dim}), got {tuple(latents.shape)}")
        B, N, _ = latents.shape
        T = N * self.frame_size
        if lengths is not None:
            lengths = valid_lengths(lengths, B, T, device=latents.device)
            T = int(lengths.max())
        lengths = valid_lengths(lengths, B, T, device=latents.device)
        mask = torch.arange(N, device=latents.device)[None] < self.frames(lengths)[:, None]
        coords = self.adapter.coords(N, B, latents.device)
        return Tokens(x=latents, coords=coords, mask=mask, meta={"lengths": lengths, "num_samples": T})

    def decode_tokens(self, latents: Tokens) -> torch.Tensor:
        """Latent Tokens -> (B, 1, T) audio, zero past each clip's length."""
        self._require("rec")
        return self.adapter.unpatchify(self.autoencoder.decode(latents)).unsqueeze(1)

    def decode(self, latents: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N, L) latents -> (B, 1, T) audio; T = N·F, or the longest of ``lengths`` (B,) samples when given
        (then each clip is zero past its length and frames past it are masked in the decoder)."""
        return self.decode_tokens(self.latent_tokens(latents, lengths))

    def forward(
        self, audio: torch.Tensor, lengths: torch.Tensor | None = None, sample: bool | None = None
    ) -> dict[str, torch.Tensor]:
        """Encode and decode: ``latents`` (B, N, L) (sampled in training mode when Gaussian, or per ``sample``),
        ``recon`` (B, 1, T), ``mean`` and ``logvar`` (Gaussian) and ``mask`` (B, N)."""
        tokens = self.tokens(audio, lengths)
        out = self.autoencoder(tokens, sample=sample)
        result = {"latents": out["latents"].x, "mask": tokens.mask, **out["aux"]}
        if out["recon"] is not None:
            result["recon"] = self.adapter.unpatchify(out["recon"]).unsqueeze(1)
        return result

    # ------------------------------------------------------------------------------------------ CLIP
    def _require(self, part: str) -> None:
        if part == "clip" and self.text is None:
            raise RuntimeError("this speech tokenizer has no speech-text head (config.text is None)")
        if part == "rec" and self.autoencoder.decoder is None:
            raise RuntimeError("this speech tokenizer has no decoder (config.decoder is None)")

    def get_tokenizer(self):
        """The CLIP BPE tokenizer (open_clip, 'ViT-B-32' vocabulary) padded/truncated to the context length."""
        import open_clip

        self._require("clip")
        return open_clip.get_tokenizer("ViT-B-32", context_length=self.config.text.context_length)

    def get_clip_audio_feature(
        self, audio: torch.Tensor, lengths: torch.Tensor | None = None, normalize: bool = True
    ) -> torch.Tensor:
        """(B, E) utterance embedding of (B, T) audio valid up to ``lengths``."""
        tokens, feats = self.encode_features(audio, lengths)
        return self.utterance_embedding(tokens, feats, normalize)

    def get_clip_text_feature(self, text: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """(B, C) token ids (from :meth:`get_tokenizer`) -> (B, E) text embedding."""
        self._require("clip")
        C = self.config.text.context_length
        if text.ndim != 2 or text.shape[1] != C or text.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"text must be (B, {C}) integer token ids from model.get_tokenizer(), got "
                             f"{tuple(text.shape)} {text.dtype}")  # fmt: skip
        x = self.text(text)
        x = x[0] if isinstance(x, tuple) else x  # output_tokens=True returns (pooled, tokens)
        return F.normalize(x, dim=-1) if normalize else x

    def encode_audio(self, audio: torch.Tensor, lengths: torch.Tensor | None = None, normalize: bool = False):
        """open_clip-style alias of :meth:`get_clip_audio_feature`."""
        return self.get_clip_audio_feature(audio, lengths, normalize=normalize)

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """open_clip-style alias of :meth:`get_clip_text_feature`."""
        return self.get_clip_text_feature(text, normalize=normalize)

    # ------------------------------------------------------------------------------------------ checkpoints
    def save_pretrained(self, path: str | os.PathLike, state_dict: dict[str, torch.Tensor] | None = None) -> str:
        """Write ``config.json`` (model_type, preset, configuration) and ``model.safetensors`` (``state_dict``:
        the full tensors to write, default ``self.state_dict()``)."""
        from unitok.models.pretrained import write_pretrained

        preset = getattr(self, "preset", None)
        config = {"model_type": self.model_type, "preset": preset, "config": to_dict(self.config)}
        return str(write_pretrained(path, config, state_dict if state_dict is not None else self.state_dict()))

    @classmethod
    def read_pretrained_config(cls, path: str | os.PathLike, **overrides: Any) -> SpeechTokenizerConfig:
        """The configuration of a :meth:`save_pretrained` directory (``overrides`` replace fields).

        Raises:
            ValueError: the directory holds another kind of model.
        """
        from unitok.models.pretrained import read_config

        raw = read_config(path)
        if raw.get("model_type") != cls.model_type or "config" not in raw:
            found = raw.get("model_type")
            raise ValueError(
                f"{path}/config.json is not a unitok speech tokenizer (model_type {found!r}, expected "
                f"{cls.model_type!r} with a 'config' section)"
            )
        return build_config(SpeechTokenizerConfig, raw["config"], overrides)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **overrides: Any) -> SpeechTokenizerModel:
        """Load a :meth:`save_pretrained` directory strictly; ``overrides`` replace configuration fields."""
        from unitok.models.pretrained import load_state_dict_strict, read_config, read_weights

        model = cls(cls.read_pretrained_config(path, **overrides))
        model.preset = read_config(path).get("preset")
        load_state_dict_strict(model, read_weights(path), source=f"{path}/model.safetensors")
        return model.eval()


def create_speech_tokenizer(name: str, **overrides: Any) -> SpeechTokenizerModel:
    """A randomly initialised speech tokenizer from a preset (``SPEECH_PRESETS``); nested ``overrides``, e.g.
    ``encoder={"depth": 4}, bottleneck="gaussian"``."""
    if name not in SPEECH_PRESETS:
        raise KeyError(f"unknown speech tokenizer preset {name!r}; available: {sorted(SPEECH_PRESETS)}")
    model = SpeechTokenizerModel(build_config(SpeechTokenizerConfig, SPEECH_PRESETS[name], overrides))
    model.preset = name
    return model
