"""``unitok-demo``: load a VTP checkpoint, encode and decode the embedded sample images, report latents.

Writes ``reconstructions.png`` (originals above reconstructions) and ``summary.json`` (latent shape and
statistics, reconstruction PSNR) into ``--out``, and prints a human summary.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

EXAMPLES = """examples:
  unitok-demo --ckpt ../shared/parity/vtp_small_default --out outputs/demo
  unitok-demo --ckpt /data/ckpt/VTP-Large-f16d64 --images 8 --size 256 --out outputs/vtp_l
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="unitok-demo",
        description="Encode and decode sample images with a VTP tokenizer checkpoint (local directory).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--ckpt", required=True, help="pretrained directory (config.json + model.safetensors)")
    p.add_argument("--out", default="outputs/demo", help="output directory (default: outputs/demo)")
    p.add_argument("--images", type=int, default=8, help="number of embedded sample images (default 8)")
    p.add_argument("--size", type=int, default=None, help="image side in pixels (default: the model's image_size)")
    p.add_argument("--seed", type=int, default=0, help="seed of the procedural sample images")
    p.add_argument("--rope-dtype", default="bfloat16", choices=["bfloat16", "float32"], help="RoPE numerics")
    return p.parse_args(argv)


def latent_summary(latents: torch.Tensor) -> dict:
    """Shape and statistics of (B, L, h, w) latents (per-channel stats over batch and grid)."""
    per_channel_mean = latents.mean(dim=(0, 2, 3))
    per_channel_std = latents.std(dim=(0, 2, 3))
    return {
        "shape": list(latents.shape),
        "mean": latents.mean().item(),
        "std": latents.std().item(),
        "min": latents.min().item(),
        "max": latents.max().item(),
        "channel_mean_range": [per_channel_mean.min().item(), per_channel_mean.max().item()],
        "channel_std_range": [per_channel_std.min().item(), per_channel_std.max().item()],
    }


def run(args: argparse.Namespace) -> dict:
    import unitok
    from unitok.eval.metrics.image import psnr
    from unitok.modalities.image.toy import sample_images

    start = time.perf_counter()
    model = unitok.load_pretrained(args.ckpt, rope_dtype=args.rope_dtype)
    if getattr(model, "model_type", None) != "vtp":
        raise SystemExit(f"unitok-demo needs a VTP checkpoint; {args.ckpt} holds model_type {model.model_type!r}")
    size = args.size or model.config.image_size
    model.adapter.grid_size(size, size)  # clear error for a size that is not a multiple of the patch size
    images01, captions = sample_images(args.images, size=size, seed=args.seed)
    x = model.adapter.normalize(images01)
    with torch.inference_mode():
        latents = model.get_reconstruction_latents(x)
        recon01 = model.adapter.denormalize(model.get_latents_decoded_images(latents))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from torchvision.utils import save_image

    grid_path = out / "reconstructions.png"
    save_image(torch.cat([images01, recon01]), grid_path, nrow=args.images, padding=2, pad_value=1.0)
    values = psnr(images01, recon01)
    summary = {
        "checkpoint": os.path.abspath(args.ckpt),
        "config": {k: getattr(model.config, k) for k in ("image_size", "vision_embed_dim", "vision_depth",
                                                         "vision_feature_bottleneck", "decoder_embed_dim")},
        "rope_dtype": args.rope_dtype,
        "image_size": size,
        "num_images": args.images,
        "captions": captions,
        "latents": latent_summary(latents),
        "psnr_db": {"mean": values.mean().item(), "per_image": values.tolist()},
        "seconds": round(time.perf_counter() - start, 2),
        "png": str(grid_path),
    }  # fmt: skip
    with open(out / "summary.json", "w") as f:
        json.dump(summary, f, indent=2)
    return summary


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        s = run(args)
    except (FileNotFoundError, ValueError) as e:
        print(f"unitok-demo: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    lat = s["latents"]
    print(f"checkpoint   {s['checkpoint']}  (RoPE {s['rope_dtype']})")
    print(f"images       {s['num_images']} embedded samples at {s['image_size']} px")
    print(
        f"latents      shape {tuple(lat['shape'])}  mean {lat['mean']:+.4f}  std {lat['std']:.4f}  "
        f"range [{lat['min']:.3f}, {lat['max']:.3f}]"
    )
    print(
        f"             per-channel mean in [{lat['channel_mean_range'][0]:+.3f}, {lat['channel_mean_range'][1]:+.3f}]"
        f", std in [{lat['channel_std_range'][0]:.3f}, {lat['channel_std_range'][1]:.3f}]"
    )
    print(f"PSNR         {s['psnr_db']['mean']:.2f} dB (mean over images)")
    print(f"wrote        {s['png']} and {Path(s['png']).with_name('summary.json')}  ({s['seconds']} s)")


if __name__ == "__main__":
    main()
