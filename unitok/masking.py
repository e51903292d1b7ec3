"""Block-wise masks for masked-token objectives (BEiT / DINOv2 iBOT), on 2-D patch grids and 1-D frame sequences.

:class:`BlockMaskGenerator` places random rectangles (log-uniform aspect ratio) until a target number of patches
is masked; on a 1-D grid (``(n,)``, ``(1, n)`` or ``(n, 1)``) the rectangles are spans of frames.
:func:`sample_ibot_masks` draws the masks of a batch of crops the way DINOv2's collate function does: a fixed
number of crops is masked, with mask ratios stratified over the range.

Randomness comes from a ``random.Random``, a CPU ``torch.Generator``, or (None) Python's global ``random`` module,
which the DataLoader seeds per worker.

Shape legend:
    B: crops in the batch, h, w: grid height and width, N = h * w: patches per crop
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from typing import Any

import torch

RandomSource = random.Random | torch.Generator | None


class _TorchRandom:
    """The few ``random.Random`` methods used here, drawn from a torch.Generator."""

    def __init__(self, generator: torch.Generator):
        self.generator = generator

    def uniform(self, a: float, b: float) -> float:
        return a + (b - a) * float(torch.rand((), generator=self.generator))

    def randint(self, a: int, b: int) -> int:
        return int(torch.randint(a, b + 1, (), generator=self.generator))

    def shuffle(self, items: list) -> None:
        perm = torch.randperm(len(items), generator=self.generator).tolist()
        items[:] = [items[i] for i in perm]


def _random(generator: RandomSource) -> Any:
    if generator is None:
        return random  # the module has the same uniform/randint/shuffle API as random.Random
    if isinstance(generator, torch.Generator):
        return _TorchRandom(generator)
    if isinstance(generator, random.Random):
        return generator
    raise TypeError(f"generator must be a random.Random, a torch.Generator or None, got {type(generator).__name__}")


def _grid_shape(grid: Sequence[int]) -> tuple[int, ...]:
    if isinstance(grid, int):
        # Guess: upstream reads an int as a square grid; here it is ambiguous with a 1-D length, so refuse it.
        raise TypeError(f"grid must be a tuple: ({grid}, {grid}) for a square grid or ({grid},) for a 1-D sequence")
    shape = tuple(int(g) for g in grid)
    if len(shape) not in (1, 2) or min(shape) < 1:
        raise ValueError(f"grid must be (n,) or (h, w) with positive sizes, got {tuple(grid)}")
    return shape


class BlockMaskGenerator:
    """BEiT / DINOv2 block-wise mask generator.

    Calling it with a target count ``t`` repeatedly adds a block: up to :attr:`max_tries` times, draw an area
    ``U(min_num_patches, budget)`` with ``budget = min(t - masked, max_num_patches)`` and an aspect ratio
    (h / w) log-uniform in ``[min_aspect, max_aspect]``, round to a (h, w) rectangle at a random position and
    accept it if it adds between 1 and ``budget`` new patches. It stops at ``t`` masked patches or when a block
    cannot be placed, so the result has at most ``t`` patches (often slightly fewer).

    2-D grids follow upstream exactly, including its strict bound: a block is narrower and shorter than the
    grid. On 1-D grids the block is a span of ``round(area)`` frames (aspect unused) that may be as long as the
    grid (guess: the spec does not cover 1-D).

    Args:
        grid: (h, w) patch grid, or (n,) for a sequence; (1, n) and (n, 1) are also treated as sequences.
        min_num_patches: smallest block area drawn.
        max_num_patches: most new patches one block may add (default: half the grid).
        min_aspect: smallest h / w of a block.
        max_aspect: largest h / w (default ``1 / min_aspect``).
    """

    max_tries = 10

    def __init__(
        self,
        grid: Sequence[int],
        min_num_patches: int = 4,
        max_num_patches: float | None = None,
        min_aspect: float = 0.3,
        max_aspect: float | None = None,
    ):
        self.shape = _grid_shape(grid)
        self.height, self.width = (1, self.shape[0]) if len(self.shape) == 1 else self.shape
        self.num_patches = self.height * self.width
        self.is_1d = min(self.height, self.width) == 1
        self.min_num_patches = min_num_patches
        self.max_num_patches = 0.5 * self.num_patches if max_num_patches is None else max_num_patches
        if min_num_patches < 1 or self.max_num_patches < 1:
            raise ValueError(f"min/max_num_patches must be >= 1, got {min_num_patches}, {self.max_num_patches}")
        if min_aspect <= 0:
            raise ValueError(f"min_aspect must be > 0, got {min_aspect}")
        max_aspect = 1 / min_aspect if max_aspect is None else max_aspect
        if max_aspect < min_aspect:
            raise ValueError(f"need 0 < min_aspect <= max_aspect, got {min_aspect}, {max_aspect}")
        self.log_aspect = (math.log(min_aspect), math.log(max_aspect))

    def __repr__(self) -> str:
        return (
            f"BlockMaskGenerator(grid={self.shape}, min_num_patches={self.min_num_patches}, "
            f"max_num_patches={self.max_num_patches}, aspect=({math.exp(self.log_aspect[0]):.3g}, "
            f"{math.exp(self.log_aspect[1]):.3g}))"
        )

    def __call__(self, num_masking_patches: int, generator: RandomSource = None) -> torch.Tensor:
        """Bool mask of the grid's shape with at most ``num_masking_patches`` True entries."""
        if num_masking_patches < 0:
            raise ValueError(f"num_masking_patches must be >= 0, got {num_masking_patches}")
        rng = _random(generator)
        mask = torch.zeros(self.height, self.width, dtype=torch.bool)
        count = 0
        while count < num_masking_patches:
            delta = self._add_block(mask, min(num_masking_patches - count, self.max_num_patches), rng)
            if delta == 0:
                break
            count += delta
        return mask.reshape(self.shape)

    def _block_size(self, area: float, rng: Any) -> tuple[int, int]:
        if self.is_1d:
            length = int(round(area))
            return (1, length) if self.height == 1 else (length, 1)
        aspect = math.exp(rng.uniform(*self.log_aspect))
        return int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))

    def _fits(self, h: int, w: int) -> bool:
        if self.is_1d:
            return 1 <= h <= self.height and 1 <= w <= self.width
        return 0 < h < self.height and 0 < w < self.width

    def _add_block(self, mask: torch.Tensor, budget: float, rng: Any) -> int:
        """Try to add one block of at most ``budget`` new patches in place; returns how many were added."""
        for _ in range(self.max_tries):
            h, w = self._block_size(rng.uniform(self.min_num_patches, budget), rng)
            if not self._fits(h, w):
                continue
            top, left = rng.randint(0, self.height - h), rng.randint(0, self.width - w)
            region = mask[top : top + h, left : left + w]
            new = h * w - int(region.sum())
            if 0 < new <= budget:
                region.fill_(True)
                return new
        return 0


