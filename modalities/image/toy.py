"""Embedded procedural images with captions: no download, deterministic, for demos and tests.

Every image is drawn from a :class:`ShapeSpec` (shape, colour, size, position, texture, background), and its
caption names them ("a large red striped circle at the top left on a dark background"). The same index and
seed always give the same image.

:class:`ToyShapes` is a torch Dataset of such images for classification-style demos: the class of an image is its
(shape, colour) pair, everything else (size, position, texture, background and a small continuous jitter of
position and scale) varies freely, and ``classnames`` / ``templates`` feed open_clip's zero-shot classifier.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

from unitok.modalities.image.adapter import IMAGENET_MEAN, IMAGENET_STD

COLORS = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 205, 40),
    "purple": (140, 60, 190), "orange": (240, 140, 30), "cyan": (40, 200, 210), "pink": (240, 120, 180),
}  # fmt: skip
SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ring")
# Shape diameters as fractions of the image side. GUESS from informal tuning runs: with small shapes (0.28 / 0.5)
# a ViT with 16-px patches on 64-px images learned shape far more slowly than at 0.45 / 0.7. A large shape at a
# corner position overlaps the border by 1.6 px at 64 px.
SIZES = {"small": 0.45, "large": 0.65}
POSITIONS = {
    "top left": (0.3, 0.3), "top right": (0.7, 0.3), "center": (0.5, 0.5),
    "bottom left": (0.3, 0.7), "bottom right": (0.7, 0.7),
}  # fmt: skip
TEXTURES = ("solid", "striped", "dotted")
BACKGROUNDS = {"dark": (30, 30, 38), "light": (225, 225, 215), "gray": (128, 128, 128)}


@dataclass(frozen=True)
class ShapeSpec:
    shape: str
    color: str
    size: str
    position: str
    texture: str
    background: str

    def caption(self, omit: frozenset[str] | set[str] = frozenset()) -> str:
        """The caption naming every attribute except those in ``omit`` (size, texture, position, background)."""
        size = "" if "size" in omit else f" {self.size}"
        texture = "" if self.texture == "solid" or "texture" in omit else f" {self.texture}"
        text = f"a{size} {self.color}{texture} {self.shape}"
        if "position" not in omit:
            text += f" at the {self.position}"
        if "background" not in omit:
            text += f" on a {self.background} background"
        return text


def random_spec(rng: random.Random) -> ShapeSpec:
    """One random combination (uniform over every attribute)."""
    return ShapeSpec(
        shape=rng.choice(SHAPES),
        color=rng.choice(list(COLORS)),
        size=rng.choice(list(SIZES)),
        position=rng.choice(list(POSITIONS)),
        texture=rng.choice(TEXTURES),
        background=rng.choice(list(BACKGROUNDS)),
    )


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "triangle":
        return [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]
    t = r / 3  # cross
    return [
        (cx - t, cy - r),
        (cx + t, cy - r),
        (cx + t, cy - t),
        (cx + r, cy - t),
        (cx + r, cy + t),
        (cx + t, cy + t),
        (cx + t, cy + r),
        (cx - t, cy + r),
        (cx - t, cy + t),
        (cx - r, cy + t),
        (cx - r, cy - t),
        (cx - t, cy - t),
    ]


def _texture(size: int, texture: str, color: tuple[int, int, int]) -> Image.Image:
    fill = Image.new("RGB", (size, size), color)
    if texture == "solid":
        return fill
    draw = ImageDraw.Draw(fill)
    dark = tuple(int(c * 0.45) for c in color)
    step = max(4, size // 12)
    if texture == "striped":
        for x in range(-size, size, step):
            draw.line([(x, 0), (x + size, size)], fill=dark, width=max(1, step // 3))
    else:
        for y in range(step // 2, size, step):
            for x in range(step // 2, size, step):
                draw.ellipse([x - step / 5, y - step / 5, x + step / 5, y + step / 5], fill=dark)
    return fill


def render(
    spec: ShapeSpec, size: int = 64, *, offset: tuple[float, float] = (0.0, 0.0), scale: float = 1.0
) -> Image.Image:
    """Draw one image of ``size`` x ``size`` pixels.

    Args:
        spec: what to draw.
        size: image side in pixels.
        offset: shift of the shape centre from its named position, in fractions of the image side.
        scale: factor on the named shape size.
    """
    img = Image.new("RGB", (size, size), BACKGROUNDS[spec.background])
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    fx, fy = POSITIONS[spec.position]
    cx, cy, r = (fx + offset[0]) * size, (fy + offset[1]) * size, SIZES[spec.size] * scale * size / 2
    box = [cx - r, cy - r, cx + r, cy + r]
    if spec.shape == "circle":
        draw.ellipse(box, fill=255)
    elif spec.shape == "square":
        draw.rectangle(box, fill=255)
    elif spec.shape == "ring":
        draw.ellipse(box, fill=255)
        inner = r * 0.55
        draw.ellipse([cx - inner, cy - inner, cx + inner, cy + inner], fill=0)
    else:
        draw.polygon(_polygon(spec.shape, cx, cy, r), fill=255)
    img.paste(_texture(size, spec.texture, COLORS[spec.color]), (0, 0), mask)
    return img


def sample_images(n: int, size: int = 64, seed: int = 0) -> tuple[torch.Tensor, list[str]]:
    """``n`` deterministic images as a (n, 3, size, size) float tensor in [0, 1] and their captions."""
    rng = random.Random(seed)
    specs = [random_spec(rng) for _ in range(n)]
    arrays = [np.asarray(render(s, size), dtype=np.float32) / 255.0 for s in specs]
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return images, [s.caption() for s in specs]


# ---------------------------------------------------------------------------------------------------------------
# ToyShapes: a classification / zero-shot data set over the procedural images.

# Default class set: 6 shapes x 4 colours = 24 classes. 48 classes (all 8 colours) is too many for a 10-minute
# CPU demo; the four colours chosen are the most distinct hues of COLORS (guess: red/green/blue/yellow separate
# best after ColorJitter's hue shift of +-0.1).
DEFAULT_CLASS_COLORS = ("red", "green", "blue", "yellow")
TEMPLATES = (
    "a photo of a {}.",
    "a {} shape.",
    "a drawing of a {}.",
    "a picture of a {} on a plain background.",
    "a {}.",
)
CAPTION_NUISANCE = ("size", "texture", "position", "background")
DEFAULT_NUM_SAMPLES = {"train": 10_000, "val": 1_200}
# Continuous jitter on top of the named attributes. No position jitter: in the same informal runs a jitter of
# 0.05 (3 px at 64 px) clearly slowed shape learning.
MAX_OFFSET = 0.0
SCALE_RANGE = (0.85, 1.1)


def _nuisance_combinations(held_out: bool) -> list[tuple[str, str, str, str]]:
    """(size, position, texture, background) combinations of a split: validation holds out the 18 of 90 whose
    attribute indices sum to 0 mod 5 (every attribute value still occurs in both splits), so no validation image
    equals a training image (with free combinations, many did: the attribute space is small)."""
    combos = itertools.product(*(enumerate(a) for a in (SIZES, POSITIONS, TEXTURES, BACKGROUNDS)))
    return [tuple(v for _, v in c) for c in combos if (sum(i for i, _ in c) % 5 == 0) == held_out]


@dataclass(frozen=True)
class ToySample:
    """Everything that determines one ToyShapes image."""

    spec: ShapeSpec
    offset: tuple[float, float]
    scale: float
    label: int


class ToyShapes(Dataset):
    """Deterministic captioned shape images whose class is the (shape, colour) pair.

    Sample ``i`` of a split is a pure function of (split, seed, i, class set, size): it does not depend on
    ``num_samples``, on the process or on earlier accesses. Labels are balanced (``label = i % num_classes``);
    the (size, position, texture, background) combination is drawn uniformly from the split's combinations and the
    caption names all of them.

    The validation split is FIXED: it comes from its own random stream that ignores ``seed``, so every run
    (whatever its training seed) evaluates on the same images; its nuisance combinations never occur in training
    (:func:`_nuisance_combinations`), so it shares no image with any training split.

    Args:
        split: "train" or "val".
        size: image side in pixels.
        num_samples: length of the split (default 10,000 train / 1,200 val).
        seed: seed of the training stream (ignored for "val").
        shapes: class shapes (subset of ``SHAPES``).
        colors: class colours (subset of ``COLORS``); default 4 colours -> 24 classes.
        transform: "tensor" (default): the ImageNet-normalised (3, H, W) float32 tensor, made straight from the
            cached pixels; None: the PIL RGB image; a callable: applied to the PIL image, and a dict result
            (e.g. from :class:`~unitok.modalities.image.augment.MultiCropAugmentation`) is merged into the sample
            (whose ``"image"`` is the normalised tensor unless the dict has one).
        caption_dropout: probability of leaving each nuisance attribute (size, texture, position, background) out
            of a caption; shape and colour are always named. GUESS for the demo: with every attribute named, a
            small batch is told apart by background and position alone and the contrastive loss never needs
            shape (a shortcut); dropping them makes the class attributes the discriminative ones.
        cache: keep rendered uint8 pixels in memory (size**2 * 3 bytes per image; 123 MB for 10k 64-px images).
            Call :meth:`precompute` before starting DataLoader workers to share one copy between them.
    """

    def __init__(
        self,
        split: Literal["train", "val"] = "train",
        size: int = 64,
        num_samples: int | None = None,
        seed: int = 0,
        shapes: Sequence[str] = SHAPES,
        colors: Sequence[str] = DEFAULT_CLASS_COLORS,
        transform: Callable[[Image.Image], Any] | Literal["tensor"] | None = "tensor",
        cache: bool = True,
        caption_dropout: float = 0.0,
    ):
        if split not in DEFAULT_NUM_SAMPLES:
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        unknown = [s for s in shapes if s not in SHAPES] + [c for c in colors if c not in COLORS]
        if unknown or not shapes or not colors:
            raise ValueError(
                f"unknown or empty class attributes {unknown}; shapes from {SHAPES}, colors from {list(COLORS)}"
            )
        if isinstance(transform, str) and transform != "tensor":
            raise ValueError(f"transform must be a callable, None or 'tensor', got {transform!r}")
        self.split = split
        self.size = size
        self.num_samples = DEFAULT_NUM_SAMPLES[split] if num_samples is None else int(num_samples)
        self.seed = seed
        self.shapes = tuple(shapes)
        self.colors = tuple(colors)
        self.transform = transform
        self.classnames = [f"{color} {shape}" for shape in self.shapes for color in self.colors]
        self.templates = list(TEMPLATES)
        self._stream = "unitok-toy/val" if split == "val" else f"unitok-toy/train/{seed}"
        self._combinations = _nuisance_combinations(held_out=split == "val")
        self._pixels: np.ndarray | None = None  # (num_samples, H, W, 3) uint8, filled lazily when cache=True
        self._filled: np.ndarray | None = None
        self.cache = cache
        if not 0.0 <= caption_dropout <= 1.0:
            raise ValueError(f"caption_dropout must be in [0, 1], got {caption_dropout}")
        self.caption_dropout = caption_dropout
        self._mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    @property
    def labels(self) -> list[int]:
        """Class of every sample (cheap: no rendering)."""
        return [i % self.num_classes for i in range(self.num_samples)]

    def __len__(self) -> int:
        return self.num_samples

    def sample(self, index: int) -> ToySample:
        """The attributes of sample ``index`` (deterministic; string seeds are hashed with SHA-512 by ``random``)."""
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.split} split of {self.num_samples} samples")
        rng = random.Random(f"{self._stream}/{index}")
        label = index % self.num_classes
        size, position, texture, background = rng.choice(self._combinations)
        spec = ShapeSpec(
            shape=self.shapes[label // len(self.colors)],
            color=self.colors[label % len(self.colors)],
            size=size,
            position=position,
            texture=texture,
            background=background,
        )
        offset = (rng.uniform(-MAX_OFFSET, MAX_OFFSET), rng.uniform(-MAX_OFFSET, MAX_OFFSET))
        return ToySample(spec=spec, offset=offset, scale=rng.uniform(*SCALE_RANGE), label=label)

    def pixels(self, index: int) -> np.ndarray:
        """(H, W, 3) uint8 pixels of sample ``index`` (cached when ``cache`` is on)."""
        if self.cache and self._filled is not None and self._filled[index]:
            return self._pixels[index]
        s = self.sample(index)
        arr = np.array(render(s.spec, self.size, offset=s.offset, scale=s.scale))  # writable copy
        if self.cache:
            if self._pixels is None:
                self._pixels = np.empty((self.num_samples, self.size, self.size, 3), dtype=np.uint8)
                self._filled = np.zeros(self.num_samples, dtype=bool)
            self._pixels[index] = arr
            self._filled[index] = True
        return arr

    def precompute(self) -> ToyShapes:
        """Render every sample into the cache now (about 13k images/s at 64 px on one core)."""
        for i in range(self.num_samples):
            self.pixels(i)
        return self

    def to_tensor(self, pixels: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 -> (3, H, W) ImageNet-normalised float32."""
        x = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1).float().div_(255.0)
        return (x - self._mean) / self._std

    def _omitted(self) -> set[str]:
        """Nuisance attributes left out of this caption (each with probability ``caption_dropout``).

        Uses Python's global ``random``, which :class:`~unitok.engine.state.EpochSeeded` seeds per (epoch, index).
        """
        if self.caption_dropout <= 0:
            return set()
        return {a for a in CAPTION_NUISANCE if random.random() < self.caption_dropout}

    def __getitem__(self, index: int) -> dict[str, Any]:
        s = self.sample(index)
        arr = self.pixels(index)
        out: dict[str, Any] = {"text": s.spec.caption(self._omitted()), "label": s.label}
        if self.transform == "tensor":
            out["image"] = self.to_tensor(arr)
        elif self.transform is None:
            out["image"] = Image.fromarray(arr)
        else:
            result = self.transform(Image.fromarray(arr))
            if isinstance(result, dict):
                out["image"] = self.to_tensor(arr)  # the clean view, unless the transform makes its own
                out.update(result)
            else:
                out["image"] = result
        return out


