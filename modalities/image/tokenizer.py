"""One image-tokenizer interface for the evaluation suites, over any image model of unitok.

:class:`ImageTokenizer` gives VTP models (released or trained) and plain Transformer autoencoders trained on images
the same calls: encode pixels to a latent grid, decode it back, frozen features for probes, and CLIP embeddings
when the model has a text tower.

Shape legend:
    B: batch, H/W: pixels, h/w: latent grid, L: latent channels, D: encoder width, E: CLIP embedding width
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from unitok.latent_stats import stats_for
from unitok.modalities.image.adapter import ImageAdapter


class ImageTokenizer:
    """An image tokenizer seen through the calls the suites need.

    Args:
        model: a ``VTPModel`` or a ``TransformerAutoencoder`` whose tokens are image patches.
        adapter_params: the training task's adapter settings (``patch_size``, ``mean``, ``std``) for a plain
            autoencoder; when absent they are inferred (3-channel patches, ImageNet normalisation).
    """

    def __init__(self, model: nn.Module, adapter_params: dict[str, Any] | None = None):
        self.model = model
        self.is_vtp = getattr(model, "model_type", None) == "vtp"
        if self.is_vtp:
            self.adapter = model.adapter
            self.autoencoder = model.autoencoder
            self.image_size = int(model.config.image_size)
        else:
            if model.cfg.encoder.coord_ndim != 2:
                raise ValueError(
                    f"{type(model).__name__} is not an image tokenizer (its encoder uses "
                    f"{model.cfg.encoder.coord_ndim}-d coordinates, images need 2-d)"
                )
            self.autoencoder = model
            self.adapter = _autoencoder_adapter(model, adapter_params or {})
            self.image_size = None  # any multiple of the patch size

    # ------------------------------------------------------------------------------------------ capabilities
    @property
    def has_text(self) -> bool:
        return self.is_vtp and self.model.text is not None

    @property
    def has_decoder(self) -> bool:
        return self.autoencoder.decoder is not None

    @property
    def latent_dim(self) -> int:
        return self.autoencoder.latent_dim

    @property
    def patch_size(self) -> int:
        return self.adapter.patch_size

    @property
    def mean(self) -> tuple[float, ...]:
        return self.adapter.mean

    @property
    def std(self) -> tuple[float, ...]:
        return self.adapter.std

    def require(self, what: str) -> None:
        """Raise a clear error when the model lacks a text tower ('text') or a decoder ('decoder')."""
        if what == "text" and not self.has_text:
            raise ValueError(f"this checkpoint ({type(self.model).__name__}) has no text tower: zero-shot needs CLIP")
        if what == "decoder" and not self.has_decoder:
            raise ValueError(f"this checkpoint ({type(self.model).__name__}) has no pixel decoder")

    def to(self, device: torch.device | str) -> ImageTokenizer:
        self.model.to(device)
        return self

    # ------------------------------------------------------------------------------------------ latents
    def encode(self, images: torch.Tensor, normalize_latents: bool = False) -> torch.Tensor:
        """(B, 3, H, W) normalised images -> (B, L, h, w) latents.

        ``normalize_latents`` applies the checkpoint's latent statistics (``(z - mean) / std · multiplier``, what a
        diffusion model is trained on); :meth:`decode` with ``denormalize_latents`` inverts it.
        """
        if self.is_vtp:
            z = self.model.get_reconstruction_latents(images)
        else:
            tokens = self.adapter.patchify(images)
            z = self.adapter.tokens_to_grid(self.autoencoder.encode(tokens).x, tokens.meta["grid"])
        return stats_for(self.model).normalize(z) if normalize_latents else z

    def decode(self, latents: torch.Tensor, denormalize_latents: bool = False) -> torch.Tensor:
        """(B, L, h, w) latents -> (B, 3, H, W) images in the normalised input space."""
        self.require("decoder")
        if denormalize_latents:
            latents = stats_for(self.model).denormalize(latents)
        if self.is_vtp:
            return self.model.get_latents_decoded_images(latents)
        tokens = self.adapter.grid_tokens(latents)
        return self.adapter.unpatchify(self.autoencoder.decode(tokens))

    # ------------------------------------------------------------------------------------------ features
    def probe_features(self, images: torch.Tensor, n_last_blocks: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
        """DINOv2 linear-probe features of the last ``n_last_blocks`` blocks (final norm, no bottleneck).

        Returns ``(cls, avgpool)``: (B, n, D) class tokens of the last n blocks (oldest first) and (B, D) the mean
        patch token of the last block. A model without a class token gives the mean patch token of each block.
        """
        if self.is_vtp:
            outs = self.model.get_intermediate_layers_feature(images, n=n_last_blocks, return_class_token=True)
            patches, cls = [o[0] for o in outs], [o[1] for o in outs]
        else:
            tokens = self.adapter.patchify(images)
            blocks, _ = self.autoencoder.forward_intermediates(tokens, n_last_blocks, norm=True, stop_early=True)
            p = self.autoencoder.encoder.num_prefix_tokens
            patches = [b[:, p:] for b in blocks]
            cls = [b[:, 0] if self.autoencoder.encoder.cfg.class_token else b[:, p:].mean(1) for b in blocks]
        return torch.stack(cls, dim=1), patches[-1].mean(dim=1)

    def clip_image_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, E) L2-normalised CLIP image embeddings."""
        self.require("text")
        return self.model.get_clip_image_feature(images, normalize=True)

    def text_model(self) -> tuple[nn.Module, Any]:
        """(model with ``encode_text(tokens, normalize)``, its tokenizer) for open_clip's zero-shot builder."""
        self.require("text")
        return self.model, self.model.get_tokenizer()


def _autoencoder_adapter(model: nn.Module, params: dict[str, Any]) -> ImageAdapter:
    """The image adapter of a plain autoencoder: the run's settings, else inferred from its patch width."""
    if params.get("modality", "image") != "image":
        raise ValueError(f"the checkpoint was trained on {params['modality']!r} data, not images")
    params = {k: v for k, v in params.items() if k != "modality"}
    in_chans = int(params.get("in_chans", 3))
    if "patch_size" not in params:
        side = math.isqrt(model.cfg.patch_dim // in_chans)
        if side * side * in_chans != model.cfg.patch_dim:
            raise ValueError(
                f"cannot infer the image patch size from patch_dim {model.cfg.patch_dim} with {in_chans} channels; "
                "evaluate the run directory (its config.yaml records it)"
            )
        params["patch_size"] = side
    adapter = ImageAdapter(**params)
    if adapter.patch_dim != model.cfg.patch_dim:
        raise ValueError(
            f"adapter patches of {adapter.patch_dim} values do not match the model's {model.cfg.patch_dim}"
        )
    return adapter


def pool_probe_input(cls: torch.Tensor, avgpool: torch.Tensor, n_blocks: int) -> torch.Tensor:
    """DINOv2 classifier input: the class tokens of the last ``n_blocks`` blocks concatenated, then the avgpool.

    ``cls``: (B, n, D) from :meth:`ImageTokenizer.probe_features` (n >= n_blocks); returns (B, (n_blocks + 1)·D).
    """
    picked = cls[:, cls.shape[1] - n_blocks :].flatten(1)
    return torch.cat([picked, avgpool], dim=-1).float()
