"""Compare a VTP model with the official reference outputs (``shared/parity/vtp_small_default``).

``python -m unitok.modalities.image.vtp_parity PARITY_DIR`` prints the max abs difference of every public-API
output, for bf16 RoPE against ``outputs`` and fp32 RoPE against ``fp32_rope_outputs``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


def _flatten(value) -> list[torch.Tensor]:
    if torch.is_tensor(value):
        return [value]
    return [t for v in value for t in _flatten(v)]


def max_abs_diff(got, want) -> float:
    """Max abs difference over (nested lists of) tensors; raises on a shape mismatch."""
    got, want = _flatten(got), _flatten(want)
    if len(got) != len(want):
        raise ValueError(f"{len(got)} tensors vs {len(want)} in the reference")
    worst = 0.0
    for g, w in zip(got, want, strict=True):
        if g.shape != w.shape:
            raise ValueError(f"shape {tuple(g.shape)} vs reference {tuple(w.shape)}")
        worst = max(worst, (g.float() - w.float()).abs().max().item())
    return worst


@torch.no_grad()
def public_api_outputs(m, inputs: dict) -> dict:
    """Every public-API output, named as in ``reference.pt['outputs']``."""
    img, img_ns, txt, lat = (
        inputs["images"],
        inputs["images_nonsquare"],
        inputs["text_tokens"],
        inputs["random_latents"],
    )
    out = {"recon_latents": m.get_reconstruction_latents(img)}
    out["decoded_images"] = m.get_latents_decoded_images(out["recon_latents"])
    out["decoded_random_latents"] = m.get_latents_decoded_images(lat)
    out["clip_image_feature"] = m.get_clip_image_feature(img)
    out["clip_image_feature_unnorm"] = m.get_clip_image_feature(img, normalize=False)
    out["clip_text_feature"] = m.get_clip_text_feature(txt)
    out["clip_text_feature_unnorm"] = m.get_clip_text_feature(txt, normalize=False)
    out["clip_logits_image_text"] = m.get_clip_logits(img, txt)[0]
    last, bott = m.get_last_layer_feature(img), m.get_last_layer_feature(img, use_bottleneck=True)
    out["last_layer_cls_token"], out["last_layer_patch_tokens"] = last["cls_token"], last["patch_tokens"]
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


@torch.no_grad()
def fp32_rope_outputs(m, inputs: dict) -> dict:
    """The outputs named in ``reference.pt['fp32_rope_outputs']`` (decoded_images decodes random_latents)."""
    return {
        "recon_latents": m.get_reconstruction_latents(inputs["images"]),
        "decoded_images": m.get_latents_decoded_images(inputs["random_latents"]),
        "last_layer_patch_tokens": m.get_last_layer_feature(inputs["images"])["patch_tokens"],
    }


def report(parity_dir: str | Path) -> dict[str, dict[str, float]]:
    """{'bf16_rope': {name: max abs diff}, 'fp32_rope': {...}} for the checkpoint in ``parity_dir``."""
    import unitok

    ref = torch.load(Path(parity_dir) / "reference.pt", weights_only=False)
    result = {}
    for mode, key, fn in [
        ("bfloat16", "outputs", public_api_outputs),
        ("float32", "fp32_rope_outputs", fp32_rope_outputs),
    ]:
        model = unitok.load_pretrained(parity_dir, rope_dtype=mode)
        ours = fn(model, ref["inputs"])
        result[f"{mode}_rope"] = {name: max_abs_diff(ours[name], want) for name, want in ref[key].items()}
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("parity_dir", nargs="?", default="../shared/parity/vtp_small_default")
    args = p.parse_args(argv)
    for mode, diffs in report(args.parity_dir).items():
        print(f"== {mode.replace('_', ' ')}: {len(diffs)} outputs, worst max abs diff {max(diffs.values()):.3g}")
        for name, d in diffs.items():
            print(f"  {name:40s} {d:.3g}")


if __name__ == "__main__":
    main()
