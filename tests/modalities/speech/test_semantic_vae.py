"""Semantic-VAE / acoustic VAE: presets, configuration errors, the encode/decode/forward contract, losses."""

from __future__ import annotations

import pytest
import torch

from unitok.config import ConfigError
from unitok.losses.regularizers import gaussian_kl
from unitok.modalities.speech.losses import SemanticVAELoss
from unitok.modalities.speech.semantic_vae import SemanticVAE, create_semantic_vae
from unitok.modalities.speech.semantic_vae_config import SEMANTIC_VAE_PRESETS, SemanticVAEConfig

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny() -> SemanticVAE:
    torch.manual_seed(0)
    return create_semantic_vae("semantic_vae_tiny").eval()


@pytest.mark.parametrize(
    "name, vae_dim, distill",
    [("semantic_vae_16k_d64", 64, True), ("acoustic_vae_16k_d16", 16, False), ("acoustic_vae_16k_d64", 64, False),
     ("semantic_vae_tiny", 8, True)],
)  # fmt: skip
def test_presets(name, vae_dim, distill):
    with torch.device("meta"):
        model = create_semantic_vae(name)
    assert model.preset == name and model.latent_dim == vae_dim and model.config.dac.distill == distill
    assert model.hop_length == 400 and model.sample_rate == 16000
    assert model.decoder.conv_pre.in_channels == vae_dim
    assert set(SEMANTIC_VAE_PRESETS) == {"semantic_vae_16k_d64", "acoustic_vae_16k_d16", "acoustic_vae_16k_d64",
                                         "semantic_vae_tiny"}  # fmt: skip


def test_unknown_preset_and_bad_configs_are_named():
    with pytest.raises(KeyError, match="semantic_vae_tiny"):
        create_semantic_vae("semantic_vae_tiyn")
    with pytest.raises(ConfigError, match=r"num_mels \(64\) must equal DAC.vae_dim \(16\)"):
        SemanticVAEConfig.from_dict({"DAC": {"vae_dim": 16}})
    with pytest.raises(ConfigError, match="encoder_dimm"):
        SemanticVAEConfig.from_dict({"DAC": {"encoder_dimm": 8}})
    with pytest.raises(ConfigError, match="hop is 320"):
        SemanticVAEConfig.from_dict({"DAC": {"encoder_rates": [4, 4, 4, 5]}})
    with pytest.raises(ConfigError, match="activation"):
        SemanticVAEConfig.from_dict({"Decoder": {"activation": "relu"}})


def test_encode_decode_shapes_and_padding(tiny):
    wav = torch.randn(2, 1, 1000) * 0.1
    with torch.no_grad():
        enc = tiny.encode(wav)
        assert enc["mu"].shape == enc["logvar"].shape == enc["z"].shape == (2, 3, 8)  # ceil(1000 / 400)
        assert not torch.equal(enc["z"], enc["mu"])
        assert torch.equal(tiny.encode(wav, sample=False)["z"], enc["mu"])
        # right zero-padding to the hop: the padded input encodes identically
        padded = torch.nn.functional.pad(wav, (0, 200))
        assert torch.equal(tiny.encode(padded, sample=False)["mu"], enc["mu"])
        audio = tiny.decode(enc["z"])
        assert audio.shape == (2, 1, 1200) and audio.abs().max() <= 1.0
        out = tiny(wav)
    assert out["audio"].shape == (2, 1, 1000) and "align_loss" not in out
    assert out["kl_loss"].shape == ()


def test_input_errors_are_named(tiny):
    with pytest.raises(ValueError, match=r"\(B, 1, T\)"):
        tiny.encode(torch.zeros(2, 800))
    with pytest.raises(ValueError, match="eps has shape"):
        tiny.encode(torch.zeros(1, 1, 800), eps=torch.zeros(1, 3, 8))
    with pytest.raises(ValueError, match=r"\(B, N, 8\)"):
        tiny.decode(torch.zeros(1, 2, 16))
    with pytest.raises(ValueError, match="ssl_lengths"):
        tiny.alignment_loss(torch.zeros(1, 2, 8), torch.zeros(1, 3, 32), torch.tensor([4]))
    with pytest.raises(ValueError, match="distill_hidden_dim"):
        tiny.project_ssl(torch.zeros(1, 3, 16), None, 2)


