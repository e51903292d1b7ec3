"""VTPConfig: the official VTP configuration (every field of the released ``config.json``) and the presets.

Field names and defaults are those of the official ``VTPConfig`` (MiniMax-AI/VTP ``configuration_vtp.py``),
so a released ``config.json`` reads as is; unknown keys are errors (with a did-you-mean hint), and the
metadata keys transformers writes are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from unitok.config import ConfigError, build_config, to_dict

#: keys transformers' PretrainedConfig writes next to the model's own fields; ignored on reading.
HF_METADATA_KEYS = frozenset(
    {
        "architectures", "model_type", "dtype", "torch_dtype", "transformers_version", "_name_or_path",
        "output_hidden_states", "output_attentions", "return_dict", "chunk_size_feed_forward",
        "is_encoder_decoder", "id2label", "label2id", "problem_type", "tie_word_embeddings", "use_cache",
    }
)  # fmt: skip

NORM_LAYERS = {"rmsnorm": ("rmsnorm", 1e-5), "layernorm": ("layernorm", 1e-6), "layernormbf16": ("layernorm", 1e-5)}
FFN_LAYERS = {"swiglu": ("swiglu", 8), "swiglu32": ("swiglu", 32), "swiglu64": ("swiglu", 64),
              "swiglu128": ("swiglu", 128), "mlp": ("mlp", 8)}  # fmt: skip


@dataclass
class VTPConfig:
    """The official VTP configuration (defaults = the official defaults; see shared spec section 1.7)."""

    image_size: int = 256
    train_clip: bool = True
    train_reconstruction: bool = True
    # vision encoder (DINOv3 ViT + bottleneck)
    vision_patch_size: int = 16
    vision_embed_dim: int = 768
    vision_depth: int = 12
    vision_num_heads: int = 12
    vision_mlp_ratio: float = 4.0
    vision_ffn_layer: str = "swiglu"
    vision_norm_layer: str = "rmsnorm"
    vision_init_values: float | None = None
    vision_use_qk_norm: bool = False
    vision_feature_bottleneck: int = 64
    vision_bottleneck_ae_only: bool = True
    vision_clip_feat: str = "cls"
    # text tower (open_clip TextTransformer)
    text_context_length: int = 77
    text_vocab_size: int = 49408
    text_embed_dim: int = 768
    text_num_heads: int = 12
    text_depth: int = 12
    text_mlp_ratio: float = 4.0
    text_ls_init_value: float | None = None
    text_embed_cls: bool = False
    text_pad_id: int = 0
    text_no_causal_mask: bool = False
    text_pool_type: str = "argmax"
    text_proj_type: str = "linear"
    text_proj_bias: bool = False
    text_output_tokens: bool = False
    text_quick_gelu: bool = False
    # pixel decoder (mlp_ratio fixed at 4 and PixelShuffle(16) upstream)
    decoder_embed_dim: int = 768
    decoder_num_heads: int = 12
    decoder_depth: int = 12
    decoder_ffn_layer: str = "swiglu"
    decoder_norm_layer: str = "layernorm"
    decoder_init_values: float | None = None
    decoder_use_qk_norm: bool = False
    # CLIP temperature
    init_logit_scale: float | None = None
    init_logit_bias: float | None = None
    nonscalar_logit_scale: bool = False

    def __post_init__(self) -> None:
        for name in ("vision_norm_layer", "decoder_norm_layer"):
            if getattr(self, name) not in NORM_LAYERS:
                raise ConfigError(f"{name} must be one of {sorted(NORM_LAYERS)}, got {getattr(self, name)!r}")
        for name in ("vision_ffn_layer", "decoder_ffn_layer"):
            if getattr(self, name) not in FFN_LAYERS:
                raise ConfigError(f"{name} must be one of {sorted(FFN_LAYERS)}, got {getattr(self, name)!r}")
        if self.vision_clip_feat not in ("cls", "pooled"):
            raise ConfigError(f"vision_clip_feat must be 'cls' or 'pooled', got {self.vision_clip_feat!r}")
        if self.text_pool_type not in ("argmax", "first", "last", "eos"):
            raise ConfigError(f"text_pool_type must be argmax/first/last/eos, got {self.text_pool_type!r}")
        if self.text_proj_type not in ("linear", "none"):
            raise ConfigError(f"text_proj_type must be 'linear' or 'none', got {self.text_proj_type!r}")
        if self.text_embed_cls:
            raise ConfigError(
                "text_embed_cls=True is not supported: the official VTPModel drops the text CLS embedding"
            )
        if self.train_reconstruction and self.vision_patch_size != 16:
            raise ConfigError(
                f"vision_patch_size={self.vision_patch_size} with train_reconstruction: VTP's pixel decoder upsamples "
                "by a fixed 16 (PixelShuffle(16)), so the patch size must be 16"
            )
        if self.image_size % self.vision_patch_size:
            raise ConfigError(
                f"image_size {self.image_size} is not a multiple of vision_patch_size {self.vision_patch_size}"
            )
        for prefix in ("vision", "decoder"):
            dim, heads = getattr(self, f"{prefix}_embed_dim"), getattr(self, f"{prefix}_num_heads")
            if dim % (4 * heads):
                raise ConfigError(
                    f"{prefix}_embed_dim {dim} must be divisible by 4 * {prefix}_num_heads ({4 * heads}) for 2-D RoPE"
                )

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None = None, **overrides: Any) -> VTPConfig:
        """Strict: unknown keys raise :class:`~unitok.config.ConfigError`; transformers metadata is ignored."""
        return build_config(cls, data, overrides, ignore=HF_METADATA_KEYS)

    def to_dict(self) -> dict[str, Any]:
        """The ``config.json`` content (the official fields plus the transformers metadata keys)."""
        return {"architectures": ["VTPModel"], "model_type": "vtp", "dtype": "float32", **to_dict(self)}


def _size(prefix: str, dim: int, depth: int, heads: int) -> dict[str, int]:
    return {f"{prefix}_embed_dim": dim, f"{prefix}_depth": depth, f"{prefix}_num_heads": heads}


# VTP-L is the released HF config.json (spec 1.7). The S and B config.json files were not available offline:
# their vision sizes are the DINOv3 factory sizes the repo names (S 384/12/6, B 768/12/12), the text tower is
# the L one (768/12/12, consistent with the "0.3B" of B), and the decoder is GUESSED to mirror the encoder
# (S: 384/12/6, total 0.17B "0.2B"; a ViT-B decoder would give 0.23B, also "0.2B"). Both are config fields.
VTP_PRESETS: dict[str, dict[str, Any]] = {
    "vtp_s_f16d64": {**_size("vision", 384, 12, 6), **_size("decoder", 384, 12, 6)},
    "vtp_b_f16d64": {**_size("vision", 768, 12, 12), **_size("decoder", 768, 12, 12)},
    "vtp_l_f16d64": {**_size("vision", 1024, 24, 16), **_size("decoder", 1024, 24, 16)},
}
