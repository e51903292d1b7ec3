from functools import partial

import pytest
import torch

from unitok.layers.blocks import ffn_hidden_dim
from unitok.models.transformer import TransformerConfig, TransformerStack
from unitok.testing import random_tokens


def small(**kw) -> TransformerConfig:
    return TransformerConfig(**{"dim": 64, "depth": 3, "num_heads": 2, **kw})


def test_swiglu_hidden_rule_matches_vtp():
    assert ffn_hidden_dim(384, 4, "swiglu") == 1024
    assert ffn_hidden_dim(768, 4, "swiglu") == 2048
    assert ffn_hidden_dim(1024, 4, "swiglu") == 2736
    assert ffn_hidden_dim(64, 4, "swiglu") == 176
    assert ffn_hidden_dim(64, 4, "swiglu", align_to=64) == 192
    assert ffn_hidden_dim(64, 4, "mlp") == 256


def test_stack_equals_timm_eva_with_fp32_rope():
    """timm's Eva with DINOv3 RoPE is the reference implementation of the VTP trunk (spec section 3)."""
    from timm.layers import RmsNorm
    from timm.models.eva import Eva

    cfg = small(depth=2)
    ours = TransformerStack(cfg).eval()
    eva = Eva(img_size=64, patch_size=16, embed_dim=64, depth=2, num_heads=2, qkv_bias=True, qkv_fused=True,
              attn_type="rope", mlp_ratio=176 / 64, swiglu_mlp=True, swiglu_align_to=8,
              norm_layer=partial(RmsNorm, eps=1e-5), class_token=True, num_reg_tokens=0, use_abs_pos_emb=False,
              use_rot_pos_emb=True, rope_type="dinov3", rope_temperature=100, rope_rotate_half=True,
              dynamic_img_size=True, use_fc_norm=False, num_classes=0).eval()  # fmt: skip
    sd = {k: v for k, v in ours.state_dict().items() if k != "mask_token"}
    missing, unexpected = eva.load_state_dict(sd, strict=False)
    assert not unexpected and set(missing) <= {"patch_embed.proj.weight", "patch_embed.proj.bias"}
    img = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        embedded = eva.patch_embed(img).flatten(1, 2)
        from unitok.layers.rope import grid_coords

        out = ours(embedded, grid_coords((4, 4)).expand(2, -1, -1))
        ref = eva.forward_features(img)
    assert torch.allclose(torch.cat([out.prefix, out.tokens], 1), ref, atol=1e-5)


def test_prefix_tokens_layout_and_cls():
    stack = TransformerStack(small(num_registers=3)).eval()
    t = random_tokens(2, (3, 3), 64)
    out = stack(t.x, t.coords)
    assert out.prefix.shape == (2, 4, 64) and out.tokens.shape == (2, 9, 64) and out.prenorm.shape == (2, 13, 64)
    assert torch.equal(out.cls, out.prefix[:, 0])
    with pytest.raises(ValueError, match="no CLS"):
        _ = TransformerStack(small(class_token=False)).eval()(t.x, t.coords).cls


def test_mask_token_replaces_only_masked_inputs():
    stack = TransformerStack(small()).eval()
    torch.nn.init.normal_(stack.mask_token)
    t = random_tokens(2, (2, 4), 64)
    none = stack(t.x, t.coords)
    all_false = stack(t.x, t.coords, token_mask=torch.zeros(2, 8, dtype=torch.bool))
    assert torch.allclose(none.tokens, all_false.tokens, atol=1e-6)
    token_mask = torch.zeros(2, 8, dtype=torch.bool)
    token_mask[0, 3] = True
    x2 = t.x.clone()
    x2[0, 3] = 123.0  # a masked input's value must not matter
    a = stack(t.x, t.coords, token_mask=token_mask)
    b = stack(x2, t.coords, token_mask=token_mask)
    assert torch.allclose(a.tokens, b.tokens) and not torch.allclose(a.tokens, none.tokens)
    with pytest.raises(ValueError, match="no mask token"):
        TransformerStack(small(mask_token=False))(t.x, t.coords, token_mask=token_mask)


