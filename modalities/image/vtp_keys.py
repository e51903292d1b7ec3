"""Official VTP state-dict keys <-> unitok module keys.

The official model hoists open_clip's text pieces to the top level and names DINOv3 modules ``trunk`` and
``pixel_decoder``; unitok holds a :class:`~unitok.models.autoencoder.TransformerAutoencoder` and an open_clip
``TextTransformer``. The conv patch embedding and the decoder's 1x1 convs are linear maps in unitok, so their
weights are reshaped ((D, C, p, p) <-> (D, C·p·p), (O, I, 1, 1) <-> (O, I)). The RoPE ``periods`` buffers
(bfloat16 in the official files) are derived, not learned: they are checked on reading and written back.
"""

from __future__ import annotations

import re

import torch

# (official prefix, unitok prefix), first match wins; order matters (longer prefixes first).
_PREFIXES = [
    ("trunk.patch_embed.proj.", "autoencoder.patch_embed."),
    ("trunk.storage_tokens", "autoencoder.encoder.reg_token"),
    ("trunk.feature_bottleneck.", "autoencoder.bottleneck."),
    ("trunk.", "autoencoder.encoder."),
    ("pixel_decoder.proj_in.", "autoencoder.decoder_embed."),
    ("pixel_decoder.proj_out.", "autoencoder.decoder_head."),
    ("pixel_decoder.", "autoencoder.decoder."),
    ("text_transformer.", "text.transformer."),
    ("token_embedding.", "text.token_embedding."),
    ("positional_embedding", "text.positional_embedding"),
    ("ln_final.", "text.ln_final."),
    ("text_projection", "text.text_projection"),
]
# DINOv3 SwiGLU names -> timm SwiGLU names (inside blocks only).
_MLP = [(".mlp.w1.", ".mlp.fc1_g."), (".mlp.w2.", ".mlp.fc1_x."), (".mlp.w3.", ".mlp.fc2.")]
#: official keys of the derived RoPE period buffers
PERIOD_KEYS = ("trunk.rope_embed.periods", "pixel_decoder.rope_embed.periods")
#: unitok keys whose weights are convs in the official layout
_CONV_KEYS = ("autoencoder.patch_embed.weight", "autoencoder.decoder_embed.weight", "autoencoder.decoder_head.weight")
_BLOCK = re.compile(r"^(autoencoder\.(?:encoder|decoder)\.blocks\.\d+|trunk\.blocks\.\d+|pixel_decoder\.blocks\.\d+)")


def _swap(key: str, pairs, reverse: bool) -> str | None:
    for official, ours in pairs:
        src, dst = (ours, official) if reverse else (official, ours)
        if key.startswith(src):
            return dst + key[len(src) :]
    return None


def official_to_unitok_key(key: str) -> str:
    """An official key -> the unitok key (unchanged for top-level keys such as ``logit_scale``)."""
    new = _swap(key, _PREFIXES, reverse=False) or key
    if _BLOCK.match(new):
        new = _swap_mlp(new, reverse=False)
    return new


def unitok_to_official_key(key: str, swiglu: bool = True) -> str:
    """A unitok key -> the official key (``swiglu``: the block's FFN is SwiGLU, whose names differ)."""
    new = key
    if swiglu and _BLOCK.match(new):
        new = _swap_mlp(new, reverse=True)
    return _swap(new, _PREFIXES, reverse=True) or new


def _swap_mlp(key: str, reverse: bool) -> str:
    for official, ours in _MLP:
        src, dst = (ours, official) if reverse else (official, ours)
        if src in key:
            return key.replace(src, dst, 1)
    return key


def official_to_unitok(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Convert an official state dict.

    Returns:
        (unitok state dict, the official RoPE period buffers found) — the caller checks the periods.
    """
    out, periods = {}, {}
    for k, v in state_dict.items():
        if k in PERIOD_KEYS:
            periods[k] = v
            continue
        new = official_to_unitok_key(k)
        if new in _CONV_KEYS and v.ndim == 4:
            v = v.reshape(v.shape[0], -1)
        out[new] = v
    return out, periods


def unitok_to_official(
    state_dict: dict[str, torch.Tensor], patch_size: int, in_chans: int = 3
) -> dict[str, torch.Tensor]:
    """Convert a unitok state dict to the official layout (conv weights reshaped back; periods not included)."""
    swiglu_blocks = {_BLOCK.match(k).group(1) for k in state_dict if ".mlp.fc1_g." in k and _BLOCK.match(k)}
    out = {}
    for k, v in state_dict.items():
        block = _BLOCK.match(k)
        swiglu = block is not None and block.group(1) in swiglu_blocks
        if k == "autoencoder.patch_embed.weight":
            v = v.reshape(v.shape[0], in_chans, patch_size, patch_size)
        elif k in _CONV_KEYS:
            v = v.reshape(*v.shape, 1, 1)
        out[unitok_to_official_key(k, swiglu)] = v
    return out