def test_kl_loss_value():
    mu, logvar = torch.zeros(2, 3, 8), torch.zeros(2, 3, 8)
    assert torch.allclose(gaussian_kl(mu, logvar), torch.tensor(0.5 * 8 * 1e-6), atol=3e-7)  # fp32 1 + 1e-6
    mu = torch.ones(2, 3, 8)
    assert torch.allclose(gaussian_kl(mu, logvar), torch.tensor(0.5 * 8 * (1 + 1e-6)))


def test_alignment_loss_masks_frames_beyond_the_guidance_length(tiny):
    ssl, lengths = torch.randn(2, 5, 32), torch.tensor([5, 2])
    with torch.no_grad():
        target = tiny.project_ssl(ssl, lengths, 4)
        assert torch.all(target[1, 2:] == 0) and target[0].abs().min() > 0
        # z equal to the projection on valid frames: cosine 1 everywhere that counts, whatever the rest holds
        z = target.clone()
        z[1, 2:] = torch.randn(2, 8)
        assert torch.allclose(tiny.alignment_loss(z, ssl, lengths), torch.tensor(-1.0))
        assert torch.allclose(tiny.alignment_loss(-z, ssl, lengths), torch.tensor(1.0))


def test_training_forward_and_generator_loss_gradients():
    torch.manual_seed(0)
    model = create_semantic_vae("semantic_vae_tiny").train()
    wav, ssl = torch.randn(2, 1, 2400) * 0.1, torch.randn(2, 8, 32)
    with pytest.raises(ValueError, match="needs ssl_features"):
        model(wav)
    out = model(wav, ssl)
    terms = SemanticVAELoss()(
        out, wav, adversarial={"adv_gen_loss": torch.tensor(0.5), "adv_feat_loss": torch.tensor(2.0)}
    )
    expected = 15 * terms["mel_loss"] + 0.01 * terms["kl_loss"] + terms["align_loss"] + 0.5 + 2 * 2.0
    assert torch.allclose(terms["loss"], expected)
    assert terms["stft_loss"] > 0 and terms["waveform_l1"] > 0  # logged, not weighted
    terms["loss"].backward()
    for part in ("encoder", "pre_block", "fc_mu", "fc_var", "decoder", "projectors"):
        grads = [p.grad for p in getattr(model, part).parameters()]
        assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads), part


def test_acoustic_vae_has_no_alignment_term():
    model = create_semantic_vae("semantic_vae_tiny", dac={"distill": False}).train()
    out = model(torch.randn(1, 1, 2000) * 0.1)
    assert "align_loss" not in out
    terms = SemanticVAELoss()(out, torch.zeros(1, 1, 2000))
    assert torch.allclose(terms["loss"], 15 * terms["mel_loss"] + 0.01 * terms["kl_loss"])


def test_reconstruction_losses_vanish_on_identical_audio():
    wav = torch.randn(2, 1, 4000) * 0.1
    terms = SemanticVAELoss()({"audio": wav, "kl_loss": torch.tensor(0.0)}, wav)
    assert terms["mel_loss"] == 0 and terms["stft_loss"] == 0 and terms["waveform_l1"] == 0
    with pytest.raises(ValueError, match="at least 1025 samples"):
        SemanticVAELoss()({"audio": wav[..., :1000], "kl_loss": torch.tensor(0.0)}, wav[..., :1000])


def test_save_and_load_without_projector(tmp_path, tiny):
    bare = SemanticVAE(tiny.config, with_projector=False)
    bare.load_state_dict({k: v for k, v in tiny.state_dict().items() if not k.startswith("projectors.")})
    bare.save_pretrained(tmp_path)
    again = SemanticVAE.from_pretrained(tmp_path)
    assert again.projectors is None
    wav = torch.randn(1, 1, 800) * 0.1
    with torch.no_grad():
        assert torch.equal(again.encode(wav, sample=False)["z"], tiny.encode(wav, sample=False)["z"])
    with pytest.raises(RuntimeError, match="with_projector=False"):
        again.project_ssl(torch.zeros(1, 3, 32), None, 2)
