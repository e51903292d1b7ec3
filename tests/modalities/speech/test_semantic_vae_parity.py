"""Semantic-VAE parity with the official code (shared/parity/semantic_vae): outputs, losses, checkpoint layouts."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from unitok.modalities.speech.losses import MelSpectrogramLoss
from unitok.modalities.speech.semantic_vae import SemanticVAE, create_semantic_vae
from unitok.modalities.speech.semantic_vae_parity import debug_outputs, max_abs_diff, reference_outputs
from unitok.models.pretrained import CheckpointMismatchError

SHARED = Path(os.environ.get("UNITOK_SHARED", Path(__file__).resolve().parents[3].parent / "shared"))
PARITY = SHARED / "parity" / "semantic_vae"
TINY = PARITY / "tiny_default"
TOL = 1e-5
AUDIO = ("decoded_z", "decoded_mu", "odd_audio")

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.skipif(not (TINY / "reference.pt").is_file(), reason=f"no parity reference at {TINY}"),
]


@pytest.fixture(scope="module")
def reference() -> dict:
    return torch.load(TINY / "reference.pt", weights_only=False)


@pytest.fixture(scope="module")
def model() -> SemanticVAE:
    return SemanticVAE.from_pretrained(TINY)


@pytest.fixture(scope="module")
def ours(model, reference) -> dict:
    return reference_outputs(model, reference["inputs"])


def _probe(model: SemanticVAE, reference: dict) -> dict[str, torch.Tensor]:
    """A quick fingerprint of a model: encoding and decoding of the reference input with the fixed eps."""
    with torch.no_grad():
        enc = model.encode(reference["inputs"]["waveform"], eps=reference["inputs"]["eps"])
        return {**enc, "audio": model.decode(enc["z"])}


# ---------------------------------------------------------------------------------------------------- numerics
def test_every_reference_output_matches(ours, reference):
    want = reference["outputs"]
    assert set(want) <= set(ours), f"not produced: {sorted(set(want) - set(ours))}"
    for name, ref in want.items():
        err = max_abs_diff(ours[name], ref)
        assert err <= TOL, f"{name}: max abs diff {err:.3g} > {TOL}"
        if name in AUDIO:
            rel = err / float(ref.abs().max())
            assert rel <= TOL, f"{name}: max|diff|/max|ref| {rel:.3g} > {TOL}"


def test_debug_intermediates_match(model, reference):
    got = debug_outputs(model, reference["debug"])
    compared = [k for k in reference["debug"] if k != "short_input"]
    assert set(compared) <= set(got), f"not produced: {sorted(set(compared) - set(got))}"
    for name in compared:
        err = max_abs_diff(got[name], reference["debug"][name])
        assert err <= TOL, f"debug {name}: max abs diff {err:.3g} > {TOL}"


def test_losses_are_sensitive(ours, reference):
    """The matched values are not trivially equal: z differs from mu and the short guidance changes the loss."""
    out = reference["outputs"]
    assert (ours["z"] - ours["mu"]).abs().max() > 0.1
    assert abs(float(out["align_loss"]) - float(out["align_loss_short_guidance"])) > 1e-2
    assert torch.all(ours["projector_out_short_guidance"][:, 30:] == 0)
    assert ours["projector_out"][:, 30:].abs().max() > 0.1


def test_windows_and_filterbanks_match_audiotools_conventions():
    scipy_signal = pytest.importorskip("scipy.signal")
    loss = MelSpectrogramLoss()
    scales = zip(loss.transforms, [32, 64, 128, 256, 512, 1024, 2048], [5, 10, 20, 40, 80, 160, 320], strict=True)
    for transform, n, mels in scales:
        window = transform.spectrogram.window  # scipy's periodic Hann, rounded to float32 as audiotools does
        assert torch.equal(window, torch.from_numpy(scipy_signal.get_window("hann", n)).float())
        assert transform.spectrogram.hop_length == n // 4 and transform.spectrogram.center
        fb = transform.mel_scale.fb  # Slaney: area-normalised triangles, the last one ending at Nyquist
        assert fb.dtype == torch.float32 and fb.shape == (n // 2 + 1, mels)
        assert fb[0].abs().max() == 0 and (fb.max(dim=0).values > 0).all()


def test_fresh_buffers_equal_the_stored_ones():
    stored = load_file(str(TINY / "model.safetensors"))
    fresh = create_semantic_vae("semantic_vae_tiny").state_dict()
    buffers = [k for k in fresh if k.endswith(("filter", "zero_k_bias"))]
    assert len(buffers) == 2 * (6 * 3 * 6 + 1) + 1
    for key in buffers:
        assert torch.equal(fresh[key], stored[key]), key


# ---------------------------------------------------------------------------------------------------- checkpoints
def _metainfo() -> dict:
    config = json.loads((TINY / "config.json").read_text())
    return {k: v for k, v in config.items() if not k.startswith("_")}


def _legacy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    rename = {".parametrizations.weight.original0": ".weight_g", ".parametrizations.weight.original1": ".weight_v"}
    out = {}
    for key, value in state.items():
        for new, old in rename.items():
            key = key.replace(new, old)
        out[key] = value
    return out


def test_released_layouts_load_identically(tmp_path, model, reference):
    state = load_file(str(TINY / "model.safetensors"))
    (tmp_path / "dac").mkdir()
    (tmp_path / "metainfo.json").write_text(json.dumps(_metainfo()))
    ema = {f"ema_model.{k}": v for k, v in state.items()}
    torch.save(
        {**ema, "initted": torch.tensor(True), "step": torch.tensor(600000)}, tmp_path / "dac/ema_state_dict.pth"
    )
    online = {k: v + 0.01 if k == "fc_mu.bias" else v for k, v in _legacy(state).items()}
    torch.save({"state_dict": online, "metadata": {"kwargs": _metainfo()["DAC"]}}, tmp_path / "dac/weights.pth")

    want = _probe(model, reference)
    from_ema = SemanticVAE.from_pretrained(tmp_path)  # EMA weights by default
    for key, value in _probe(from_ema, reference).items():
        assert torch.equal(value, want[key]), key
    from_online = SemanticVAE.from_pretrained(tmp_path, use_ema=False)  # legacy weight-norm names, container
    assert torch.allclose(_probe(from_online, reference)["mu"], want["mu"] + 0.01, atol=1e-6)
    assert not from_online.training and from_online.projectors is not None

    torch.save(_legacy(state), tmp_path / "dac/weights.pth")  # bare state dict
    bare = SemanticVAE.from_pretrained(tmp_path, use_ema=False, with_projector=False)
    assert bare.projectors is None and torch.equal(_probe(bare, reference)["audio"], want["audio"])


def test_strict_loading_names_the_problem(tmp_path):
    state = load_file(str(TINY / "model.safetensors"))
    (tmp_path / "dac").mkdir()
    (tmp_path / "metainfo.json").write_text(json.dumps(_metainfo()))
    ema = tmp_path / "dac/ema_state_dict.pth"

    torch.save({f"ema_model.{k}": v for k, v in state.items() if k != "fc_mu.bias"}, ema)
    with pytest.raises(CheckpointMismatchError, match=r"missing keys: fc_mu\.bias"):
        SemanticVAE.from_pretrained(tmp_path)
    torch.save({f"ema_model.{k}": v for k, v in {**state, "decoder.extra": state["fc_mu.bias"]}.items()}, ema)
    with pytest.raises(CheckpointMismatchError, match=r"unexpected keys: decoder\.extra"):
        SemanticVAE.from_pretrained(tmp_path)
    torch.save({f"ema_model.{k}": v for k, v in state.items() if not k.startswith("projectors.")}, ema)
    with pytest.raises(CheckpointMismatchError, match="projectors.model.0.weight.*with_projector=False"):
        SemanticVAE.from_pretrained(tmp_path, with_projector=True)
    assert SemanticVAE.from_pretrained(tmp_path).projectors is None  # None: follow the checkpoint
    with pytest.raises(FileNotFoundError, match="use_ema=True"):
        SemanticVAE.from_pretrained(tmp_path, use_ema=False)
    with pytest.raises(FileNotFoundError, match="metainfo.json"):
        SemanticVAE.from_pretrained(tmp_path / "dac")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SemanticVAE.from_pretrained(tmp_path / "nowhere")


def test_save_pretrained_round_trip(tmp_path, model, reference):
    model.save_pretrained(tmp_path / "out")
    config = json.loads((tmp_path / "out/config.json").read_text())
    assert config["model_type"] == "semantic_vae" and config["DAC"]["vae_dim"] == 8
    assert set(load_file(str(tmp_path / "out/model.safetensors"))) == set(load_file(str(TINY / "model.safetensors")))
    again = SemanticVAE.from_pretrained(tmp_path / "out")
    assert again.config == model.config
    want = _probe(model, reference)
    for key, value in _probe(again, reference).items():
        assert torch.equal(value, want[key]), key


# ---------------------------------------------------------------------------------------------------- layout
def _layout(module: torch.nn.Module) -> dict[str, list]:
    return {k: [list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in module.state_dict().items()}


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_released_key_layout_and_parameter_counts():
    keys = json.loads((PARITY / "keys_full.json").read_text())
    with torch.device("meta"):
        released = SemanticVAE(keys["released_config"])
        acoustic = create_semantic_vae("acoustic_vae_16k_d16")
    layout = _layout(released)
    assert list(layout) == list(keys["generator"]) + list(keys["projector"])
    assert layout == {**keys["generator"], **keys["projector"]}
    counts = keys["param_counts"]
    assert _count(released.encoder) == counts["encoder"]
    assert _count(released.pre_block) == counts["pre_block (AttnProjection)"]
    assert _count(released.fc_mu) == counts["fc_mu"] and _count(released.fc_var) == counts["fc_var"]
    assert _count(released.decoder) == counts["decoder (BigVGAN)"]
    assert _count(released.projectors) == counts["projectors (InterpolateRegulator, training only)"]
    assert _count(released) == counts["generator_with_projectors"]

    d16 = keys["acoustic_vae_dim16"]
    assert _layout(acoustic) == {**keys["generator"], **keys["projector"], **d16["shape_changes"]}
    assert _count(acoustic) - _count(acoustic.projectors) == d16["param_counts"]["generator_without_projectors"]
    assert not acoustic.config.dac.distill
