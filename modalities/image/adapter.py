"""Image adapter: (B, C, H, W) pixels <-> Tokens of flattened (C, p, p) patches with 2-D coordinates.

The flattening order is that of a Conv2d(kernel = stride = p) weight (channel-major, then patch row, then
column), and :meth:`ImageAdapter.unpatchify` is exactly ``PixelShuffle(p)``: value ``c·p² + i·p + j`` of the
token at grid cell (y, x) is pixel (c, p·y + i, p·x + j). This is VTP's conv patch embedding and pixel-decoder
output convention, so a converted VTP conv weight is a plain linear map on these tokens.

Shape legend:
    B: batch, C: channels, H/W: pixels, p: patch size, h/w: grid (H/p, W/p), N = h·w
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from unitok.adapter import ModalityAdapter, Tokens
from unitok.layers.rope import grid_coords

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageAdapter(ModalityAdapter):
    """Patches of ``patch_size`` over images of any size that is a multiple of it (square or not).

    Args:
        patch_size: p.
        in_chans: C.
        mean, std: the normalisation the model's inputs are in (VTP: ImageNet mean/std); used by
            :meth:`normalize` / :meth:`denormalize` and :meth:`to_media`.
    """

    data_key = "image"
    coord_ndim = 2

    def __init__(
        self,
        patch_size: int = 16,
        in_chans: int = 3,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
    ):
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.patch_dim = in_chans * patch_size * patch_size
        self.mean = tuple(mean)
        self.std = tuple(std)

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        """Pixels -> (h, w) patch grid, with a clear error when a side is not a multiple of the patch size."""
        p = self.patch_size
        if height % p or width % p:
            raise ValueError(
                f"image size {height}x{width} is not a multiple of the patch size {p}; "
                f"resize or crop to e.g. {max(p, height // p * p)}x{max(p, width // p * p)}"
            )
        return height // p, width // p

    def check_image(self, image: torch.Tensor) -> None:
        if not torch.is_tensor(image) or image.ndim != 4 or image.shape[1] != self.in_chans:
            shape = tuple(image.shape) if torch.is_tensor(image) else type(image).__name__
            raise ValueError(f"expected images of shape (B, {self.in_chans}, H, W), got {shape}")

    def coords(self, h: int, w: int, batch_size: int, device: torch.device | str | None = None) -> torch.Tensor:
        """(B, h·w, 2) row-major patch-centre coordinates, one row expanded over the batch."""
        return grid_coords((h, w), device=device).unsqueeze(0).expand(batch_size, -1, -1)

    def patchify(self, batch: dict[str, Any] | torch.Tensor) -> Tokens:
        image = batch[self.data_key] if isinstance(batch, dict) else batch
        self.check_image(image)
        B, _, H, W = image.shape
        h, w = self.grid_size(H, W)
        x = F.pixel_unshuffle(image, self.patch_size).flatten(2).transpose(1, 2)  # (B, N, C·p·p)
        return Tokens(x=x, coords=self.coords(h, w, B, image.device), mask=None, meta={"grid": (h, w)})

    def embed(self, image: torch.Tensor, proj: torch.nn.Linear) -> Tokens:
        """Pixels -> Tokens whose x is ``proj`` applied to every patch (B, N, D), computed as a strided conv.

        The same map as ``proj(patchify(image).x)``, in the summation order of VTP's ``Conv2d`` patch embedding
        (bit-identical to the official numerics on CPU) and without materialising the patches. Pass the result
        to the autoencoder with ``pre_embedded=True``.
        """
        self.check_image(image)
        B, _, H, W = image.shape
        h, w = self.grid_size(H, W)
        p = self.patch_size
        weight = proj.weight.view(proj.out_features, self.in_chans, p, p)
        x = F.conv2d(image, weight, proj.bias, stride=p).flatten(2).transpose(1, 2)
        return Tokens(x=x, coords=self.coords(h, w, B, image.device), mask=None, meta={"grid": (h, w)})

    def grid_tokens(self, grid: torch.Tensor) -> Tokens:
        """A (B, L, h, w) feature map (e.g. VTP latents) -> Tokens with x (B, h·w, L)."""
        if grid.ndim != 4:
            raise ValueError(f"expected a latent grid (B, C, h, w), got shape {tuple(grid.shape)}")
        B, _, h, w = grid.shape
        return Tokens(
            x=grid.flatten(2).transpose(1, 2), coords=self.coords(h, w, B, grid.device), meta={"grid": (h, w)}
        )

    @staticmethod
    def tokens_to_grid(x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """(B, N, L) token values -> (B, L, h, w) (row-major grid)."""
        h, w = grid
        if x.shape[1] != h * w:
            raise ValueError(f"{x.shape[1]} tokens do not fill a {h}x{w} grid")
        return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], h, w)

    def unpatchify(self, tokens: Tokens | torch.Tensor, meta: dict[str, Any] | None = None) -> torch.Tensor:
        x = tokens.x if isinstance(tokens, Tokens) else tokens
        meta = meta if meta is not None else tokens.meta
        if x.shape[-1] != self.patch_dim:
            raise ValueError(f"expected tokens of {self.patch_dim} values (C·p·p), got {x.shape[-1]}")
        return F.pixel_shuffle(self.tokens_to_grid(x, meta["grid"]), self.patch_size)

    def normalize(self, image01: torch.Tensor) -> torch.Tensor:
        """[0, 1] pixels -> model input space."""
        mean = torch.tensor(self.mean, device=image01.device, dtype=image01.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=image01.device, dtype=image01.dtype).view(1, -1, 1, 1)
        return (image01 - mean) / std

    def denormalize(self, image: torch.Tensor, clamp: bool = True) -> torch.Tensor:
        """Model space -> [0, 1] pixels (clamped unless ``clamp=False``, e.g. inside a loss)."""
        mean = torch.tensor(self.mean, device=image.device, dtype=image.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=image.device, dtype=image.dtype).view(1, -1, 1, 1)
        image = image * std + mean
        return image.clamp(0, 1) if clamp else image

    def dummy_batch(self, batch_size: int, generator: torch.Generator | None = None, size=(64, 64)) -> dict:
        image = torch.randn(batch_size, self.in_chans, *size, generator=generator)
        return {"image": image, "text": [f"a random image {i}" for i in range(batch_size)]}

    def to_media(self, signal: torch.Tensor, path: str) -> str:
        """Write (C, H, W) or (B, C, H, W) model-space images as one PNG row."""
        from torchvision.utils import save_image

        img = signal.unsqueeze(0) if signal.ndim == 3 else signal
        save_image(self.denormalize(img.float()), path, nrow=img.shape[0], padding=2)
        return path
