"""Embedded procedural images with captions: no download, deterministic, for demos and tests.

Every image is drawn from a :class:`ShapeSpec` (shape, colour, size, position, texture, background), and its
caption names them ("a large red striped circle at the top left on a dark background"). The same index and
seed always give the same image.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw

COLORS = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 205, 40),
    "purple": (140, 60, 190), "orange": (240, 140, 30), "cyan": (40, 200, 210), "pink": (240, 120, 180),
}  # fmt: skip
SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ring")
SIZES = {"small": 0.28, "large": 0.5}
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

    def caption(self) -> str:
        texture = "" if self.texture == "solid" else f" {self.texture}"
        return (
            f"a {self.size} {self.color}{texture} {self.shape} at the {self.position} on a {self.background} background"
        )


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


def render(spec: ShapeSpec, size: int = 64) -> Image.Image:
    """Draw one image of ``size`` x ``size`` pixels."""
    img = Image.new("RGB", (size, size), BACKGROUNDS[spec.background])
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    fx, fy = POSITIONS[spec.position]
    cx, cy, r = fx * size, fy * size, SIZES[spec.size] * size / 2
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
