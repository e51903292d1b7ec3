"""Training-step throughput (seconds of audio per second) and peak memory of speech tokenizer recipes.

Times full optimiser steps of the real task and trainer (both optimiser phases, clipping, EMA) on random
inputs of the recipe's shapes: ``--batch`` crops of ``--crop`` seconds of 16 kHz audio, and random guidance
features for the Semantic-VAE alignment term (``ssl.source: batch``; the cost of an on-the-fly WavLM teacher is
not included). The first config is the reference: every row prints its throughput relative to it.

Configs (``--configs``, comma-separated): the names below, or any recipe YAML path (e.g. the unitok speech
recipe, for a ratio against the Semantic-VAE baseline). ``--list`` prints the names and which exist.

    semantic_vae         recipes/speech/semantic_vae_16k_d64.yaml (72.8M generator + 42.5M discriminator)
    semantic_vae_gfirst  the same with the trainer's default order (generator, then discriminator: one generator
                         forward less per step than upstream's discriminator-first order)
    acoustic_vae_d64     recipes/speech/acoustic_vae_16k_d64.yaml (no alignment term)
    acoustic_vae_d16     recipes/speech/acoustic_vae_16k_d16.yaml
    semantic_vae_tiny    recipes/debug/semantic_vae_tiny.yaml (CPU-sized)
    unitok_speech_b      recipes/speech/unitok_speech_b_p320_d64.yaml without its alignment term (that needs local
                         WavLM-large weights): the unitok speech tokenizer, for the ratio against Semantic-VAE
    unitok_speech_s      the same at size S
    unitok_speech_tiny   recipes/debug/speech_tiny.yaml (CPU-sized)

Each row runs at its recipe's precision (``--dtype`` forces one).

Run:
    .venv/bin/python bench/speech_train_step.py                      # CPU: released size, batch 1, 2 steps
    .venv/bin/python bench/speech_train_step.py --configs semantic_vae_tiny,semantic_vae --batch 2
    .venv/bin/python bench/speech_train_step.py --device cuda --batch 24 \\
        --configs semantic_vae,semantic_vae_gfirst,acoustic_vae_d64      # one H100, upstream's per-GPU batch
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
CONFIGS: dict[str, tuple[str, list[str]]] = {
    "semantic_vae": ("recipes/speech/semantic_vae_16k_d64.yaml", []),
    "semantic_vae_gfirst": ("recipes/speech/semantic_vae_16k_d64.yaml", ["task.params.disc_first=false"]),
    "acoustic_vae_d64": ("recipes/speech/acoustic_vae_16k_d64.yaml", []),
    "acoustic_vae_d16": ("recipes/speech/acoustic_vae_16k_d16.yaml", []),
    "semantic_vae_tiny": ("recipes/debug/semantic_vae_tiny.yaml", []),
    "unitok_speech_b": ("recipes/speech/unitok_speech_b_p320_d64.yaml", ["losses.terms.align.weight=0"]),
    "unitok_speech_s": ("recipes/speech/unitok_speech_s_p320_d64.yaml", ["losses.terms.align.weight=0"]),
    "unitok_speech_tiny": ("recipes/debug/speech_tiny.yaml", []),
}


def recipe_of(config: str) -> tuple[Path, list[str]]:
    """(recipe path, overrides) of a config name or a recipe path."""
    if config in CONFIGS:
        path, overrides = CONFIGS[config]
        return REPO / path, list(overrides)
    if config.endswith((".yaml", ".yml")) and Path(config).is_file():
        return Path(config), []
    raise SystemExit(f"unknown config {config!r}: one of {', '.join(CONFIGS)} or a recipe YAML path (--list)")


def build(config: str, args, device: torch.device):
    """(trainer, task) of a config at the benchmark's batch size, on ``device``."""
    from unitok.engine.distributed import DistInfo
    from unitok.engine.trainer import Trainer
    from unitok.train import build_task, load_run_config

    path, overrides = recipe_of(config)
    overrides += [f"train.batch_size={args.batch}", f"train.device={device.type}", "train.progress=false",
                  "train.strategy=none", *([f"train.precision={args.dtype}"] if args.dtype else [])]  # fmt: skip
    cfg = load_run_config(path, overrides)
    if cfg.task.name == "semantic_vae" and cfg.task.params.get("ssl", {}).get("source") == "teacher":
        cfg = load_run_config(path, [*overrides, "task.params.ssl.source=batch"])  # random features stand in
    task = build_task(cfg)
    dummy = [{"x": torch.zeros(1)}] * args.batch
    trainer = Trainer(task, dummy, None, cfg.optim, cfg.train, None, DistInfo(device=device))
    return trainer, task, cfg.train.precision


