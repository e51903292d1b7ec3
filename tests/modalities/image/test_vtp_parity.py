"""VTP parity: the official outputs in shared/parity/vtp_small_default, matched to <= 1e-5."""

from __future__ import annotations

import pytest
import torch
from unitok.modalities.image.vtp import VTPModel

import unitok

TOL = 1e-5


def _flatten(value):
    """Nested lists/tuples of tensors -> flat list."""
    if torch.is_tensor(value):
        return [value]
    return [t for v in value for t in _flatten(v)]


def _assert_close(name, got, want):
    got, want = _flatten(got), _flatten(want)
    assert len(got) == len(want), f"{name}: {len(got)} tensors vs {len(want)} in the reference"
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape, f"{name}: shape {tuple(g.shape)} vs reference {tuple(w.shape)}"
        err = (g.float() - w.float()).abs().max().item()
        assert err <= TOL, f"{name}: max abs diff {err:.3g} > {TOL}"


def public_api_outputs(model: VTPModel, inputs: dict) -> dict:
    """Every public-API output named as in reference.pt['outputs']."""
    img, img_ns, txt, lat = (
        inputs["images"],
        inputs["images_nonsquare"],
        inputs["text_tokens"],
        inputs["random_latents"],
    )
    m = model
    out = {}
    with torch.no_grad():
        out["recon_latents"] = m.get_reconstruction_latents(img)
        out["decoded_images"] = m.get_latents_decoded_images(out["recon_latents"])
        out["decoded_random_latents"] = m.get_latents_decoded_images(lat)
        out["clip_image_feature"] = m.get_clip_image_feature(img)
        out["clip_image_feature_unnorm"] = m.get_clip_image_feature(img, normalize=False)
        out["clip_text_feature"] = m.get_clip_text_feature(txt)
        out["clip_text_feature_unnorm"] = m.get_clip_text_feature(txt, normalize=False)
        out["clip_logits_image_text"] = m.get_clip_logits(img, txt)[0]
        last = m.get_last_layer_feature(img)
        out["last_layer_cls_token"], out["last_layer_patch_tokens"] = last["cls_token"], last["patch_tokens"]
        bott = m.get_last_layer_feature(img, use_bottleneck=True)
        out["last_layer_bottleneck_cls_token"] = bott["cls_token"]
        out["last_layer_bottleneck_patch_tokens"] = bott["patch_tokens"]
        pairs = m.get_intermediate_layers_feature(img, n=2, return_class_token=True, norm=True)
        out["intermediate_n2_patch_tokens"] = [p for p, _ in pairs]
        out["intermediate_n2_cls_tokens"] = [c for _, c in pairs]
        out["intermediate_n2_nonorm_patch_tokens"] = m.get_intermediate_layers_feature(img, n=2, norm=False)
        out["intermediate_n2_reshape"] = m.get_intermediate_layers_feature(img, n=2, reshape=True)
        out["intermediate_idx0_patch_tokens"] = m.get_intermediate_layers_feature(img, n=[0])
        out["forward_rec_reconstructed_image"] = m(img, forward_type="rec")["reconstructed_image"]
        out["forward_clip_logit_scale_exp"] = m(img, txt, forward_type="clip")["logit_scale"]
        feat = m(img, forward_type="feature")
        out["forward_feature_cls_token"], out["forward_feature_patch_tokens"] = feat["cls_token"], feat["patch_tokens"]
        out["nonsquare_recon_latents"] = m.get_reconstruction_latents(img_ns)
        out["nonsquare_decoded_images"] = m.get_latents_decoded_images(out["nonsquare_recon_latents"])
        last_ns = m.get_last_layer_feature(img_ns)
        out["nonsquare_last_layer_cls_token"] = last_ns["cls_token"]
        out["nonsquare_last_layer_patch_tokens"] = last_ns["patch_tokens"]
    return out


@pytest.fixture(scope="module")
def parity_model(vtp_parity_dir):
    return unitok.load_pretrained(vtp_parity_dir)


def test_load_pretrained_gives_vtp_with_bf16_rope(parity_model):
    assert isinstance(parity_model, VTPModel)
    assert parity_model.autoencoder.encoder.rope.dtype == torch.bfloat16
    assert not parity_model.training


def test_every_official_output_matches(parity_model, vtp_reference):
    ours = public_api_outputs(parity_model, vtp_reference["inputs"])
    missing = set(vtp_reference["outputs"]) - set(ours)
    assert not missing, f"reference outputs not produced: {sorted(missing)}"
    for name, want in vtp_reference["outputs"].items():
        _assert_close(name, ours[name], want)


def test_fp32_rope_outputs_match(vtp_parity_dir, vtp_reference):
    model = unitok.load_pretrained(vtp_parity_dir, rope_dtype="float32")
    ref, inputs = vtp_reference["fp32_rope_outputs"], vtp_reference["inputs"]
    with torch.no_grad():
        latents = model.get_reconstruction_latents(inputs["images"])
        _assert_close("recon_latents", latents, ref["recon_latents"])
        _assert_close(
            "decoded_images", model.get_latents_decoded_images(inputs["random_latents"]), ref["decoded_images"]
        )
        patches = model.get_last_layer_feature(inputs["images"])["patch_tokens"]
        _assert_close("last_layer_patch_tokens", patches, ref["last_layer_patch_tokens"])
    # and the bf16 emulation is what makes the difference: fp32 RoPE is measurably off the official outputs
    official = vtp_reference["outputs"]["last_layer_patch_tokens"]
    assert (patches - official).abs().max() > 1e-6


def test_rope_tables_are_bit_exact(parity_model, vtp_reference):
    rope = parity_model.autoencoder.encoder.rope
    for h, w in [(4, 4), (3, 5)]:
        sin, cos = rope(parity_model.adapter.coords(h, w, 1)[0])
        assert torch.equal(sin, vtp_reference["debug"][f"trunk_rope_sin_{h}x{w}"])
        assert torch.equal(cos, vtp_reference["debug"][f"trunk_rope_cos_{h}x{w}"])


def test_per_block_outputs_match(parity_model, vtp_reference):
    dbg, img = vtp_reference["debug"], vtp_reference["inputs"]["images"]
    with torch.no_grad():
        tokens = parity_model.adapter.embed(img, parity_model.autoencoder.patch_embed)
        _assert_close("trunk_tokens_in", parity_model.autoencoder.encoder.prepare(tokens.x), dbg["trunk_tokens_in"])
        blocks, _ = parity_model.autoencoder.forward_intermediates(tokens, None, stop_early=False, pre_embedded=True)
        _assert_close("trunk_block_outputs_prenorm", blocks, dbg["trunk_block_outputs_prenorm"])


def test_causal_mask_is_initialised(parity_model):
    mask = parity_model.text.attn_mask
    T = parity_model.config.text_context_length
    assert mask.shape == (T, T)
    assert torch.equal(mask, torch.full((T, T), float("-inf")).triu(1))
