"""Image augmentation: the DINOv2 multi-crop recipe, reconstruction views and ADM's center crop.

All transforms are ``torchvision.transforms.v2`` pipelines. Inputs are PIL RGB images or uint8 (3, H, W) tensors
(solarisation thresholds at 128 on 0-255 values, so float inputs are refused by torchvision).

Shape legend:
    G: global crop side, L: local crop side, S: side of the un-augmented view, n: number of local crops,
    B: batch. One sample: global_crops [2 x (3, G, G)], local_crops [n x (3, L, L)], image (3, S, S).
    One batch (:func:`collate_multicrop`): global_crops [2 x (B, 3, G, G)], local_crops [n x (B, 3, L, L)],
    image (B, 3, S, S); ``torch.cat(batch["global_crops"])`` is DINOv2's crop-major (2B, 3, G, G) layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

from unitok.engine.state import single_threaded
from unitok.modalities.image.adapter import IMAGENET_MEAN, IMAGENET_STD
from unitok.modalities.image.data import collate_image_text

BICUBIC = v2.InterpolationMode.BICUBIC
# (global crop 1, global crop 2, local crops) probabilities of the Gaussian blur. DINOv2's augmentation wrapper
# hands ``1 - p`` to torchvision's RandomApply, so the released checkpoints were trained with the "official"
# values; "intended" are the values its code and paper state (spec ssl_losses_and_dit.md section 1.2).
BLUR_PROBABILITIES = {"official": (0.0, 0.9, 0.5), "intended": (1.0, 0.1, 0.5)}
CROP_KEYS = ("crop_source", "crop_seed")  # per-sample keys of the deferred crops (``crops_per_batch``)


def _maybe(transform: v2.Transform, p: float) -> list[v2.Transform]:
    """``transform`` with probability ``p``: left out at 0, applied unconditionally at 1."""
    if p <= 0:
        return []
    return [transform] if p >= 1 else [v2.RandomApply([transform], p=p)]


class MultiCropAugmentation:
    """DINOv2 multi-crop augmentation: 2 global and ``n_local`` local crops of one image, plus a clean view.

    Every crop: RandomResizedCrop (bicubic, aspect 3/4-4/3, ``*_scale`` of the area), horizontal flip p=0.5,
    ColorJitter(0.4, 0.4, 0.2, 0.1) with p=0.8, RandomGrayscale p=0.2; then Gaussian blur (kernel 9,
    sigma ~ U(0.1, 2.0)) with a per-crop probability, RandomSolarize(128) p=0.2 on global crop 2 only, and
    ImageNet normalisation. Geometry and colour run on PIL (fastest), blur and solarisation on the uint8 tensor
    (what torchvision's PIL blur does internally), so the numerics match the upstream PIL pipeline.

    Cost is dominated by per-op overhead, not pixels: about 9 ms per image for 2 x 64 + 8 x 32 px crops on one
    CPU core. Crops run on one intra-op thread (:func:`single_threaded`), as multi-threaded tiny convolutions (the
    blur) are many times slower; DataLoader workers overlap them with training.

    Args:
        global_size, local_size: crop sides G and L.
        n_local: number of local crops (0 allowed).
        global_scale, local_scale: RandomResizedCrop area ranges.
        blur_probabilities: "official" reproduces the released DINOv2 behaviour, whose wrapper passes ``1 - p``
            to RandomApply: effective blur probabilities global-1 0.0, global-2 0.9, local 0.5 (the default,
            because released checkpoints were trained this way); "intended" uses the documented 1.0 / 0.1 / 0.5;
            or an explicit (global-1, global-2, local) triple.
        solarize_probability: of global crop 2.
        mean, std: normalisation of every output.
        image_size: side S of the un-augmented view returned as ``"image"`` (resize short side, center crop,
            normalise: the input of the reconstruction / contrastive branches, a guess at how VTP feeds them);
            None: ``global_size``; 0: no ``"image"`` key.
        crops_per_batch: 0: crops for every sample. n > 0: crops only for the first n samples of each batch, made
            in :meth:`collate` (the SSL losses use a subset of the batch, paper section 3; the first n samples of
            a shuffled batch are a uniformly random subset, and the crops of the rest would be thrown away).
            Needs :meth:`collate` as the DataLoader's collate_fn.
    """

    def __init__(
        self,
        global_size: int = 224,
        local_size: int = 96,
        n_local: int = 8,
        global_scale: tuple[float, float] = (0.32, 1.0),
        local_scale: tuple[float, float] = (0.05, 0.32),
        blur_probabilities: Literal["official", "intended"] | tuple[float, float, float] = "official",
        solarize_probability: float = 0.2,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        image_size: int | None = None,
        crops_per_batch: int = 0,
    ):
        if isinstance(blur_probabilities, str):
            if blur_probabilities not in BLUR_PROBABILITIES:
                raise ValueError(f"blur_probabilities must be one of {list(BLUR_PROBABILITIES)} or 3 floats")
            blur_probabilities = BLUR_PROBABILITIES[blur_probabilities]
        if len(blur_probabilities) != 3 or not all(0 <= p <= 1 for p in blur_probabilities):
            raise ValueError(f"expected 3 blur probabilities in [0, 1], got {blur_probabilities}")
        if n_local < 0:
            raise ValueError(f"n_local must be >= 0, got {n_local}")
        self.blur_probabilities = tuple(float(p) for p in blur_probabilities)
        self.n_local = n_local
        p1, p2, p_local = self.blur_probabilities
        self.global_1 = self._crop_pipeline(global_size, global_scale, p1, 0.0, mean, std)
        self.global_2 = self._crop_pipeline(global_size, global_scale, p2, solarize_probability, mean, std)
        self.local = self._crop_pipeline(local_size, local_scale, p_local, 0.0, mean, std)
        image_size = global_size if image_size is None else image_size
        self.view = reconstruction_transform(image_size, mean, std) if image_size else None
        if crops_per_batch < 0:
            raise ValueError(f"crops_per_batch must be >= 0, got {crops_per_batch}")
        self.crops_per_batch = crops_per_batch

    @staticmethod
    def _crop_pipeline(
        size: int,
        scale: tuple[float, float],
        blur_p: float,
        solarize_p: float,
        mean: Sequence[float],
        std: Sequence[float],
    ) -> v2.Compose:
        steps: list[v2.Transform] = [
            v2.RandomResizedCrop(size, scale=scale, interpolation=BICUBIC, antialias=True),
            v2.RandomHorizontalFlip(p=0.5),
            v2.RandomApply([v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)], p=0.8),
            v2.RandomGrayscale(p=0.2),
            v2.ToImage(),  # uint8 tensor from here on
            *_maybe(v2.GaussianBlur(kernel_size=9, sigma=(0.1, 2.0)), blur_p),
            *_maybe(v2.RandomSolarize(threshold=128, p=1.0), solarize_p),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(mean), list(std)),
        ]
        return v2.Compose(steps)

    def crops(self, image: Image.Image | torch.Tensor) -> dict[str, list[torch.Tensor]]:
        """One image -> {"global_crops": [2 x (3, G, G)], "local_crops": [n x (3, L, L)]} (callers run it on one
        thread, :func:`single_threaded`, once per sample or batch)."""
        return {
            "global_crops": [self.global_1(image), self.global_2(image)],
            "local_crops": [self.local(image) for _ in range(self.n_local)],
        }

    def __call__(self, image: Image.Image | torch.Tensor) -> dict[str, Any]:
        """One image -> crops (or, with ``crops_per_batch``, the source and a crop seed) and ``"image"`` (3, S, S).

        The crop seed is drawn from the caller's RNG (per-sample seeded by the trainer's data sets), so crops made
        later in :meth:`collate` are the same whichever worker or resume point builds the batch.
        """
        if self.crops_per_batch:
            out: dict[str, Any] = {"crop_source": image, "crop_seed": int(torch.randint(0, 2**62, ()))}
        else:
            with single_threaded():
                out = self.crops(image)
        if self.view is not None:
            out["image"] = self.view(image)
        return out

    def collate(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Batch samples of this augmentation (the collate_fn to use): crops of the first ``crops_per_batch``."""
        if not self.crops_per_batch:
            return collate_multicrop(samples)
        if not samples:
            raise ValueError("cannot collate an empty list of samples")
        crops = []
        with single_threaded():
            for s in samples[: self.crops_per_batch]:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(s["crop_seed"])
                    crops.append(self.crops(s["crop_source"]))
        batch = collate_image_text([{k: v for k, v in s.items() if k not in CROP_KEYS} for s in samples])
        batch.update(collate_multicrop(crops))
        return batch


