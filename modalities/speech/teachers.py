"""Frozen self-supervised speech teachers (WavLM, HuBERT) through ``transformers``, for semantic alignment.

:class:`SSLTeacher` loads ``AutoModel.from_pretrained(local_path)`` (no download: the path must hold the
``config.json`` + weights of e.g. ``facebook/wavlm-large``), freezes it in eval mode and returns one hidden state
(``layer`` indexes ``hidden_states``: 0 is the CNN/projection output, -1 the last, layer-normed output =
``last_hidden_state``, which Semantic-VAE's shipped extraction script uses; its experiment name suggests layer 23 may
have been meant). Its weights are never saved in checkpoints (they are read again from ``path``).

Input handling, as the model's feature extractor: each clip is normalised to zero mean and unit variance over its
valid samples when ``normalize`` (``Wav2Vec2FeatureExtractor(do_normalize=True)``, as for WavLM-large), padding is
zero; an attention mask is passed only to models whose feature extractor is layer-normed (``feat_extract_norm ==
"layer"``, e.g. WavLM-large; the group-normed base models are documented to take zero padding without a mask).
Frame lengths follow the conv stack: ``floor((n - kernel) / stride) + 1`` per layer (320 samples per frame).

Shape legend:
    B: batch, T: samples, S: teacher frames (~T / 320), E: teacher width
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from unitok.modalities.speech.adapter import valid_lengths


@dataclass
class SSLTeacherConfig:
    """Attributes:
    path: local directory of a transformers WavLM / HuBERT model (``config.json`` + weights); None: no teacher.
    layer: index into ``hidden_states`` (-1: the last, layer-normed output).
    normalize: zero-mean, unit-variance input per clip (WavLM-large's feature extractor does it).
    """

    path: str | None = None
    layer: int = -1
    normalize: bool = True


def _missing(path: str | None) -> FileNotFoundError:
    where = f"{path!r} does not exist" if path else "no path is configured (task.params.teacher.path)"
    return FileNotFoundError(
        f"the semantic-alignment teacher (a transformers WavLM or HuBERT, e.g. facebook/wavlm-large) is read from a "
        f"local directory and {where}. On a machine with network: `huggingface-cli download facebook/wavlm-large "
        "--local-dir /weights/wavlm-large`, copy it here and set task.params.teacher.path; or set the 'align' "
        "loss weight to 0 to train without it."
    )


def _drop_own_state(module: nn.Module, state_dict: dict, prefix: str, local_metadata) -> None:
    for key in [k for k in state_dict if k.startswith(prefix)]:
        del state_dict[key]


class SSLTeacher(nn.Module):
    """A frozen WavLM / HuBERT: ``forward(audio (B, T), lengths (B,)) -> (features (B, S, E), frames (B,))``."""

    def __init__(self, cfg: SSLTeacherConfig):
        super().__init__()
        if not cfg.path or not Path(cfg.path).expanduser().is_dir():
            raise _missing(cfg.path)
        from transformers import AutoModel

        path = Path(cfg.path).expanduser()
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} has no config.json: not a transformers model directory")
        self.model = AutoModel.from_pretrained(str(path), local_files_only=True).eval().requires_grad_(False)
        config = self.model.config
        layers = config.num_hidden_layers + 1
        if not -layers <= cfg.layer < layers:
            raise ValueError(f"teacher layer {cfg.layer} is out of range: {path} has hidden_states 0..{layers - 1}")
        self.cfg = cfg
        self.feature_dim = int(config.hidden_size)
        self.use_attention_mask = getattr(config, "feat_extract_norm", "layer") == "layer"
        self.register_state_dict_post_hook(_drop_own_state)

    def frame_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """(B,) samples -> (B,) teacher frames (the feature extractor's conv arithmetic, from transformers)."""
        return self.model._get_feat_extract_output_lengths(lengths).clamp_min(0)

    def train(self, mode: bool = True) -> SSLTeacher:
        super().train(False)  # frozen: dropout stays off
        return self

    @torch.no_grad()
    def forward(self, audio: torch.Tensor, lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T) or (B, 1, T) audio valid up to ``lengths`` -> (fp32 features (B, S, E), valid frames (B,))."""
        audio = audio[:, 0] if audio.ndim == 3 else audio
        B, T = audio.shape
        lengths = valid_lengths(lengths, B, T, device=audio.device)
        valid = torch.arange(T, device=audio.device)[None] < lengths[:, None]
        x = audio.float() * valid
        if self.cfg.normalize:
            n = lengths[:, None].float()
            mean = x.sum(1, keepdim=True) / n
            var = ((x - mean) * valid).square().sum(1, keepdim=True) / n
            x = (x - mean) / torch.sqrt(var + 1e-7) * valid
        mask = valid.long() if self.use_attention_mask else None
        out = self.model(x, attention_mask=mask, output_hidden_states=True)
        return out.hidden_states[self.cfg.layer].float(), self.frame_lengths(lengths)
