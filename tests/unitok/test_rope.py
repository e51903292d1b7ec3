import math

import pytest
import torch

from unitok.layers.rope import AxialRoPE, apply_rope, grid_coords


def test_grid_coords_are_patch_centres_row_major():
    c = grid_coords((2, 3))
    assert c.shape == (6, 2)
    assert torch.allclose(c[:3, 0], torch.full((3,), 0.25))  # first row: h = 0.5 / 2
    assert torch.allclose(c[:3, 1], torch.tensor([1 / 6, 0.5, 5 / 6]))
    assert torch.allclose(2 * grid_coords((4, 4))[:4, 1] - 1, torch.tensor([-0.75, -0.25, 0.25, 0.75]))


def test_bf16_periods_are_the_official_table():
    rope = AxialRoPE(head_dim=32, coord_ndim=2, dtype="bfloat16")
    expected = torch.tensor([1, 1.7812, 3.1562, 5.625, 10, 17.75, 31.625, 56.25])
    assert rope.periods.dtype == torch.bfloat16
    assert torch.allclose(rope.periods.float(), expected, atol=1e-3)
    assert rope.to(torch.float16).periods.dtype == torch.bfloat16  # module casts keep the RoPE dtype


def test_fp32_2d_tables_equal_timm_dinov3():
    from timm.layers import RotaryEmbeddingDinoV3

    ours = AxialRoPE(head_dim=32, coord_ndim=2)
    theirs = RotaryEmbeddingDinoV3(dim=32, temperature=100)
    for shape in [(4, 4), (3, 5)]:
        sin, cos = ours(grid_coords(shape))
        ref = theirs.get_embed(list(shape))
        assert torch.allclose(torch.cat([sin, cos], -1), ref, atol=1e-6)


@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_scores_depend_only_on_relative_position(ndim):
    rope = AxialRoPE(head_dim=24, coord_ndim=ndim)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 1, 1, 24, generator=g), torch.randn(1, 1, 1, 24, generator=g)
    shift = torch.rand(ndim, generator=g)

    def score(pq, pk):
        sq, cq = rope(pq.view(1, ndim))
        sk, ck = rope(pk.view(1, ndim))
        return (apply_rope(q, sq, cq) * apply_rope(k, sk, ck)).sum()

    a, b = torch.rand(ndim, generator=g), torch.rand(ndim, generator=g)
    assert torch.allclose(score(a, b), score(a + shift, b + shift), atol=1e-5)
    assert not torch.allclose(score(a, b), score(a, b + shift), atol=1e-3)


def test_rotation_preserves_norm_and_skips_prefix():
    rope = AxialRoPE(head_dim=16, coord_ndim=1)
    x = torch.randn(2, 3, 5, 16)
    sin, cos = rope(torch.rand(2, 4, 1))
    y = apply_rope(x, sin, cos, num_prefix_tokens=1)
    assert torch.equal(y[:, :, 0], x[:, :, 0])
    assert torch.allclose(y.norm(dim=-1), x.norm(dim=-1), atol=1e-5)
    assert not torch.allclose(y[:, :, 1:], x[:, :, 1:])


def test_bf16_mode_rounds_q_like_upstream_and_keeps_dtype():
    rope = AxialRoPE(head_dim=16, coord_ndim=2, dtype="bfloat16")
    x = torch.randn(1, 1, 5, 16, dtype=torch.float32)
    sin, cos = rope(grid_coords((2, 2)))
    y = apply_rope(x, sin, cos, num_prefix_tokens=1)
    assert y.dtype == torch.float32
    assert torch.equal(y[..., 0, :], x[..., 0, :].bfloat16().float())  # the prefix goes through bf16 too


def test_expanded_batch_coords_computed_once_with_same_result():
    rope = AxialRoPE(head_dim=16, coord_ndim=2)
    c = grid_coords((3, 3))
    sin_b, cos_b = rope(c.unsqueeze(0).expand(4, -1, -1))
    sin, cos = rope(c)
    assert sin_b.shape == (4, 9, 16) and torch.equal(sin_b[2], sin) and torch.equal(cos_b[3], cos)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="divisible"):
        AxialRoPE(head_dim=10, coord_ndim=2)
    with pytest.raises(ValueError, match="dtype"):
        AxialRoPE(head_dim=16, coord_ndim=2, dtype="float16")
    with pytest.raises(ValueError, match="2-d coordinates"):
        AxialRoPE(head_dim=16, coord_ndim=2)(torch.rand(4, 1))
    assert math.isclose(AxialRoPE(16, 1).periods[-1].item(), 100 ** (7 / 8), rel_tol=1e-6)
