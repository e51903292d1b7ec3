"""DINOHead: MLP layout and init, L2 bottleneck, weight-normalised prototype layer with a trainable gain."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from unitok.models.heads import DINOHead, l2_normalize_bottleneck


def _head(**kw) -> DINOHead:
    args = {"in_dim": 32, "out_dim": 64, "hidden_dim": 48, "bottleneck_dim": 16, "nlayers": 3} | kw
    return DINOHead(**args)


def test_output_shape_and_logits_bounded_by_the_unit_gain():
    head = _head()
    assert head(torch.randn(5, 32)).shape == (5, 64)
    out = head(torch.randn(2, 3, 32) * 100)
    assert out.shape == (2, 3, 64)
    # unit bottleneck and unit-norm prototypes (g = 1): every logit is a cosine
    assert out.abs().max() <= 1 + 1e-5


def test_forward_is_the_direct_formula():
    head = _head()
    with torch.no_grad():
        head.weight_g.uniform_(0.5, 2.0)  # a non-trivial gain must scale the prototypes row-wise
    x = torch.randn(4, 32)
    z = head.mlp[4](F.gelu(head.mlp[2](F.gelu(head.mlp[0](x)))))
    z = z / z.norm(dim=-1, keepdim=True)
    w = head.weight_g * head.weight_v / head.weight_v.norm(dim=1, keepdim=True)
    assert torch.allclose(head(x), z @ w.T, atol=1e-6)


def test_mlp_layout_and_init():
    head = DINOHead(256, out_dim=8, hidden_dim=512, bottleneck_dim=128, nlayers=3)
    kinds = [type(m) for m in head.mlp]
    assert kinds == [nn.Linear, nn.GELU, nn.Linear, nn.GELU, nn.Linear]  # nothing after the bottleneck
    linears = [m for m in head.mlp if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(256, 512), (512, 512), (512, 128)]
    for m in linears:
        assert torch.count_nonzero(m.bias) == 0
        assert m.weight.std().item() == pytest.approx(0.02, rel=0.05)
    single = DINOHead(32, out_dim=8, bottleneck_dim=16, nlayers=1)
    assert [type(m) for m in single.mlp] == [nn.Linear] and single.mlp[0].out_features == 16
    with pytest.raises(ValueError, match="nlayers"):
        DINOHead(32, nlayers=0)


def test_weight_norm_gain_is_trainable_initialised_to_one_and_named():
    head = _head()
    params = dict(head.named_parameters())
    assert params[DINOHead.GAIN_PARAM] is head.weight_g
    assert params[DINOHead.DIRECTION_PARAM] is head.weight_v
    assert head.weight_g.shape == (64, 1) and head.weight_v.shape == (64, 16)
    assert torch.equal(head.weight_g, torch.ones(64, 1))
    assert head.weight_g.requires_grad
    head(torch.randn(3, 32)).pow(2).sum().backward()
    assert head.weight_g.grad is not None and head.weight_g.grad.abs().sum() > 0


def test_last_layer_parameters_can_be_frozen_alone():
    head = _head()
    last = head.last_layer_parameters()
    assert {id(p) for p in last} == {id(head.weight_g), id(head.weight_v)}
    mlp_ids = {id(p) for p in head.mlp.parameters()}
    assert not mlp_ids & {id(p) for p in last}
    assert mlp_ids | {id(p) for p in last} == {id(p) for p in head.parameters()}
    before = [p.detach().clone() for p in head.parameters()]
    for p in last:
        p.requires_grad_(False)
    opt = torch.optim.SGD([p for p in head.parameters() if p.requires_grad], lr=1.0)
    head(torch.randn(3, 32)).sum().backward()
    opt.step()
    changed = [not torch.equal(b, p) for b, p in zip(before, head.parameters(), strict=True)]
    assert changed == [id(p) in mlp_ids for p in head.parameters()]


def test_bottleneck_is_normalised_so_mlp_output_scale_is_irrelevant():
    head = _head()
    x = torch.randn(4, 32)
    ref = head(x)
    assert torch.allclose(head.forward_bottleneck(x).norm(dim=-1), torch.ones(4), atol=1e-6)
    with torch.no_grad():
        head.mlp[4].weight.mul_(7.0)
        head.mlp[4].bias.mul_(7.0)
    assert torch.allclose(head(x), ref, atol=1e-6)


def test_normalisation_eps_depends_on_dtype():
    tiny = torch.full((4,), 1e-7)  # norm 2e-7: above 1e-12 but below the fp16 eps 1e-6
    assert l2_normalize_bottleneck(tiny).norm().item() == pytest.approx(1.0, rel=1e-5)
    x16 = tiny.half()  # fp16 subnormals: each entry becomes ~1.19e-7
    want = x16.float().norm().item() / 1e-6  # x / eps instead of x / ||x||, far from 1
    assert l2_normalize_bottleneck(x16).float().norm().item() == pytest.approx(want, rel=3e-2)
    assert want < 0.5


def test_state_dict_round_trip_and_deepcopy_for_the_ema_teacher():
    head = _head()
    x = torch.randn(3, 32)
    sd = head.state_dict()
    assert DINOHead.GAIN_PARAM in sd and DINOHead.DIRECTION_PARAM in sd
    other = _head()
    assert not torch.allclose(other(x), head(x))
    other.load_state_dict(sd)
    assert torch.allclose(other(x), head(x))
    teacher = copy.deepcopy(head)
    with torch.no_grad():
        teacher.weight_g.mul_(2.0)
    assert torch.allclose(teacher(x), 2 * head(x), atol=1e-6)
    assert torch.equal(head.weight_g, torch.ones(64, 1))  # the copy owns its parameters
