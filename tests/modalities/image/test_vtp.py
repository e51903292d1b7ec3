"""VTP model: checkpoint layout, every switch of the official config, presets and clear errors."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import unitok
from unitok.config import ConfigError
from unitok.modalities.image.vtp import VTPModel
from unitok.modalities.image.vtp_config import VTPConfig
from unitok.models.pretrained import CheckpointMismatchError
from unitok.testing import TINY_VTP, random_text_tokens


def tiny(**switches) -> VTPModel:
    torch.manual_seed(0)
    return VTPModel(VTPConfig.from_dict(TINY_VTP, **switches)).eval()


def api_outputs(m: VTPModel) -> dict:
    g = torch.Generator().manual_seed(1)
    img = torch.randn(2, 3, 64, 48, generator=g)
    txt = random_text_tokens(3, 16, 1024)
    with torch.no_grad():
        lat = m.get_reconstruction_latents(img)
        return {
            "lat": lat,
            "dec": m.get_latents_decoded_images(lat),
            "img": m.get_clip_image_feature(img, normalize=False),
            "txt": m.get_clip_text_feature(txt, normalize=False),
            "logits": m.get_clip_logits(img, txt)[0],
            "inter": m.get_intermediate_layers_feature(img, n=2, reshape=True, return_class_token=True)[0][0],
        }


def test_save_pretrained_round_trip_gives_identical_tensors(vtp_parity_dir, tmp_path):
    model = unitok.load_pretrained(vtp_parity_dir)
    model.save_pretrained(tmp_path)
    original, written = load_file(vtp_parity_dir / "model.safetensors"), load_file(tmp_path / "model.safetensors")
    assert original.keys() == written.keys()
    for k, v in original.items():
        assert v.dtype == written[k].dtype and torch.equal(v, written[k]), k
    assert written["trunk.rope_embed.periods"].dtype == torch.bfloat16
    cfg_in = json.loads((vtp_parity_dir / "config.json").read_text())
    cfg_out = json.loads((tmp_path / "config.json").read_text())
    assert {k: v for k, v in cfg_in.items() if k != "transformers_version"} == cfg_out


def test_official_layout_matches_reference(vtp_parity_dir, vtp_reference):
    sd = unitok.load_pretrained(vtp_parity_dir).official_state_dict()
    layout = {k: [list(v.shape), str(v.dtype).replace("torch.", "")] for k, v in sd.items()}
    want = {k: [list(s), str(d).replace("torch.", "")] for k, (s, d) in vtp_reference["state_dict_layout"].items()}
    assert layout == want


SWITCHES = [
    (
        {"vision_init_values": 1e-5, "decoder_init_values": 1e-5},
        ["trunk.blocks.1.ls1.gamma", "pixel_decoder.blocks.0.ls2.gamma"],
    ),
    (
        {"vision_use_qk_norm": True, "decoder_use_qk_norm": True},
        ["trunk.blocks.0.attn.q_norm.weight", "pixel_decoder.blocks.1.attn.k_norm.weight"],
    ),
    ({"vision_clip_feat": "pooled"}, []),
    ({"vision_bottleneck_ae_only": False}, []),
    ({"init_logit_bias": -10.0}, ["logit_bias"]),
    ({"nonscalar_logit_scale": True, "init_logit_bias": -10.0, "init_logit_scale": 2.3}, ["logit_bias"]),
    ({"text_quick_gelu": True}, []),
    ({"text_ls_init_value": 0.1}, ["text_transformer.resblocks.0.ls_1.gamma"]),
    ({"vision_norm_layer": "layernorm", "decoder_norm_layer": "rmsnorm"}, ["trunk.norm.bias"]),
    ({"vision_norm_layer": "layernormbf16"}, ["trunk.blocks.0.norm1.bias"]),
    (
        {"vision_ffn_layer": "mlp", "decoder_ffn_layer": "mlp"},
        ["trunk.blocks.0.mlp.fc1.weight", "pixel_decoder.blocks.0.mlp.fc2.bias"],
    ),
    ({"vision_ffn_layer": "swiglu64"}, ["trunk.blocks.0.mlp.w3.weight"]),
    ({"text_proj_bias": True}, ["text_projection.weight", "text_projection.bias"]),
]


@pytest.mark.parametrize("switches, keys", SWITCHES, ids=[next(iter(s)) for s, _ in SWITCHES])
def test_every_official_switch_works_and_round_trips(switches, keys, tmp_path):
    model = tiny(**switches)
    sd = model.official_state_dict()
    for k in keys:
        assert k in sd, f"{k} missing from the official layout"
    out = api_outputs(model)
    assert all(torch.isfinite(v).all() for v in out.values())
    model.save_pretrained(tmp_path)
    again = unitok.load_pretrained(tmp_path)
    for name, value in api_outputs(again).items():
        assert torch.equal(value, out[name]), name


def test_switch_semantics():
    m = tiny(vision_bottleneck_ae_only=False)
    assert m.visual_proj.in_features == 8  # CLIP reads bottlenecked features
    m = tiny(nonscalar_logit_scale=True, init_logit_bias=-10.0, init_logit_scale=2.3)
    assert m.logit_scale.shape == (1,) and m.logit_scale.item() == pytest.approx(2.3)
    out = m(torch.randn(1, 3, 32, 32), random_text_tokens(2, 16, 1024), forward_type="clip")
    assert out["logit_bias"].item() == -10.0
    m = tiny(text_ls_init_value=0.1)  # upstream leaves this uninitialised (spec section 6.3)
    assert torch.all(m.text.transformer.resblocks[0].ls_1.gamma == 0.1)
    m = tiny(vision_clip_feat="pooled")
    img = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        pooled = m.visual_proj(m.get_last_layer_feature(img)["patch_tokens"].mean(1))
        assert torch.allclose(m.get_clip_image_feature(img, normalize=False), pooled)
    m = tiny(text_quick_gelu=True)
    from open_clip.transformer import QuickGELU

    assert isinstance(m.text.transformer.resblocks[0].mlp.gelu, QuickGELU)


def test_default_logit_scale_and_forward_modes():
    m = tiny()
    assert m.logit_scale.item() == pytest.approx(2.6593, abs=1e-4)
    img = torch.randn(2, 3, 32, 32)
    rec = m(img, forward_type="rec")
    assert rec["latents"].shape == (2, 8, 2, 2) and rec["reconstructed_image"].shape == img.shape
    assert rec["target_image"] is img
    feat = m(img, forward_type="feature")
    assert feat["cls_token"].shape == (2, 8)  # 'feature' uses the bottleneck, unlike the method's default
    assert m.get_last_layer_feature(img)["cls_token"].shape == (2, 64)
    with pytest.raises(ValueError, match="forward_type"):
        m(img, forward_type="nope")


def test_clip_and_reconstruction_can_be_disabled():
    m = tiny(train_clip=False)
    assert m.text is None and not any(k.startswith(("text_", "token_", "logit")) for k in m.official_state_dict())
    with pytest.raises(RuntimeError, match="CLIP not enabled"):
        m.get_clip_image_feature(torch.randn(1, 3, 32, 32))
    m = tiny(train_reconstruction=False)
    assert not any(k.startswith("pixel_decoder") for k in m.official_state_dict())
    with pytest.raises(RuntimeError, match="Reconstruction not enabled"):
        m.get_latents_decoded_images(torch.randn(1, 8, 2, 2))


def test_vtp_l_preset_is_the_released_architecture():
    with torch.device("meta"):
        m = unitok.create_model("vtp_l_f16d64")
    sd = m.official_state_dict()
    assert len(sd) == 789
    assert sum(p.numel() for p in m.parameters()) == 731_570_689
    assert sd["trunk.blocks.0.mlp.w1.weight"].shape == (2736, 1024)
    assert sd["trunk.rope_embed.periods"].shape == (16,)
    assert sd["visual_proj.weight"].shape == (768, 1024)
    assert sd["pixel_decoder.proj_out.weight"].shape == (768, 1024, 1, 1)
    assert sd["token_embedding.weight"].shape == (49408, 768)
    for name, width in [("vtp_s_f16d64", 384), ("vtp_b_f16d64", 768)]:
        with torch.device("meta"):
            m = unitok.create_model(name)
        assert m.config.vision_embed_dim == width and m.config.vision_feature_bottleneck == 64


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="did you mean vision_embed_dim"):
        VTPConfig.from_dict({"vision_embed_dimm": 64})
    with pytest.raises(ConfigError, match="vision_norm_layer"):
        VTPConfig.from_dict({"vision_norm_layer": "batchnorm"})
    with pytest.raises(ConfigError, match="patch size must be 16"):
        VTPConfig.from_dict({"vision_patch_size": 14, "image_size": 224})
    with pytest.raises(ConfigError, match="vision_depth"):
        VTPConfig.from_dict({"vision_depth": "twelve"})


def test_checkpoint_mismatch_lists_official_keys(vtp_parity_dir, tmp_path):
    model = unitok.load_pretrained(vtp_parity_dir)
    model.save_pretrained(tmp_path)
    sd = load_file(tmp_path / "model.safetensors")
    sd.pop("trunk.blocks.1.mlp.w3.bias")
    sd["pixel_decoder.proj_out.weight"] = torch.zeros(768, 32, 1, 1)
    sd["trunk.surprise"] = torch.zeros(2)
    save_file(sd, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointMismatchError) as e:
        unitok.load_pretrained(tmp_path)
    msg = str(e.value)
    assert "trunk.blocks.1.mlp.w3.bias" in msg and "trunk.surprise" in msg
    assert "pixel_decoder.proj_out.weight" in msg


def test_checkpoint_with_other_rope_periods_is_refused(vtp_parity_dir, tmp_path):
    unitok.load_pretrained(vtp_parity_dir).save_pretrained(tmp_path)
    sd = load_file(tmp_path / "model.safetensors")
    sd["trunk.rope_embed.periods"] = sd["trunk.rope_embed.periods"] * 3
    save_file(sd, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointMismatchError, match="base-100"):
        unitok.load_pretrained(tmp_path)


def test_bad_inputs_are_named():
    m = tiny()
    with pytest.raises(ValueError, match="not a multiple of the patch size 16"):
        m.get_reconstruction_latents(torch.randn(1, 3, 40, 32))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        m.get_reconstruction_latents(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match=r"must be \(B, 16\)"):
        m.get_clip_text_feature(torch.zeros(2, 77, dtype=torch.long))
    with pytest.raises(ValueError, match="latent grid"):
        m.get_latents_decoded_images(torch.randn(8, 2, 2))
    with pytest.raises(ValueError, match="4 channels, the decoder expects 8"):
        m.get_latents_decoded_images(torch.randn(1, 4, 2, 2))


def test_tokenizer_is_open_clip_bpe():
    m = tiny(text_vocab_size=49408)
    ids = m.get_tokenizer()(["a photo of a dog"])
    assert ids.shape == (1, 16) and ids[0, 0] == 49406 and 49407 in ids[0]
    assert m.get_clip_text_feature(ids).shape == (1, 64)