def sample_ibot_masks(
    batch_size: int,
    grid: Sequence[int],
    mask_ratio: tuple[float, float] = (0.1, 0.5),
    mask_probability: float = 0.5,
    generator: RandomSource = None,
    mask_generator: Callable[[int, RandomSource], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Masks for a batch of student global crops, as DINOv2's collate draws them.

    Exactly ``int(batch_size * mask_probability)`` crops get a mask; crop i of them draws its ratio uniformly in
    ``[p_i, p_{i+1}]`` with ``p = linspace(*mask_ratio, n_masked + 1)`` and asks the block generator for
    ``int(N * ratio)`` patches. The other crops get an empty mask, and the list is shuffled.

    Args:
        batch_size: number of crops B (all global crops of the local batch, e.g. 2 x images).
        grid: (h, w) patch grid or (n,) for a sequence.
        mask_ratio: (min, max) target ratio over the masked crops.
        mask_probability: fraction of crops that are masked.
        generator: random source (see the module docstring).
        mask_generator: ``(num_patches, generator) -> mask``; default ``BlockMaskGenerator(grid)``.

    Returns:
        (B, N) bool masks, row-major over the grid.
    """
    shape = _grid_shape(grid)
    n = math.prod(shape)
    lo, hi = mask_ratio
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"mask_ratio must satisfy 0 <= min <= max <= 1, got {mask_ratio}")
    if not 0.0 <= mask_probability <= 1.0:
        raise ValueError(f"mask_probability must be in [0, 1], got {mask_probability}")
    make_mask = mask_generator if mask_generator is not None else BlockMaskGenerator(shape)
    rng = _random(generator)
    n_masked = int(batch_size * mask_probability)
    bounds = [lo + (hi - lo) * i / n_masked for i in range(n_masked + 1)] if n_masked else []
    masks = []
    for i in range(n_masked):
        ratio = rng.uniform(bounds[i], bounds[i + 1])
        masks.append(make_mask(int(n * ratio), generator).reshape(n).bool())
    masks += [torch.zeros(n, dtype=torch.bool) for _ in range(batch_size - n_masked)]
    rng.shuffle(masks)
    return torch.stack(masks) if masks else torch.zeros(0, n, dtype=torch.bool)
