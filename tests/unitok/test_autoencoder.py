import json

import pytest
import torch

import unitok
from unitok.adapter import Tokens
from unitok.models.autoencoder import TransformerAutoencoder
from unitok.models.pretrained import CheckpointMismatchError
from unitok.testing import random_tokens


@pytest.fixture(scope="module")
def tiny_img():
    return unitok.create_model("unitok_tiny_img_p16_d8").eval()


def test_forward_shapes_and_contract(tiny_img):
    t = random_tokens(2, (3, 5), 768)
    out = tiny_img(t)
    assert isinstance(out["latents"], Tokens) and out["latents"].x.shape == (2, 15, 8)
    assert out["recon"].x.shape == (2, 15, 768)
    assert out["features"].cls.shape == (2, 64) and out["features"].tokens.shape == (2, 15, 64)
    enc = tiny_img.encode(t)
    assert torch.allclose(enc.x, out["latents"].x)
    assert torch.allclose(tiny_img.decode(enc).x, out["recon"].x)
    assert enc.coords is t.coords  # positions travel with the latents


def test_save_and_load_pretrained_round_trip(tiny_img, tmp_path):
    tiny_img.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["model_type"] == "unitok_autoencoder" and cfg["preset"] == "unitok_tiny_img_p16_d8"
    loaded = unitok.load_pretrained(tmp_path)
    assert isinstance(loaded, TransformerAutoencoder)
    t = random_tokens(1, (2, 2), 768)
    assert torch.equal(loaded(t)["recon"].x, tiny_img(t)["recon"].x)


def test_load_pretrained_names_mismatching_keys(tiny_img, tmp_path):
    from safetensors.torch import load_file, save_file

    tiny_img.save_pretrained(tmp_path)
    sd = load_file(tmp_path / "model.safetensors")
    sd.pop("encoder.norm.weight")
    sd["encoder.extra"] = torch.zeros(1)
    sd["bottleneck.weight"] = torch.zeros(4, 64)
    save_file(sd, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointMismatchError) as e:
        unitok.load_pretrained(tmp_path)
    msg = str(e.value)
    assert "missing keys: encoder.norm.weight" in msg and "unexpected keys: encoder.extra" in msg
    assert "bottleneck.weight (4, 64) vs model (8, 64)" in msg


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        unitok.load_pretrained(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="config.json is missing"):
        unitok.load_pretrained(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "unitok_autoencoder", "config": {}}')
    with pytest.raises(FileNotFoundError, match="model.safetensors is missing"):
        unitok.load_pretrained(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "mystery"}')
    with pytest.raises(KeyError, match="unknown model_type 'mystery'"):
        unitok.load_pretrained(tmp_path)


def test_wrong_tokens_are_named(tiny_img):
    with pytest.raises(ValueError, match="expects 768"):
        tiny_img(random_tokens(1, (2, 2), 700))
    with pytest.raises(ValueError, match="1-d coordinates"):
        tiny_img(random_tokens(1, (4,), 768))
    with pytest.raises(ValueError, match="Tokens.coords"):
        Tokens(x=torch.zeros(1, 4, 3), coords=torch.zeros(1, 5, 2))
    with pytest.raises(ValueError, match="latents have 3 channels"):
        tiny_img.decode(random_tokens(1, (2, 2), 3))


def test_encoder_only_model():
    m = unitok.create_model("unitok_tiny_img_p16_d8", decoder=None)
    assert m.decoder is None and not any(k.startswith("decoder") for k in m.state_dict())
    out = m(random_tokens(1, (2, 2), 768))
    assert out["recon"] is None
    with pytest.raises(RuntimeError, match="without a decoder"):
        m.decode(out["latents"])


def test_registry_lists_and_creates_every_preset():
    names = unitok.list_models()
    assert {"vtp_s_f16d64", "vtp_b_f16d64", "vtp_l_f16d64", "unitok_b_img_p16_d64", "unitok_b_wav_p320_d64"} <= set(
        names
    )
    assert unitok.list_models("vtp_*") == ["vtp_b_f16d64", "vtp_l_f16d64", "vtp_s_f16d64"]
    for name in names:
        with torch.device("meta"):
            model = unitok.create_model(name)
        assert sum(p.numel() for p in model.parameters()) > 0, name
    with pytest.raises(KeyError, match="did you mean|Did you mean"):
        unitok.create_model("vtp_l_f16d46")


def test_create_model_overrides_are_strict():
    m = unitok.create_model("unitok_tiny_wav_p320_d8", encoder={"depth": 1}, latent_dim=4)
    assert len(m.encoder.blocks) == 1 and m.latent_dim == 4
    from unitok.config import ConfigError

    with pytest.raises(ConfigError, match="did you mean encoder.depth"):
        unitok.create_model("unitok_tiny_wav_p320_d8", encoder={"dpeth": 1})


def test_console_entry_lists_models(capsys):
    from unitok.registry import list_models_cli

    list_models_cli(["vtp_l*"])
    assert capsys.readouterr().out.split() == ["vtp_l_f16d64"]


def test_gaussian_bottleneck_samples_in_training_and_gives_the_mean_otherwise():
    from unitok.models.autoencoder import AutoencoderConfig

    model = unitok.create_model("unitok_tiny_wav_p320_d8", bottleneck="gaussian")
    assert model.is_gaussian and "bottleneck_logvar.weight" in model.state_dict()
    t = random_tokens(2, (6,), 320)
    mean, logvar = model.posterior(model.encode_features(t).tokens)
    out = model.eval()(t)
    assert torch.equal(out["latents"].x, mean) and torch.equal(out["aux"]["logvar"], logvar)
    assert torch.equal(model.encode(t).x, mean) and not torch.equal(model.encode(t, sample=True).x, mean)
    sampled = model.train()(t)
    assert not torch.equal(sampled["latents"].x, sampled["aux"]["mean"])
    assert not unitok.create_model("unitok_tiny_wav_p320_d8").is_gaussian
    with pytest.raises(ValueError, match="linear' or 'gaussian"):
        AutoencoderConfig(bottleneck="vq")
