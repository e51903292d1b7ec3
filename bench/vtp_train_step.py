"""Training-step throughput, peak memory and model FLOPs utilisation of the VTP objective at VTP-B size.

For ``vtp_b_f16d64`` at 256 px (2 global crops of 256 px and ``--local`` local crops of 96 px, DINOv2-sized heads,
iBOT masking, LPIPS with a random VGG trunk) it times full optimiser steps of the real task and trainer for each
objective alone and for all four together, on random inputs of the right shapes, and prints images/s, peak
memory, FLOPs per step (``torch.utils.flop_counter``) and, on CUDA, MFU against the bf16 dense peak.

Run:
    .venv/bin/python bench/vtp_train_step.py                         # CPU, fp32, batch 2 (slow, for a figure)
    .venv/bin/python bench/vtp_train_step.py --device cuda --batch 64 --peak-tflops 989   # H100 bf16
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

CONFIGS = {
    "clip": {"clip": 1.0, "ssl": 0.0, "rec": 0.0},
    "ssl": {"clip": 0.0, "ssl": 1.0, "rec": 0.0},
    "rec": {"clip": 0.0, "ssl": 0.0, "rec": 1.0},
    "all": {"clip": 1.0, "ssl": 1.0, "rec": 0.1},
}


def build(config: str, args, device: torch.device):
    import unitok
    from unitok.losses.compose import LossComposer
    from unitok.losses.perceptual import LPIPS
    from unitok.modalities.image.vtp_task import VTPTask, VTPTaskConfig

    groups = CONFIGS[config]
    terms = {
        "clip": {"group": "clip"},
        "dino": {"group": "ssl"},
        "ibot": {"group": "ssl"},
        "koleo": {"weight": 0.1, "group": "ssl"},
        "rec_l1": {"group": "rec"},
        "rec_lpips": {"weight": 0.0},
    }
    composer = LossComposer({"terms": terms, "groups": groups})
    torch.manual_seed(0)
    model = unitok.create_model("vtp_b_f16d64")
    half = max(2, args.batch // 2)  # the paper samples SSL/rec subsets of the batch; KoLeo needs >= 2 images
    cfg = VTPTaskConfig(ssl_batch=half, rec_batch=half, head_prototypes=args.prototypes)
    task = VTPTask(model, composer, cfg, total_steps=1000)
    if groups["rec"]:  # LPIPS with a random VGG trunk: the real cost without the 528 MB weights file
        composer.cfg.terms["rec_lpips"].weight = 1.0
        task.reconstruction.perceptual = LPIPS(random_trunk=True)
    return task.to(device)


def random_batch(args, device) -> dict:
    B = args.batch
    img = lambda s: torch.randn(B, 3, s, s, device=device)  # noqa: E731
    return {
        "image": img(256),
        "global_crops": [img(256), img(256)],
        "local_crops": [img(96) for _ in range(args.local)],
        "text": [f"a photo of object number {i}" for i in range(B)],
    }


def measure(config: str, args, device) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    from unitok.engine.optim import OptimConfig, build_adamw

    task = build(config, args, device)
    opt = build_adamw(task.student, OptimConfig())
    batch = random_batch(args, device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16")

    def step(i: int) -> None:
        with autocast:
            loss, _ = task.training_forward(batch, i)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        task.after_step(i)

    with FlopCounterMode(display=False) as fc:
        step(0)
    flops = fc.get_total_flops()
    for i in range(args.warmup):
        step(i + 1)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(args.iters):
        t = time.perf_counter()
        step(i + 1 + args.warmup)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    sec = statistics.median(times)
    out = {"config": config, "images_per_s": args.batch / sec, "step_s": sec, "tflops_per_step": flops / 1e12}
    if device.type == "cuda":
        out["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        out["mfu"] = flops / sec / (args.peak_tflops * 1e12)
    else:
        import resource

        out["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None, choices=["fp32", "bf16"], help="default: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--batch", type=int, default=None, help="image-text pairs per step (default: 64 CUDA, 2 CPU)")
    p.add_argument("--local", type=int, default=8, help="local crops per image")
    p.add_argument("--prototypes", type=int, default=65536)
    p.add_argument("--iters", type=int, default=None)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the GPU (H100 SXM: 989)")
    p.add_argument("--configs", default="clip,ssl,rec,all")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    args.dtype = args.dtype or ("bf16" if cuda else "fp32")
    args.batch = args.batch or (64 if cuda else 2)
    args.iters = args.iters or (10 if cuda else 2)
    name = torch.cuda.get_device_name(device) if cuda else platform.processor() or platform.machine()
    print(
        f"# vtp_b_f16d64 train step @256px, {args.local} local crops, {device.type} {name}, {args.dtype}, "
        f"batch {args.batch}, torch {torch.__version__}"
    )
    rows = []
    for config in args.configs.split(","):
        r = measure(config, args, device)
        rows.append(r)
        mem = f"{r['peak_gib']:.1f} GiB" if cuda else f"{r['peak_rss_gib']:.1f} GiB RSS (process)"
        mfu = f"  MFU {100 * r['mfu']:.1f}%" if cuda else ""
        print(
            f"{config:5s} {r['images_per_s']:8.2f} img/s  {r['step_s']:7.3f} s/step  "
            f"{r['tflops_per_step']:8.3f} TFLOP/step  {mem}{mfu}",
            flush=True,
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "device": name, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
