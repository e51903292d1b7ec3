"""Block-wise mask generator and iBOT batch masks: counts, stratified ratios, caps, determinism, 1-D spans."""

import random

import pytest
import torch

from unitok.masking import BlockMaskGenerator, sample_ibot_masks


class _RecordingGenerator(BlockMaskGenerator):
    """Records the number of new patches of every accepted block."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.deltas: list[int] = []
        self.blocks: list[torch.Tensor] = []

    def _add_block(self, mask, budget, rng):
        before = mask.clone()
        delta = super()._add_block(mask, budget, rng)
        if delta:
            self.deltas.append(delta)
            self.blocks.append(mask & ~before)
        return delta


def _exact(num_patches, generator):
    """A stand-in generator that masks exactly the requested number of patches of a 10 x 10 grid."""
    return torch.arange(100) < num_patches


@pytest.mark.parametrize(("batch", "prob", "n_masked"), [(10, 0.5, 5), (7, 0.5, 3), (6, 0.0, 0), (6, 1.0, 6)])
def test_exactly_int_b_times_p_crops_are_masked(batch, prob, n_masked):
    masks = sample_ibot_masks(batch, (14, 14), mask_probability=prob, generator=random.Random(0))
    assert masks.shape == (batch, 196) and masks.dtype == torch.bool
    assert int(masks.any(dim=1).sum()) == n_masked


def test_ratios_are_stratified_and_crops_shuffled():
    masks = sample_ibot_masks(40, (10, 10), (0.1, 0.5), 0.5, torch.Generator().manual_seed(0), _exact)
    counts = sorted(int(c) for c in masks.sum(1) if c > 0)
    assert len(counts) == 20
    bounds = [0.1 + 0.4 * i / 20 for i in range(21)]
    for i, c in enumerate(counts):  # the i-th smallest crop drew its ratio in [p_i, p_i+1]
        assert int(100 * bounds[i]) <= c <= int(100 * bounds[i + 1]), (i, c)
    assert not masks[:20].any(dim=1).all()  # masked crops are not simply the first ones


def test_block_masks_reach_the_upstream_ratio_statistics():
    masks = sample_ibot_masks(400, (14, 14), generator=random.Random(1))
    ratios = masks.float().mean(1)
    ratios = ratios[ratios > 0]
    assert len(ratios) == 200
    # upstream at 224/16 (verified in the spec): min 0.097, mean 0.297, max 0.495
    assert 0.08 < ratios.min() and ratios.max() <= 0.5
    assert 0.27 < ratios.mean() < 0.32


def test_determinism_with_a_seed():
    for make in (lambda s: random.Random(s), lambda s: torch.Generator().manual_seed(s)):
        a = sample_ibot_masks(8, (14, 14), generator=make(5))
        b = sample_ibot_masks(8, (14, 14), generator=make(5))
        c = sample_ibot_masks(8, (14, 14), generator=make(6))
        assert torch.equal(a, b) and not torch.equal(a, c)
    random.seed(3)
    a = BlockMaskGenerator((14, 14))(60)
    random.seed(3)
    assert torch.equal(a, BlockMaskGenerator((14, 14))(60))  # None: the global `random`, seeded per worker


def test_target_and_per_block_cap():
    assert BlockMaskGenerator((14, 14)).max_num_patches == 98  # default: half the grid
    gen = _RecordingGenerator((14, 14), max_num_patches=10)
    rng = random.Random(0)
    mask = gen(80, rng)
    assert mask.shape == (14, 14)
    assert 0 < int(mask.sum()) <= 80
    assert len(gen.deltas) > 1 and max(gen.deltas) <= 10
    assert sum(gen.deltas) == int(mask.sum())
    for target in range(0, 120, 7):
        assert int(BlockMaskGenerator((14, 14))(target, rng).sum()) <= target


def test_a_block_is_a_rectangle_within_the_aspect_range():
    gen = _RecordingGenerator((14, 14))
    rng = random.Random(2)
    for _ in range(30):
        gen(40, rng)
    assert len(gen.blocks) > 30
    for block in gen.blocks:
        rows, cols = block.any(1).nonzero().flatten(), block.any(0).nonzero().flatten()
        h, w = int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
        assert h < 14 and w < 14  # upstream's strict bound
    # blocks placed on an empty mask are full rectangles with a bounded aspect ratio
    gen = _RecordingGenerator((14, 14), max_num_patches=40)
    for seed in range(20):
        gen.blocks.clear()
        gen(40, random.Random(seed))
        b = gen.blocks[0]
        rows, cols = b.any(1).nonzero().flatten(), b.any(0).nonzero().flatten()
        h, w = int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
        assert int(b.sum()) == h * w
        assert 0.3 / 2 <= h / w <= 2 / 0.3  # aspect 0.3..3.33 before rounding to whole patches


@pytest.mark.parametrize("grid", [(50,), (1, 50), (50, 1)])
def test_one_dimensional_grids_get_spans(grid):
    gen = BlockMaskGenerator(grid, max_num_patches=10, min_num_patches=10)
    mask = gen(10, random.Random(0))  # one span of exactly 10 frames
    assert mask.shape == grid
    idx = mask.flatten().nonzero().flatten()
    assert len(idx) == 10 and int(idx.max() - idx.min()) == 9
    masks = sample_ibot_masks(6, grid, generator=random.Random(0))
    assert masks.shape == (6, 50)
    assert int(masks.any(1).sum()) == 3 and int(masks.sum(1).max()) <= 25


def test_same_seed_gives_the_same_spans_for_both_1d_layouts():
    a = BlockMaskGenerator((50,))(20, random.Random(4))
    b = BlockMaskGenerator((1, 50))(20, random.Random(4))
    assert torch.equal(a, b.flatten()) and int(a.sum()) > 0


def test_bad_arguments_fail_clearly():
    with pytest.raises(TypeError, match="square grid"):
        BlockMaskGenerator(14)
    with pytest.raises(ValueError, match="grid"):
        BlockMaskGenerator((2, 3, 4))
    with pytest.raises(ValueError, match="aspect"):
        BlockMaskGenerator((4, 4), min_aspect=0.0)
    with pytest.raises(TypeError, match="generator"):
        BlockMaskGenerator((4, 4))(3, generator=0)
    with pytest.raises(ValueError, match="mask_ratio"):
        sample_ibot_masks(4, (4, 4), mask_ratio=(0.5, 0.1))