def test_padding_is_never_attended():
    stack = TransformerStack(small(coord_ndim=1, num_heads=2)).eval()
    t = random_tokens(2, (6,), 64, lengths=[4, 6])
    full = stack(t.x, t.coords, t.mask)
    x2 = t.x.clone()
    x2[0, 4:] = 1e3  # garbage in sample 0's padding
    garbage = stack(x2, t.coords, t.mask)
    alone = stack(t.x[:1, :4], t.coords[:1, :4])
    assert torch.allclose(full.tokens[0, :4], garbage.tokens[0, :4], atol=1e-5)
    assert torch.allclose(full.tokens[0, :4], alone.tokens[0], atol=1e-5)


def test_forward_intermediates_indices_norm_and_early_stop():
    stack = TransformerStack(small(depth=4)).eval()
    t = random_tokens(1, (2, 2), 64)
    every, final = stack.forward_intermediates(t.x, t.coords, stop_early=False)
    assert len(every) == 4 and torch.allclose(final, stack.norm(every[-1]))
    last2, final2 = stack.forward_intermediates(t.x, t.coords, indices=2)
    assert final2 is not None and all(torch.equal(a, b) for a, b in zip(last2, every[2:], strict=True))
    picked, stopped = stack.forward_intermediates(t.x, t.coords, indices=[0, -3], norm=True)
    assert stopped is None and torch.allclose(picked[1], stack.norm(every[1]))
    out = stack(t.x, t.coords)
    assert torch.allclose(out.prenorm, every[-1])
    for bad in (5, [4], [-5]):
        with pytest.raises(ValueError, match="range|last"):
            stack.forward_intermediates(t.x, t.coords, indices=bad)


@pytest.mark.parametrize(
    "kw, names",
    [
        ({"init_values": 1e-5}, ["blocks.0.ls1.gamma", "blocks.0.ls2.gamma"]),
        ({"qk_norm": True}, ["blocks.0.attn.q_norm.weight", "blocks.0.attn.k_norm.weight"]),
        ({"ffn": "mlp"}, ["blocks.0.mlp.fc1.weight", "blocks.0.mlp.fc2.bias"]),
        ({"norm": "layernorm"}, ["blocks.0.norm1.bias", "norm.bias"]),
        ({"num_registers": 2}, ["reg_token"]),
    ],
)
def test_switches_create_their_parameters(kw, names):
    stack = TransformerStack(small(**kw))
    keys = stack.state_dict().keys()
    for n in names:
        assert n in keys
    if "init_values" in kw:
        assert torch.all(stack.blocks[0].ls1.gamma == 1e-5)
    t = random_tokens(1, (2, 2), 64)
    assert torch.isfinite(stack(t.x, t.coords).tokens).all()


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    a = TransformerStack(small())
    b = TransformerStack(small(grad_checkpointing=True))
    b.load_state_dict(a.state_dict())
    t = random_tokens(2, (2, 2), 64)
    for m in (a, b):
        m(t.x, t.coords).tokens.square().mean().backward()
    for (n, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        if pa.grad is not None:
            assert torch.allclose(pa.grad, pb.grad, atol=1e-6), n


def test_drop_path_only_in_training():
    stack = TransformerStack(small(drop_path_rate=0.5))
    t = random_tokens(4, (2, 2), 64)
    stack.eval()
    assert torch.equal(stack(t.x, t.coords).tokens, stack(t.x, t.coords).tokens)
    stack.train()
    torch.manual_seed(1)
    a = stack(t.x, t.coords).tokens
    torch.manual_seed(2)
    assert not torch.allclose(a, stack(t.x, t.coords).tokens)


def test_wrong_widths_are_named():
    stack = TransformerStack(small())
    with pytest.raises(ValueError, match=r"\(B, N, 64\)"):
        stack(torch.randn(1, 4, 32), torch.rand(1, 4, 2))
    with pytest.raises(ValueError, match="coordinates for"):
        stack(torch.randn(1, 4, 64), torch.rand(1, 5, 2))
    with pytest.raises(ValueError, match="divisible"):
        TransformerStack(small(num_heads=3))
