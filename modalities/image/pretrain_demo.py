"""The pre-training demo: train the tiny VTP and an AE-only twin on the embedded shapes (CPU), then compare.

For each run it reports zero-shot top-1 on the fixed validation classes (CLIP prompts), linear-probe top-1 on
frozen encoder features (CLS + mean patch token) and reconstruction PSNR, writes ``results.json`` and a PNG
of originals next to both reconstructions. The paper's point, on a laptop: reconstruction alone gives good
pixels but poor semantics; adding the contrastive and self-supervised objectives gives both.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "debug" / "image_tiny.yaml"
VARIANTS = {
    "vtp": [],
    "ae_only": ["losses.groups.clip=0", "losses.groups.ssl=0"],
    "clip_ae": ["losses.groups.ssl=0"],
    "ssl_ae": ["losses.groups.clip=0"],
}
EXAMPLES = """examples:
  unitok-demo-pretrain                           # both runs with the recipe's budget, results in outputs/demo
  unitok-demo-pretrain --steps 100 --out /tmp/quick
  unitok-demo-pretrain --variants ae_only --set model.overrides.decoder_embed_dim=64 --out /tmp/ae_dec64
"""


@torch.no_grad()
def encode_split(model, dataset, batch_size: int = 100) -> dict[str, torch.Tensor]:
    """Probe features (CLS + mean patch), CLIP image embeddings (if any), reconstructions and targets in [0, 1]."""
    feats, clip, recon, images, labels = [], [], [], [], []
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        x = torch.stack([it["image"] for it in items])
        tokens, enc = model.encode_features(x)  # one encoder pass serves all three uses
        feats.append(torch.cat([enc.cls, enc.tokens.mean(1)], dim=1))
        if model.text is not None:
            clip.append(model.clip_feature_from(enc))
        recon.append(model.adapter.denormalize(model.decode_features(enc.tokens, tokens.meta["grid"])))
        images.append(model.adapter.denormalize(x))
        labels.append(torch.tensor([it["label"] for it in items]))
    out = {"features": torch.cat(feats), "recon": torch.cat(recon), "images": torch.cat(images),
           "labels": torch.cat(labels)}  # fmt: skip
    if clip:
        out["clip"] = torch.cat(clip)
    return out


def evaluate(model, train_probe, val, zero_shot: bool = True) -> dict[str, float]:
    """Zero-shot top-1 (when asked and the model has a text tower), linear-probe top-1 and PSNR on ``val``."""
    from unitok.eval.metrics.classification import linear_probe_accuracy, zero_shot_accuracy, zero_shot_classifier
    from unitok.eval.metrics.image import psnr

    model.eval()
    tr, va = encode_split(model, train_probe), encode_split(model, val)
    results = {
        "linear_probe_top1": linear_probe_accuracy(tr["features"], tr["labels"], va["features"], va["labels"]),
        "psnr_db": psnr(va["recon"], va["images"]).mean().item(),
    }
    if zero_shot and "clip" in va:
        classifier = zero_shot_classifier(model, model.get_tokenizer(), val.classnames, val.templates)
        results["zero_shot_top1"] = zero_shot_accuracy(va["clip"], classifier, va["labels"])["top1"]
    return results, va


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="unitok-demo-pretrain", description=__doc__, epilog=EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--out", default="outputs/demo", help="output directory")
    p.add_argument("--steps", type=int, default=None, help="optimiser steps per run (default: the recipe's)")
    p.add_argument("--recipe", default=str(RECIPE), help="recipe of the VTP run")
    p.add_argument("--variants", default="vtp,ae_only", help=f"comma-separated runs of {sorted(VARIANTS)}")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="recipe overrides for every run, e.g. model.overrides.decoder_embed_dim=64")  # fmt: skip
    p.add_argument("--probe-train", type=int, default=2400, help="training images of the linear probe")
    p.add_argument("--val", type=int, default=1200, help="validation images (zero-shot, probe, PSNR)")
    args = p.parse_args(argv)

    from torchvision.utils import save_image

    from unitok.modalities.image.toy import ToyShapes
    from unitok.train import build_run, load_run_config

    out = Path(args.out)
    results, recons = {}, []
    for name in args.variants.split(","):
        overrides = [f"run_dir={out / name}", *VARIANTS[name], *args.set]
        if args.steps is not None:
            overrides.append(f"train.steps={args.steps}")
        cfg = load_run_config(args.recipe, overrides)
        start = time.perf_counter()
        trainer, task = build_run(cfg)
        trainer.fit()
        minutes = (time.perf_counter() - start) / 60
        task.export_model().save_pretrained(out / name / "model", state_dict=trainer.export_state_dict())
        size = cfg.data.params.get("size", 64)
        train_probe = ToyShapes("train", size=size, num_samples=args.probe_train, seed=12345)
        val = ToyShapes("val", size=size, num_samples=args.val)
        trained_clip = task.composer.any_active("clip")  # an untrained text tower would score chance
        metrics, va = evaluate(task.export_model(), train_probe, val, zero_shot=trained_clip)
        results[name] = {**metrics, "train_minutes": round(minutes, 2), "steps": cfg.train.steps}
        recons.append(va["recon"][:8])
        print(f"[{name}] " + "  ".join(f"{k} {v:.4g}" for k, v in results[name].items()), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    save_image(torch.cat([va["images"][:8], *recons]), out / "reconstructions.png", nrow=8, padding=2, pad_value=1.0)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"\n{'run':10s} {'zero-shot':>10s} {'probe':>8s} {'PSNR dB':>8s} {'minutes':>8s}")
    for name, r in results.items():
        zs = f"{100 * r['zero_shot_top1']:.1f}%" if "zero_shot_top1" in r else "-"
        probe = 100 * r["linear_probe_top1"]
        print(f"{name:10s} {zs:>10s} {probe:>7.1f}% {r['psnr_db']:>8.2f} {r['train_minutes']:>8.2f}")
    print(f"wrote {out / 'results.json'} and {out / 'reconstructions.png'} (originals, then one row per run)")


if __name__ == "__main__":
    main()
