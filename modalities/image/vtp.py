"""VTP (arXiv 2512.13687) on the unitok core, compatible with the released checkpoints and their public API.

``VTPModel`` = :class:`~unitok.models.autoencoder.TransformerAutoencoder` (DINOv3 ViT encoder with a CLS and
a mask token, linear bottleneck, pixel decoder) + the image adapter (conv patch embedding / PixelShuffle(16)
conventions) + a CLIP head (``visual_proj``, open_clip ``TextTransformer``, logit scale and bias).
``VTPModel.from_pretrained`` reads the released ``config.json`` + ``model.safetensors`` layout and
``save_pretrained`` writes it back. RoPE runs in bfloat16 by default, reproducing the official numerics.

Shape legend:
    B: batch, H/W: pixels, h/w: latent grid (H/16, W/16), N = h·w, D: vision width, L: latent dim (64),
    T: text context length, E: text embedding width
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from unitok.modalities.image.adapter import ImageAdapter
from unitok.modalities.image.vtp_config import FFN_LAYERS, NORM_LAYERS, VTP_PRESETS, VTPConfig
from unitok.modalities.image.vtp_keys import PERIOD_KEYS, official_to_unitok, unitok_to_official
from unitok.models.autoencoder import AutoencoderConfig, TransformerAutoencoder
from unitok.models.pretrained import (
    CheckpointMismatchError,
    load_state_dict_strict,
    read_config,
    read_weights,
    write_pretrained,
)
from unitok.models.text import TextTowerConfig, build_text_tower
from unitok.models.transformer import TransformerConfig

#: the official RoPE dtype
OFFICIAL_ROPE_DTYPE = "bfloat16"


def _stack_config(cfg: VTPConfig, prefix: str, rope_dtype: str, encoder: bool) -> TransformerConfig:
    norm, eps = NORM_LAYERS[getattr(cfg, f"{prefix}_norm_layer")]
    ffn, align = FFN_LAYERS[getattr(cfg, f"{prefix}_ffn_layer")]
    return TransformerConfig(
        dim=getattr(cfg, f"{prefix}_embed_dim"),
        depth=getattr(cfg, f"{prefix}_depth"),
        num_heads=getattr(cfg, f"{prefix}_num_heads"),
        mlp_ratio=cfg.vision_mlp_ratio if encoder else 4.0,  # the official decoder fixes ffn_ratio = 4
        ffn=ffn,
        swiglu_align=align,
        norm=norm,
        norm_eps=eps,
        qk_norm=getattr(cfg, f"{prefix}_use_qk_norm"),
        init_values=getattr(cfg, f"{prefix}_init_values"),
        class_token=encoder,
        mask_token=encoder,
        coord_ndim=2,
        rope_base=100.0,
        rope_dtype=rope_dtype,
    )


def autoencoder_config(cfg: VTPConfig, rope_dtype: str = OFFICIAL_ROPE_DTYPE) -> AutoencoderConfig:
    """The core autoencoder configuration of a VTP model."""
    return AutoencoderConfig(
        patch_dim=3 * cfg.vision_patch_size**2,
        latent_dim=cfg.vision_feature_bottleneck,
        encoder=_stack_config(cfg, "vision", rope_dtype, encoder=True),
        decoder=_stack_config(cfg, "decoder", rope_dtype, encoder=False) if cfg.train_reconstruction else None,
        bottleneck_bias=False,
    )


class VTPModel(nn.Module):
    """The VTP tokenizer with the official public API.

    Args:
        config: a :class:`VTPConfig` (or a dict of its fields).
        rope_dtype: 'bfloat16' (official numerics, the default) or 'float32'.
    """

    model_type = "vtp"

    def __init__(self, config: VTPConfig | dict[str, Any] | None = None, rope_dtype: str = OFFICIAL_ROPE_DTYPE):
        super().__init__()
        self.config = config if isinstance(config, VTPConfig) else VTPConfig.from_dict(config or {})
        cfg = self.config
        self.rope_dtype = rope_dtype
        self.adapter = ImageAdapter(patch_size=cfg.vision_patch_size)
        self.autoencoder = TransformerAutoencoder(autoencoder_config(cfg, rope_dtype))
        if cfg.train_clip:
            proj_in = cfg.vision_embed_dim if cfg.vision_bottleneck_ae_only else cfg.vision_feature_bottleneck
            self.visual_proj = nn.Linear(proj_in, cfg.text_embed_dim, bias=False)
            nn.init.trunc_normal_(self.visual_proj.weight, std=0.02)
            self.text = build_text_tower(TextTowerConfig.from_prefixed(cfg))
            # The official code uses `init_logit_scale or log(1/0.07)`; an explicit 0.0 is honoured here.
            shape = [1] if cfg.nonscalar_logit_scale else []
            init = math.log(1 / 0.07) if cfg.init_logit_scale is None else cfg.init_logit_scale
            self.logit_scale = nn.Parameter(torch.full(shape, float(init)))
            bias = cfg.init_logit_bias
            self.logit_bias = nn.Parameter(torch.full(shape, float(bias))) if bias is not None else None
        else:
            self.visual_proj = self.text = self.logit_scale = self.logit_bias = None

    # ------------------------------------------------------------------------------------------ helpers
    @property
    def num_prefix_tokens(self) -> int:
        return self.autoencoder.encoder.num_prefix_tokens

    def _tokens(self, image: torch.Tensor):
        """Image -> Tokens already through the (conv) patch embedding."""
        return self.adapter.embed(image, self.autoencoder.patch_embed)

    def encode_features(self, image: torch.Tensor, token_mask: torch.Tensor | None = None):
        """One encoder pass: image -> (Tokens, EncoderOutput) with final-normed, un-bottlenecked features.

        ``token_mask`` (B, N) replaces masked patches by the mask token (iBOT). The CLIP feature and the
        reconstruction can both be derived from this one pass (:meth:`clip_feature_from`, :meth:`decode_features`).
        """
        tokens = self._tokens(image)
        return tokens, self.autoencoder.encode_features(tokens, token_mask=token_mask, pre_embedded=True)

    def clip_feature_from(self, feats, normalize: bool = True) -> torch.Tensor:
        """(B, E) CLIP image embedding from an encoder pass (CLS or mean patch token, bottlenecked unless AE-only)."""
        self._require("clip")
        bottleneck = (lambda x: x) if self.config.vision_bottleneck_ae_only else self.autoencoder.apply_bottleneck
        if self.config.vision_clip_feat == "cls":
            x = bottleneck(feats.cls)
        else:
            x = bottleneck(feats.tokens).mean(dim=1)
        x = self.visual_proj(x)
        return F.normalize(x, dim=-1) if normalize else x

    def decode_features(self, patch_tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """(B, N, D) final-normed patch tokens of an encoder pass -> bottleneck -> pixel decoder -> images."""
        latents = self.adapter.tokens_to_grid(self.autoencoder.apply_bottleneck(patch_tokens), grid)
        return self.get_latents_decoded_images(latents)

    def _require(self, part: str) -> None:
        if part == "clip" and self.text is None:
            raise RuntimeError("CLIP not enabled. Set train_clip=True in config.")
        if part == "rec" and self.autoencoder.decoder is None:
            raise RuntimeError("Reconstruction not enabled. Set train_reconstruction=True in config.")

    def get_tokenizer(self):
        """The CLIP BPE tokenizer (open_clip, 'ViT-B-32' vocabulary) padded/truncated to the context length."""
        import open_clip

        return open_clip.get_tokenizer("ViT-B-32", context_length=self.config.text_context_length)

    # ------------------------------------------------------------------------------------------ features
    def get_last_layer_feature(self, image: torch.Tensor, use_bottleneck: bool = False) -> dict[str, torch.Tensor]:
        """{'cls_token': (B, D) or (B, L), 'patch_tokens': (B, N, D) or (B, N, L)} after the final norm."""
        _, feats = self.encode_features(image)
        cls, patches = feats.cls, feats.tokens
        if use_bottleneck:
            cls, patches = self.autoencoder.apply_bottleneck(cls), self.autoencoder.apply_bottleneck(patches)
        return {"cls_token": cls, "patch_tokens": patches}

    def get_intermediate_layers_feature(
        self,
        image: torch.Tensor,
        n: int | Sequence[int] = 1,
        reshape: bool = False,
        return_class_token: bool = False,
        norm: bool = True,
    ) -> tuple:
        """Outputs of the last ``n`` blocks (or of the listed block indices), never bottlenecked.

        Returns a tuple of patch tokens (B, N, D) — (B, D, h, w) with ``reshape`` — or of (patch, cls) pairs.
        """
        tokens = self._tokens(image)
        outs, _ = self.autoencoder.forward_intermediates(tokens, n, norm=norm, stop_early=True, pre_embedded=True)
        p = self.num_prefix_tokens
        patches = [o[:, p:] for o in outs]
        if reshape:
            h, w = tokens.meta["grid"]
            patches = [x.reshape(x.shape[0], h, w, -1).permute(0, 3, 1, 2).contiguous() for x in patches]
        if return_class_token:
            return tuple(zip(patches, [o[:, 0] for o in outs], strict=True))
        return tuple(patches)

    # ------------------------------------------------------------------------------------------ CLIP
    def get_clip_image_feature(self, image: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """(B, E) projected image embedding (CLS or mean of patch tokens, bottlenecked unless AE-only)."""
        self._require("clip")
        return self.clip_feature_from(self.encode_features(image)[1], normalize)

    def get_clip_text_feature(self, text: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """(B, T) token ids -> (B, E) text embedding. T must equal ``text_context_length``."""
        self._require("clip")
        T = self.config.text_context_length
        if text.ndim != 2 or text.shape[1] != T:
            raise ValueError(
                f"text tokens must be (B, {T}) (VTP adds the full positional embedding), got {tuple(text.shape)}; "
                f"tokenize with model.get_tokenizer()"
            )
        if text.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"text tokens must be integer ids, got {text.dtype}")
        x = self.text(text)
        if isinstance(x, tuple):  # text_output_tokens=True returns (pooled, tokens)
            x = x[0]
        return F.normalize(x, dim=-1) if normalize else x

    def encode_image(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """open_clip-style alias of :meth:`get_clip_image_feature` (for open_clip's zero-shot tools)."""
        return self.get_clip_image_feature(image, normalize=normalize)

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """open_clip-style alias of :meth:`get_clip_text_feature`."""
        return self.get_clip_text_feature(text, normalize=normalize)

    def get_clip_logits(self, image: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits_per_image (Bi, Bt), logits_per_text (Bt, Bi))."""
        img = self.get_clip_image_feature(image, normalize=True)
        txt = self.get_clip_text_feature(text, normalize=True)
        logits = self.logit_scale.exp() * img @ txt.T
        if self.logit_bias is not None:
            logits = logits + self.logit_bias
        return logits, logits.T

    # ------------------------------------------------------------------------------------------ reconstruction
    def get_reconstruction_latents(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised images -> (B, L, h, w) latents (no scaling or shift)."""
        tokens, feats = self.encode_features(image)
        return self.adapter.tokens_to_grid(self.autoencoder.apply_bottleneck(feats.tokens), tokens.meta["grid"])

    def get_latents_decoded_images(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, L, h, w) latents -> (B, 3, 16h, 16w) images in the normalised input space."""
        self._require("rec")
        tokens = self.adapter.grid_tokens(latents)
        return self.adapter.unpatchify(self.autoencoder.decode(tokens))

    # ------------------------------------------------------------------------------------------ forward
    def forward(
        self, image: torch.Tensor | None = None, text: torch.Tensor | None = None, forward_type: str = "clip"
    ) -> dict[str, torch.Tensor]:
        """forward_type 'clip' | 'rec' | 'feature' (the last uses the bottleneck, as upstream)."""
        if forward_type == "clip":
            self._require("clip")
            out = {}
            if image is not None:
                out["image_features"] = self.get_clip_image_feature(image, normalize=True)
            if text is not None:
                out["text_features"] = self.get_clip_text_feature(text, normalize=True)
            out["logit_scale"] = self.logit_scale.exp()
            if self.logit_bias is not None:
                out["logit_bias"] = self.logit_bias
            return out
        if image is None:
            raise ValueError(f"image is required for forward_type={forward_type!r}")
        if forward_type == "rec":
            latents = self.get_reconstruction_latents(image)
            return {"latents": latents, "reconstructed_image": self.get_latents_decoded_images(latents),
                    "target_image": image}  # fmt: skip
        if forward_type == "feature":
            return self.get_last_layer_feature(image, use_bottleneck=True)
        raise ValueError(f"Invalid forward_type: {forward_type!r} (expected 'clip', 'rec' or 'feature')")

    # ------------------------------------------------------------------------------------------ checkpoints
    def official_state_dict(self, state_dict: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """The state dict (default ``self.state_dict()``) in the official layout, RoPE periods included (bf16)."""
        sd = unitok_to_official(
            state_dict if state_dict is not None else self.state_dict(), self.config.vision_patch_size
        )
        sd[PERIOD_KEYS[0]] = self.autoencoder.encoder.rope.compute_periods().to(torch.bfloat16)
        if self.autoencoder.decoder is not None:
            sd[PERIOD_KEYS[1]] = self.autoencoder.decoder.rope.compute_periods().to(torch.bfloat16)
        return sd

    def load_official_state_dict(self, state_dict: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
        """Load an official-layout state dict strictly (keys, shapes and RoPE periods are checked)."""
        converted, periods = official_to_unitok(state_dict)
        expected = self.official_state_dict()
        for key, value in periods.items():
            if key not in expected:
                raise CheckpointMismatchError(f"{source} has unexpected key {key}")
            want = expected[key].float()
            if value.shape != want.shape or not torch.allclose(value.float(), want, rtol=1e-2):
                raise CheckpointMismatchError(
                    f"{source}: {key} {value.float().tolist()} differs from the base-100 periods {want.tolist()}; "
                    "only the official RoPE (base 100) is supported"
                )
        try:
            load_state_dict_strict(self, converted, source)
        except CheckpointMismatchError as e:  # name the offending keys in the official layout
            raise CheckpointMismatchError(_official_names(str(e))) from None

    def save_pretrained(self, path: str | os.PathLike, state_dict: dict[str, torch.Tensor] | None = None) -> str:
        """Write ``config.json`` + ``model.safetensors`` in the released layout (``state_dict``: full tensors)."""
        return str(write_pretrained(path, self.config.to_dict(), self.official_state_dict(state_dict)))

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, rope_dtype: str = OFFICIAL_ROPE_DTYPE, **overrides) -> VTPModel:
        """Load a released (or ``save_pretrained``) directory; ``overrides`` replace config fields."""
        raw = read_config(path)
        if raw.get("model_type", "vtp") != "vtp":
            raise ValueError(f"{path}: model_type is {raw.get('model_type')!r}, expected 'vtp'")
        model = cls(VTPConfig.from_dict(raw, **overrides), rope_dtype=rope_dtype)
        model.load_official_state_dict(read_weights(path), source=f"{path}/model.safetensors")
        return model.eval()


def _official_names(message: str) -> str:
    from unitok.modalities.image.vtp_keys import unitok_to_official_key

    return " ".join(
        unitok_to_official_key(w) if w.startswith(("autoencoder.", "text.")) else w for w in message.split(" ")
    )


def create_vtp(name: str, rope_dtype: str = OFFICIAL_ROPE_DTYPE, **overrides: Any) -> VTPModel:
    """A randomly initialised VTP model from a preset name (see ``VTP_PRESETS``)."""
    if name not in VTP_PRESETS:
        raise KeyError(f"unknown VTP preset {name!r}; available: {sorted(VTP_PRESETS)}")
    return VTPModel(VTPConfig.from_dict(VTP_PRESETS[name], **overrides), rope_dtype=rope_dtype)
