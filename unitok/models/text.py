"""The text tower of the signal-text (CLIP) heads: open_clip's ``TextTransformer``, for every modality.

:class:`TextTowerConfig` holds its settings under the names of the released VTP ``config.json`` (``text_*`` fields
without the prefix), so a VTP configuration converts with :meth:`TextTowerConfig.from_prefixed` and the VTP text
tower, the speech one and any later one are built by the same :func:`build_text_tower`.

Shape legend:
    B: batch, C: context length, E: embedding width
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from torch import nn


@dataclass
class TextTowerConfig:
    """open_clip ``TextTransformer`` settings (VTP's ``text_*`` fields).

    Attributes:
        context_length: token sequence length C (the tokenizer pads / truncates to it).
        vocab_size: 49408 with the CLIP BPE tokenizer (``open_clip.get_tokenizer("ViT-B-32")``).
        embed_dim, num_heads, depth, mlp_ratio: width E (= output width), heads, layers, MLP expansion.
        ls_init_value: LayerScale init (None: none).
        pad_id, no_causal_mask, pool_type, proj_type, proj_bias, output_tokens: as open_clip.
        quick_gelu: QuickGELU activations (OpenAI CLIP) instead of GELU.
    """

    context_length: int = 77
    vocab_size: int = 49408
    embed_dim: int = 512
    num_heads: int = 8
    depth: int = 12
    mlp_ratio: float = 4.0
    ls_init_value: float | None = None
    pad_id: int = 0
    no_causal_mask: bool = False
    pool_type: str = "argmax"
    proj_type: str = "linear"
    proj_bias: bool = False
    output_tokens: bool = False
    quick_gelu: bool = False

    @classmethod
    def from_prefixed(cls, source: Any, prefix: str = "text_") -> TextTowerConfig:
        """The config from the ``<prefix><field>`` attributes of ``source`` (e.g. a VTPConfig)."""
        return cls(**{f.name: getattr(source, prefix + f.name) for f in dataclasses.fields(cls)})


def build_text_tower(cfg: TextTowerConfig) -> nn.Module:
    """open_clip's ``TextTransformer``: (B, C) token ids -> (B, E) pooled, projected embeddings."""
    from open_clip.transformer import LayerNorm, QuickGELU, TextTransformer

    return TextTransformer(
        context_length=cfg.context_length,
        vocab_size=cfg.vocab_size,
        width=cfg.embed_dim,
        heads=cfg.num_heads,
        layers=cfg.depth,
        mlp_ratio=cfg.mlp_ratio,
        ls_init_value=cfg.ls_init_value,  # open_clip initialises LayerScale (the official HF model does not)
        output_dim=cfg.embed_dim,
        embed_cls=False,
        no_causal_mask=cfg.no_causal_mask,
        pad_id=cfg.pad_id,
        pool_type=cfg.pool_type,
        proj_type=cfg.proj_type,
        proj_bias=cfg.proj_bias,
        output_tokens=cfg.output_tokens,
        act_layer=QuickGELU if cfg.quick_gelu else nn.GELU,
        norm_layer=LayerNorm,
    )