def random_batch(task, args, device: torch.device) -> dict:
    B, T = args.batch, int(args.crop * 16000)
    batch = {"audio": 0.1 * torch.randn(B, T, device=device), "audio_lens": torch.full((B,), T, device=device),
             "text": ["a sentence of about ten words read by a speaker"] * B}  # fmt: skip
    gen = getattr(task, "generator", None)
    if gen is not None and getattr(task, "ssl_teacher", True) is None:  # Semantic-VAE with precomputed features
        frames = int(args.crop * 50)
        width = gen.config.dac.distill_hidden_dim
        batch |= {"ssl_features": torch.randn(B, frames, width, device=device),
                  "ssl_lens": torch.full((B,), frames, device=device)}  # fmt: skip
    return batch


def measure(config: str, args, device: torch.device) -> dict:
    torch.manual_seed(0)
    trainer, task, precision = build(config, args, device)
    batch = random_batch(task, args, device)
    batches = iter(lambda: batch, None)
    cuda = device.type == "cuda"
    for _ in range(args.warmup):
        trainer.train_step(batches)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.iters):
        t = time.perf_counter()
        trainer.train_step(batches)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    sec = statistics.median(times)
    params = {n: sum(p.numel() for p in getattr(task, n).parameters()) / 1e6 for n in task.trainable}
    out = {
        "config": config,
        "precision": precision,
        "step_s": sec,
        "audio_s_per_s": args.batch * args.crop / sec,
        "params_m": params,
    }
    if cuda:
        out["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    else:
        import resource

        out["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    del trainer, task
    if cuda:
        torch.cuda.empty_cache()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None, choices=["fp32", "bf16"], help="default: each recipe's precision")
    p.add_argument("--batch", type=int, default=None, help="crops per step (default: 24 on CUDA, 1 on CPU)")
    p.add_argument("--crop", type=float, default=3.0, help="seconds per crop (upstream: 3.0)")
    p.add_argument("--iters", type=int, default=None, help="timed steps (default: 10 on CUDA, 2 on CPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 3 on CUDA, 1 on CPU)")
    p.add_argument("--configs", default="semantic_vae", help="comma-separated names or recipe paths (--list)")
    p.add_argument("--list", action="store_true", help="print the config names and exit")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    p.add_argument("--cudnn-benchmark", type=int, default=1, help="cuDNN autotuner (upstream's train.py: on)")
    args = p.parse_args()
    if args.list:
        for name, (path, overrides) in CONFIGS.items():
            print(f"{name:20s} {path} {' '.join(overrides)}".rstrip())
        return
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    torch.backends.cudnn.benchmark = bool(args.cudnn_benchmark)
    args.batch = args.batch or (24 if cuda else 1)
    args.iters = args.iters or (10 if cuda else 2)
    args.warmup = args.warmup if args.warmup is not None else (3 if cuda else 1)
    name = torch.cuda.get_device_name(device) if cuda else f"{platform.processor() or platform.machine()}"
    threads = f", cudnn.benchmark {bool(args.cudnn_benchmark)}" if cuda else f", {torch.get_num_threads()} threads"
    print(f"# speech train step: {device.type} {name}{threads}, batch {args.batch} x {args.crop:g} s, "
          f"torch {torch.__version__}")  # fmt: skip
    rows = []
    for config in args.configs.split(","):
        r = measure(config, args, device)
        r["ratio_vs_first"] = r["audio_s_per_s"] / (rows[0]["audio_s_per_s"] if rows else r["audio_s_per_s"])
        rows.append(r)
        mem = f"{r['peak_gib']:.1f} GiB peak" if cuda else f"{r['peak_rss_gib']:.1f} GiB RSS (process max)"
        sizes = " + ".join(f"{k} {v:.1f}M" for k, v in r["params_m"].items())
        print(f"{config:20s} {r['precision']:4s} {r['audio_s_per_s']:9.2f} audio s/s  {r['step_s']:8.3f} s/step  "
              f"{mem}  x{r['ratio_vs_first']:.2f} vs {rows[0]['config']}  ({sizes})", flush=True)  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "device": name, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