# ---------------------------------------------------------------------------------------------------------------
# The embedded set as an ImageFolder tree (for the evaluation CLI, which reads real folders).


def write_image_folder(root: str | Path, splits: dict[str, int] | None = None, size: int = 64, seed: int = 0) -> Path:
    """Write ToyShapes splits as ``root/<split>/<NN_class_name>/<index>.png`` plus ``classnames.txt`` and
    ``templates.txt`` (the zero-shot class names in folder order and the prompt templates).

    Args:
        splits: samples per split, default ``{"train": 2400, "val": 1200}`` (the pre-training demo's probe sizes).
        size: image side; seed: the training stream's seed (validation is fixed).
    """
    root = Path(root)
    splits = splits or {"train": 2400, "val": 1200}
    names = None
    for split, n in splits.items():
        ds = ToyShapes(split, size=size, num_samples=n, seed=seed, transform=None, cache=False)
        names = ds.classnames
        folders = [f"{i:02d}_{name.replace(' ', '_')}" for i, name in enumerate(names)]
        for folder in folders:
            (root / split / folder).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(ds.pixels(i)).save(root / split / folders[ds.sample(i).label] / f"{i:06d}.png")
    (root / "classnames.txt").write_text("\n".join(names) + "\n")
    (root / "templates.txt").write_text("\n".join(TEMPLATES) + "\n")
    return root


def main(argv: list[str] | None = None) -> None:
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m unitok.modalities.image.toy",
        description="Write the embedded ToyShapes images as an ImageFolder tree (train/ and val/, classnames.txt, "
        "templates.txt) for unitok-eval.",
        epilog="example: python -m unitok.modalities.image.toy data/toy_shapes --train 2400 --val 1200",
    )
    p.add_argument("root", help="output folder")
    p.add_argument("--train", type=int, default=2400, help="training images (linear probe, kNN)")
    p.add_argument("--val", type=int, default=1200, help="validation images")
    p.add_argument("--size", type=int, default=64)
    args = p.parse_args(argv)
    root = write_image_folder(args.root, {"train": args.train, "val": args.val}, size=args.size)
    print(f"wrote {args.train} + {args.val} images of {args.size} px under {root}")


if __name__ == "__main__":
    main()
