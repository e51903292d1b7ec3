"""Semantic-VAE parity harness: our outputs for the inputs of ``shared/parity/semantic_vae/<variant>/reference.pt``.

``python -m unitok.modalities.speech.semantic_vae_parity DIR`` prints the worst absolute difference of every
reference output (and debug intermediate) against the official code's.

Shape legend:
    B: batch, T: samples, N: latent frames, C: latent width
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from unitok.losses.regularizers import gaussian_kl
from unitok.modalities.speech.losses import SemanticVAELoss
from unitok.modalities.speech.semantic_vae import SemanticVAE

#: module-output debug entries (the rest are computed explicitly)
_HOOKED = [f"encoder.block.{i}" for i in range(7)] + [
    *(f"pre_block.{n}" for n in ("norm1", "attn", "norm3", "proj", "norm2", "mlp")),
    "fc_mu", "fc_var", "decoder.conv_pre", "decoder.resblocks.0", "decoder.resblocks.0.activations.0",
    "decoder.activation_post", "decoder.conv_post",
]  # fmt: skip


def max_abs_diff(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got - want| in float64 (inf on a shape mismatch)."""
    got, want = torch.as_tensor(got), torch.as_tensor(want)
    if got.shape != want.shape:
        return float("inf")
    return float((got.double() - want.double()).abs().max()) if got.numel() else 0.0


@torch.no_grad()
def reference_outputs(model: SemanticVAE, inputs: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Every entry of ``reference["outputs"]`` computed with our model (fixed eps, train mode where upstream)."""
    wav, eps = inputs["waveform"], inputs["eps"]
    ssl, ssl_short = inputs["ssl_feature"], inputs["ssl_feature_short"]
    was_training = model.training
    model.eval()
    feats = model.encoder(model.pad(wav))
    enc = model.encode(wav, eps=eps)
    n = enc["mu"].shape[1]
    out = {"encoder_out": feats, "pre_block_out": model.pre_block(feats.transpose(1, 2)), **enc,
           "kl_loss": gaussian_kl(enc["mu"], enc["logvar"]), "decoded_z": model.decode(enc["z"]),
           "decoded_mu": model.decode(enc["mu"]), "projector_out": model.project_ssl(ssl, None, n),
           "projector_out_short_guidance": model.project_ssl(ssl_short, None, n)}  # fmt: skip
    odd = model(wav[..., : inputs["odd_length"]], eps=eps)
    out.update({f"odd_{k}": odd[k] for k in ("mu", "logvar", "z", "audio")}, odd_kl_loss=odd["kl_loss"])
    model.train()
    train = model(wav, ssl, eps=eps)
    out["forward_train_kl_loss"], out["align_loss"] = train["kl_loss"], train["align_loss"]
    out["align_loss_short_guidance"] = model(wav, ssl_short, eps=eps)["align_loss"]
    model.train(was_training)
    losses = SemanticVAELoss()
    terms = losses(train, wav)
    out.update({k: terms[k] for k in ("mel_loss", "stft_loss", "waveform_l1")})
    out["mel_loss_per_scale"] = losses.mel.per_scale(train["audio"], wav)
    out["generator_loss_without_gan"] = terms["loss"]
    return out


@torch.no_grad()
def debug_outputs(model: SemanticVAE, debug: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The ``reference["debug"]`` intermediates (short input, eps = 0) and the folded weight-norm weights."""
    captured: dict[str, torch.Tensor] = {}
    names = {name: name for name in _HOOKED} | {f"decoder.ups.{i}.0": f"decoder.ups.{i}" for i in range(6)}
    hooks = []
    for module_name, key in names.items():
        if module_name in dict(model.named_modules()):
            hook = lambda _m, _i, o, key=key: captured.__setitem__(key, o)
            hooks.append(model.get_submodule(module_name).register_forward_hook(hook))
    try:
        mu = model.encode(debug["short_input"], sample=False)["mu"]
        captured["short_mu"] = mu
        x = model.decoder.conv_pre(mu.transpose(1, 2))
        for i in range(len(model.decoder.ups)):
            x = captured[f"decoder.stage{i}_out"] = model.decoder.stage(i, x)
        captured["short_decoded_mu"] = model.decode(mu)
    finally:
        for hook in hooks:
            hook.remove()
    for key in debug:
        if key.startswith("effective_weight."):
            captured[key] = model.get_submodule(key.removeprefix("effective_weight.")).weight
    return captured


def report(parity_dir: str | Path) -> dict[str, dict[str, float]]:
    """``{"outputs": {name: max abs diff}, "debug": {...}}`` for a parity directory."""
    parity_dir = Path(parity_dir)
    ref = torch.load(parity_dir / "reference.pt", weights_only=False)
    model = SemanticVAE.from_pretrained(parity_dir)
    ours = reference_outputs(model, ref["inputs"])
    dbg = debug_outputs(model, ref["debug"])
    return {
        "outputs": {k: max_abs_diff(ours[k], v) if k in ours else float("nan") for k, v in ref["outputs"].items()},
        "debug": {k: max_abs_diff(dbg[k], v) for k, v in ref["debug"].items() if k in dbg},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Compare the Semantic-VAE re-implementation with the official reference outputs.",
        epilog="example: python -m unitok.modalities.speech.semantic_vae_parity "
        "../shared/parity/semantic_vae/tiny_default",
    )
    parser.add_argument("parity_dir")
    args = parser.parse_args(argv)
    result = report(args.parity_dir)
    for section, diffs in result.items():
        print(f"[{section}]")
        for name, err in diffs.items():
            print(f"  {name:40s} {err:.3g}")
    worst = max(max(d.values()) for d in result.values())
    print(f"worst max |diff|: {worst:.3g}")


if __name__ == "__main__":
    main()