def collate_multicrop(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack crop ``i`` of every sample into one (B, 3, side, side) tensor; other keys as ``collate_image_text``."""
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    batch: dict[str, Any] = {}
    for key in ("global_crops", "local_crops"):
        counts = {len(s[key]) for s in samples}
        if len(counts) != 1:
            raise ValueError(f"samples have different numbers of {key}: {sorted(counts)}")
        batch[key] = [torch.stack([s[key][i] for s in samples]) for i in range(counts.pop())]
    rest = [{k: v for k, v in s.items() if k not in batch} for s in samples]
    if any(rest):
        batch.update(collate_image_text(rest))
    return batch


def reconstruction_transform(
    size: int, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> v2.Compose:
    """Resize the short side to ``size`` (bicubic, antialiased), center crop ``size`` x ``size``, normalise."""
    return v2.Compose(
        [
            v2.Resize(size, interpolation=BICUBIC, antialias=True),
            v2.CenterCrop(size),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(mean), list(std)),
        ]
    )


def adm_center_crop(pil: Image.Image, size: int) -> Image.Image:
    """ADM / LightningDiT ``center_crop_arr``: the reference preprocessing of ImageNet FID evaluations.

    Halve with a BOX filter while the short side is at least ``2 * size``, resize (BICUBIC) so the short side
    is ``size`` (the other side rounded), then take the centered ``size`` x ``size`` crop (offsets rounded down).
    """
    while min(pil.size) >= 2 * size:
        pil = pil.resize(tuple(s // 2 for s in pil.size), resample=Image.BOX)
    factor = size / min(pil.size)
    pil = pil.resize(tuple(round(s * factor) for s in pil.size), resample=Image.BICUBIC)
    arr = np.asarray(pil)
    top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return Image.fromarray(arr[top : top + size, left : left + size])
