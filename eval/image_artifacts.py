"""Image files written by the evaluation suites: uint8 PNGs with the official truncation, labelled grids.

The official VTP tools write PNGs with ``(x * 255).astype(np.uint8)`` on [0, 1] floats: truncation, not rounding
(spec quirk: a value of 0.999 * k / 255 becomes k - 1). :func:`to_uint8` is that conversion, shared by the PNG
writer and by anything that must see exactly what the PNGs hold (the rFID features).

Shape legend:
    B: images, C: channels (3), H/W: pixels, k: images per grid row
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Executor
from pathlib import Path

import torch


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) images in [0, 1] -> uint8 by truncation, as ``(x * 255).astype(np.uint8)`` of the official tools.

    The float product is taken in the images' dtype (float32 in the suites, as numpy does for a float32 array).
    """
    if images.is_floating_point() and (images.min() < 0 or images.max() > 1):
        raise ValueError("to_uint8 expects images clamped to [0, 1]")
    return (images * 255).to(torch.uint8)


def write_pngs(images: torch.Tensor, paths: Sequence[str | Path], pool: Executor | None = None) -> None:
    """Write (B, C, H, W) uint8 images as RGB PNG files, one per path; with ``pool`` the files are written in
    parallel (PIL releases the GIL while compressing) and every file is complete when this returns."""
    from PIL import Image

    if images.dtype != torch.uint8 or images.ndim != 4 or len(paths) != images.shape[0]:
        raise ValueError(f"expected (B, C, H, W) uint8 images and B paths, got {tuple(images.shape)} {images.dtype} "
                         f"and {len(paths)} paths")  # fmt: skip
    arrays = list(images.permute(0, 2, 3, 1).cpu().numpy())

    def save(array, path) -> None:
        Image.fromarray(array).save(path)

    if pool is None:
        for array, path in zip(arrays, paths, strict=True):
            save(array, path)
    else:
        list(pool.map(save, arrays, paths))  # list(): wait for every file and re-raise the first error


def save_labelled_grid(
    path: str | Path, rows: Sequence[torch.Tensor], labels: Sequence[Sequence[str] | None], padding: int = 2
) -> Path:
    """Save rows of images as one PNG grid, with a text label in the top-left corner of chosen tiles.

    Args:
        path: the PNG to write.
        rows: (k, C, H, W) images in [0, 1], the same k, H and W in every row.
        labels: per row, k strings (one per tile) or None for no labels.
        padding: white pixels between tiles.
    """
    from PIL import Image, ImageDraw, ImageFont
    from torchvision.utils import make_grid

    if len(rows) != len(labels) or len({tuple(r.shape) for r in rows}) != 1:
        raise ValueError("every grid row needs the same (k, C, H, W) shape and one label list (or None)")
    k, _, h, w = rows[0].shape
    grid = make_grid(torch.cat([r.detach().float().cpu() for r in rows]), nrow=k, padding=padding, pad_value=1.0)
    image = Image.fromarray(to_uint8(grid.clamp(0, 1)[None])[0].permute(1, 2, 0).numpy())
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=max(9, w // 14))  # a bitmap font when Pillow lacks FreeType
    for i, row_labels in enumerate(labels):
        for j, text in enumerate(row_labels or []):
            x, y = padding + j * (w + padding), padding + i * (h + padding)
            _, _, right, bottom = draw.textbbox((x + 1, y), text, font=font)
            draw.rectangle((x, y, min(right + 1, x + w - 1), min(bottom + 1, y + h - 1)), fill=(0, 0, 0))
            draw.text((x + 1, y), text, fill=(255, 255, 255), font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path
