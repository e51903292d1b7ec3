import math

import pytest
import torch

import unitok
from unitok.engine.optim import OptimConfig, apply_schedules, build_adamw, cosine_schedule


def _groups_by_name(opt):
    return {n: g for g in opt.param_groups for n in g["names"]}


def test_weight_decay_exclusions():
    model = unitok.create_model("unitok_tiny_img_p16_d8", encoder={"init_values": 1e-5})
    g = _groups_by_name(build_adamw(model, OptimConfig(weight_decay=0.1)))
    no_decay = ["encoder.cls_token", "encoder.mask_token", "encoder.blocks.0.norm1.weight"]
    no_decay += ["encoder.blocks.0.ls1.gamma", "encoder.blocks.0.attn.qkv.bias", "decoder.norm.bias"]
    for name in no_decay:
        assert g[name]["weight_decay"] == 0.0, name
    for name in ["encoder.blocks.0.attn.qkv.weight", "patch_embed.weight", "bottleneck.weight", "decoder_head.weight"]:
        assert g[name]["weight_decay"] == 0.1, name


def test_layerwise_lr_decay_matches_dinov2_rule():
    model = unitok.create_model("unitok_tiny_img_p16_d8", encoder={"depth": 4})
    opt = build_adamw(model, OptimConfig(layer_decay=0.9, patch_embed_lr_mult=0.2))
    g = _groups_by_name(opt)
    L = 4
    assert g["encoder.blocks.0.attn.qkv.weight"]["lr_mult"] == pytest.approx(0.9**L)
    assert g["encoder.blocks.3.mlp.fc2.weight"]["lr_mult"] == pytest.approx(0.9)
    assert g["encoder.cls_token"]["lr_mult"] == pytest.approx(0.9 ** (L + 1))
    assert g["patch_embed.weight"]["lr_mult"] == pytest.approx(0.9 ** (L + 1) * 0.2)
    assert g["encoder.norm.weight"]["lr_mult"] == pytest.approx(1.0)
    assert g["decoder.blocks.0.attn.qkv.weight"]["lr_mult"] == 1.0  # the decoder is not decayed
    apply_schedules(opt, lr=1e-3, weight_decay=0.04)
    assert g["encoder.blocks.0.attn.qkv.weight"]["lr"] == pytest.approx(1e-3 * 0.9**L)
    assert g["encoder.blocks.0.attn.qkv.weight"]["weight_decay"] == pytest.approx(0.04)
    assert g["encoder.blocks.0.norm1.weight"]["weight_decay"] == 0.0
    assert sum(len(x["params"]) for x in opt.param_groups) == len(list(model.parameters()))


def test_cosine_schedule_values():
    s = cosine_schedule(base=4e-3, final=1e-6, total_steps=125_000, warmup_steps=12_500)
    assert s(0) == 0.0 and s(1250) == pytest.approx(4e-4, rel=1e-3) and s(12_500) == pytest.approx(4e-3)
    assert s(200_000) == 1e-6
    mid = 1e-6 + 0.5 * (4e-3 - 1e-6) * (1 + math.cos(math.pi * 0.5))
    assert s(12_500 + 56_250) == pytest.approx(mid)
    m = cosine_schedule(0.992, 1.0, 1000)
    assert m(500) == pytest.approx(0.996) and m(1000) == 1.0
    assert s(12_499) == pytest.approx(4e-3)  # inclusive linspace warm-up, as DINOv2
    with pytest.raises(ValueError):
        cosine_schedule(1, 0, 0)


def test_frozen_parameters_are_left_out():
    model = unitok.create_model("unitok_tiny_img_p16_d8")
    model.decoder.requires_grad_(False)
    names = _groups_by_name(build_adamw(model, OptimConfig()))
    assert not any(n.startswith("decoder.") for n in names) and "encoder.norm.weight" in names


def test_adamw_is_fused_on_cpu_and_matches_the_per_tensor_update():
    torch.manual_seed(0)
    model, twin = unitok.create_model("unitok_tiny_img_p16_d8"), unitok.create_model("unitok_tiny_img_p16_d8")
    twin.load_state_dict(model.state_dict())
    fused = build_adamw(model, OptimConfig(weight_decay=0.1))
    plain = build_adamw(twin, OptimConfig(weight_decay=0.1))
    assert fused.defaults["fused"]
    for group in plain.param_groups:
        group["fused"] = None  # the per-tensor (foreach) implementation
    for step in range(3):
        for m, opt in ((model, fused), (twin, plain)):
            gen = torch.Generator().manual_seed(step)
            for p in m.parameters():
                p.grad = torch.randn(p.shape, generator=gen)
            opt.step()
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
