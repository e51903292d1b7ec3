"""Encode / decode throughput and peak memory of unitok's VTP-B against an equivalent built from timm's Eva.

Measures, for a randomly initialised VTP-B (``vtp_b_f16d64``, 768 wide, 12 + 12 blocks, 64-d latents) at 256 px:

* encode = ``get_reconstruction_latents`` (B, 3, 256, 256) -> (B, 64, 16, 16)
* decode = ``get_latents_decoded_images`` (B, 64, 16, 16) -> (B, 3, 256, 256)

for three implementations built in the same run with the same weights and inputs: ours with float32 RoPE, ours
with bfloat16 RoPE (the official numerics), and ``timm-eva`` (``timm.models.eva.Eva`` with DINOv3 RoPE + a
bottleneck Linear, and a decoder of ``EvaBlock``s driven by ``RotaryEmbeddingDinoV3``). Our weights are copied
into the timm model and a sanity check first shows that latents and decoded images agree in float32.

Each (implementation, phase) runs in a fresh subprocess of this script (same thread count): warm-up calls, then
``--iters`` timed calls under ``torch.inference_mode``. ``--rounds`` repeats every measurement (implementations in
alternating order); images/s = batch / median of all timed calls (best ms: the fastest call). Memory is the
increase over what the process holds before the first call (model, inputs):

* CUDA: ``peak MB`` = ``max_memory_allocated`` - ``memory_allocated`` over warm-up + timed calls.
* CPU: the RSS high-water mark (VmHWM; ``ru_maxrss`` of the process), reset to the current RSS through
  ``/proc/self/clear_refs`` before measuring. ``live MB``: during the warm-up, with glibc told to mmap every block
  >= 128 KiB and unmap it on free, so it tracks the live tensors and repeats to ~1 MB. ``peak MB``: during the
  timed calls, with blocks up to 32 MiB served from the heap (where glibc's default settles), so it includes heap
  fragmentation and moves by tens of MB from run to run at batch 4.

Target: images/s ratio ours/timm >= 1.0.

Run:
    .venv/bin/python bench/vtp_throughput.py                      # CPU (fp32, batch 4) unless CUDA is present
    .venv/bin/python bench/vtp_throughput.py --device cuda        # bf16 autocast, batch 64
    .venv/bin/python bench/vtp_throughput.py --device cpu --iters 8 --json outputs/bench_cpu.json
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

PRESET, SIZE, PATCH, SEED = "vtp_b_f16d64", 256, 16, 0
OURS = {"float32": "ours-fp32rope", "bfloat16": "ours-bf16rope"}
TIMM = "timm-eva"
PHASES = ("encode", "decode")


# ---------------------------------------------------------------------------------------------- models
def build_ours(rope_dtype: str) -> nn.Module:
    import unitok

    torch.manual_seed(SEED)  # every implementation gets the same weights
    return unitok.create_model(PRESET, rope_dtype=rope_dtype, train_clip=False).eval()


class TimmVTP(nn.Module):
    """VTP-B from timm parts: Eva encoder + bottleneck; Linear + EvaBlocks + LayerNorm + Linear + PixelShuffle."""

    def __init__(self, dim: int = 768, depth: int = 12, heads: int = 12, latent: int = 64, hidden: int = 2048):
        super().__init__()
        from timm.layers import LayerNorm, RmsNorm, RotaryEmbeddingDinoV3
        from timm.models.eva import Eva, EvaBlock

        common = dict(qkv_bias=True, qkv_fused=True, attn_type="rope", mlp_ratio=hidden / dim, swiglu_mlp=True)
        common["swiglu_align_to"] = 8  # int(768 * 2048 / 768) = 2047 -> 2048
        self.encoder = Eva(
            img_size=SIZE, patch_size=PATCH, embed_dim=dim, depth=depth, num_heads=heads, **common,
            norm_layer=partial(RmsNorm, eps=1e-5), init_values=None, class_token=True,
            num_reg_tokens=0, use_abs_pos_emb=False, use_rot_pos_emb=True, rope_type="dinov3", rope_temperature=100,
            rope_rotate_half=True, dynamic_img_size=True, use_fc_norm=False, num_classes=0,
        )  # fmt: skip
        self.bottleneck = nn.Linear(dim, latent, bias=False)
        self.decoder_embed = nn.Linear(latent, dim)
        dec_norm = partial(LayerNorm, eps=1e-6)
        self.decoder_blocks = nn.ModuleList(
            EvaBlock(dim, heads, **common, num_prefix_tokens=0, rotate_half=True, norm_layer=dec_norm)
            for _ in range(depth)
        )
        self.decoder_norm = dec_norm(dim)
        self.decoder_head = nn.Linear(dim, 3 * PATCH * PATCH)
        self.decoder_rope = RotaryEmbeddingDinoV3(dim=dim // heads, temperature=100, rotate_half=True)

    def get_reconstruction_latents(self, images: torch.Tensor) -> torch.Tensor:
        h, w = images.shape[-2] // PATCH, images.shape[-1] // PATCH
        z = self.bottleneck(self.encoder.forward_features(images)[:, self.encoder.num_prefix_tokens :])
        return z.transpose(1, 2).reshape(z.shape[0], z.shape[2], h, w)

    def get_latents_decoded_images(self, latents: torch.Tensor) -> torch.Tensor:
        B, _, h, w = latents.shape
        x = self.decoder_embed(latents.flatten(2).transpose(1, 2))
        rope = self.decoder_rope.get_embed(shape=[h, w])  # per call, as Eva's dynamic_img_size encoder
        for blk in self.decoder_blocks:
            x = blk(x, rope=rope)
        x = self.decoder_head(self.decoder_norm(x))
        return F.pixel_shuffle(x.transpose(1, 2).reshape(B, -1, h, w), PATCH)


def ours_to_timm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our ``autoencoder.*`` keys -> :class:`TimmVTP` keys (block parameter names are already timm's)."""
    out = {}
    for key, value in state.items():
        if not key.startswith("autoencoder.") or key.endswith("mask_token"):
            continue  # the mask token is unused at inference
        key = key.removeprefix("autoencoder.")
        if key.startswith("patch_embed."):
            key = "encoder.patch_embed.proj." + key.split(".")[-1]
            value = value.view(value.shape[0], 3, PATCH, PATCH) if value.ndim == 2 else value
        elif key.startswith("decoder."):  # decoder.blocks.i / decoder.norm -> decoder_blocks.i / decoder_norm
            key = "decoder_" + key.removeprefix("decoder.")
        out[key] = value
    return out


def build(impl: str, timm_weights: str) -> nn.Module:
    """One model per worker process; the timm one loads our weights, converted and saved by :func:`prepare`."""
    if impl != TIMM:
        return build_ours(next(k for k, v in OURS.items() if v == impl))
    model = TimmVTP()
    model.load_state_dict(torch.load(timm_weights, mmap=True, weights_only=True), strict=True)
    return model.eval()


# ---------------------------------------------------------------------------------------------- measurement
def _rss_hwm_kib() -> int:
    """RSS high-water mark in KiB: VmHWM, else ru_maxrss (which a worker inherits from its parent across exec and
    which clear_refs does not lower)."""
    with contextlib.suppress(OSError), open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def _reset_rss_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
        return True
    except OSError:
        return False


def _mallopt(mmap_threshold: int, trim_threshold: int) -> bool:
    """Fix glibc's mmap / trim thresholds (this also turns off its dynamic mmap threshold)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(-3, mmap_threshold) and libc.mallopt(-1, trim_threshold)  # M_MMAP_/M_TRIM_THRESHOLD
        libc.malloc_trim(0)
        return bool(ok)
    except (OSError, AttributeError):
        return False


def _calls(fn: Any, x: torch.Tensor, n: int, sync: Any) -> list[float]:
    times = []
    for _ in range(n):
        sync()
        t0 = time.perf_counter()
        fn(x)
        sync()
        times.append(time.perf_counter() - t0)
    return times


def worker(a: argparse.Namespace) -> dict[str, Any]:
    """One (implementation, phase) measurement; see the module docstring for the memory figures."""
    impl, phase = a.worker
    cuda = a.device == "cuda"
    # CPU warm-up: every block >= 128 KiB is mmapped and unmapped on free, so the RSS peak tracks live tensors
    mmap_small = not cuda and _mallopt(1 << 17, 1 << 17)
    model = build(impl, a.timm_weights).to(a.device)
    shape = (a.batch, 3, SIZE, SIZE) if phase == "encode" else (a.batch, 64, SIZE // PATCH, SIZE // PATCH)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(SEED + 1)).to(a.device)
    fn = model.get_reconstruction_latents if phase == "encode" else model.get_latents_decoded_images
    amp = torch.autocast(a.device, dtype=torch.bfloat16) if a.dtype == "bf16" else contextlib.nullcontext()
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    gc.collect()
    out: dict[str, Any] = {"impl": impl, "phase": phase, "live_mb": None}
    with torch.inference_mode(), amp:
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        out["rss_hwm_reset"] = not cuda and _reset_rss_hwm()
        base = torch.cuda.memory_allocated() if cuda else _rss_hwm_kib()
        _calls(fn, x, a.warmup, sync)
        if not cuda:
            if mmap_small and out["rss_hwm_reset"]:
                out["live_mb"] = (_rss_hwm_kib() - base) / 1024
            _mallopt(32 << 20, 64 << 20)  # timed: blocks up to 32 MiB from the heap, as glibc's default settles on
            _reset_rss_hwm()
            base = _rss_hwm_kib()
        times = _calls(fn, x, a.iters, sync)
        out["peak_mb"] = (torch.cuda.max_memory_allocated() - base) / 2**20 if cuda else (_rss_hwm_kib() - base) / 1024
    med = statistics.median(times)
    return {**out, "images_per_s": a.batch / med, "median_s": med, "times_s": times}


def run_worker(a: argparse.Namespace, impl: str, phase: str) -> dict[str, Any]:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", impl, phase, "--device", a.device,
           "--dtype", a.dtype, "--batch", str(a.batch), "--iters", str(a.iters), "--warmup", str(a.warmup),
           "--timm-weights", a.timm_weights]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"worker {impl}/{phase} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def prepare(timm_weights: str, check: bool, batch: int = 2) -> dict[str, float]:
    """Save our weights in the timm layout for the workers; with ``check``, compare the two in float32 on CPU
    (float32 RoPE; the decoders get the same latents). Returns the max abs differences and output scales."""
    ours, ref = build_ours("float32"), TimmVTP().eval()
    ref.load_state_dict(ours_to_timm(ours.state_dict()), strict=True)
    torch.save(ref.state_dict(), timm_weights)
    if not check:
        return {}
    x = torch.randn(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(SEED + 1))
    with torch.inference_mode():
        z, z_ref = ours.get_reconstruction_latents(x), ref.get_reconstruction_latents(x)
        y, y_ref = ours.get_latents_decoded_images(z), ref.get_latents_decoded_images(z)
    out = {}
    for name, got, want in (("latents", z, z_ref), ("images", y, y_ref)):
        out[f"{name}_max_abs_diff"] = (got - want).abs().max().item()
        out[f"{name}_max_abs"] = want.abs().max().item()
    return out


def machine(device: str) -> dict[str, Any]:
    import timm

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "timm": timm.__version__, "python": platform.python_version(),
            "gpu": torch.cuda.get_device_name() if device == "cuda" else None}  # fmt: skip


# ---------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["fp32", "bf16"], help="default: fp32 on CPU, bf16 autocast on CUDA")
    p.add_argument("--batch", type=int, help="default: 4 on CPU, 64 on CUDA")
    p.add_argument("--iters", type=int, help="timed calls per measurement (default: 5 on CPU, 20 on CUDA)")
    p.add_argument("--warmup", type=int, help="untimed calls first (default: 1 on CPU, 5 on CUDA)")
    p.add_argument("--rounds", type=int, default=2, help="repeat every measurement, alternating the order")
    p.add_argument("--rope-dtype", choices=["float32", "bfloat16", "both"], default="both")
    p.add_argument("--skip-check", action="store_true", help="skip the float32 equivalence check")
    p.add_argument("--json", help="write every figure to this path")
    p.add_argument("--worker", nargs=2, metavar=("IMPL", "PHASE"), help=argparse.SUPPRESS)
    p.add_argument("--timm-weights", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    cpu = a.device == "cpu"
    a.dtype = a.dtype or ("fp32" if cpu else "bf16")
    a.batch = a.batch or (4 if cpu else 64)
    a.iters = a.iters or (5 if cpu else 20)
    a.warmup = max(1, a.warmup if a.warmup is not None else (1 if cpu else 5))
    return a


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    if a.worker:
        print(json.dumps(worker(a)))
        return
    if a.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda but no CUDA device is available")
    t_start = time.perf_counter()
    info = machine(a.device)
    gpu = f" | {info['gpu']}" if info["gpu"] else ""
    print(f"# {info['cpu']} ({info['cores']} cores, {info['torch_threads']} torch threads){gpu} | torch {info['torch']}"
          f" | timm {info['timm']} | python {info['python']}")  # fmt: skip
    print(f"# {PRESET} @ {SIZE}px, device={a.device} dtype={a.dtype} batch={a.batch} warmup={a.warmup} "
          f"iters={a.iters} rounds={a.rounds}")  # fmt: skip
    ours = [OURS[d] for d in (["float32", "bfloat16"] if a.rope_dtype == "both" else [a.rope_dtype])]
    impls = [*ours, TIMM]
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {(i, p): [] for i in impls for p in PHASES}
    with tempfile.TemporaryDirectory(prefix="vtp_bench_") as tmp:
        a.timm_weights = os.path.join(tmp, "timm_vtp_b.pt")
        check = prepare(a.timm_weights, check=not a.skip_check)
        if check:
            print(f"# equivalence (fp32 RoPE, fp32 CPU): latents max|diff| {check['latents_max_abs_diff']:.2e} "
                  f"(max|z| {check['latents_max_abs']:.2f}), images max|diff| {check['images_max_abs_diff']:.2e} "
                  f"(max|x| {check['images_max_abs']:.2f})")  # fmt: skip
            if max(check["latents_max_abs_diff"], check["images_max_abs_diff"]) > 1e-4:
                sys.exit("the timm model is not equivalent to ours; the comparison would be meaningless")
        for r in range(a.rounds):  # phase by phase, implementations in alternating order
            for phase in PHASES:
                for impl in impls if r % 2 == 0 else impls[::-1]:
                    runs[impl, phase].append(run_worker(a, impl, phase))
    results = []
    print(f"\n{'impl':<15} {'phase':<7} {'images/s':>9} {'ms/call':>8} {'best ms':>8} {'peak MB':>8} {'live MB':>8}")
    for (impl, phase), rs in runs.items():
        times = [t for r in rs for t in r["times_s"]]  # every timed call of every round
        med, peak = statistics.median(times), statistics.median(r["peak_mb"] for r in rs)
        live = statistics.median(r["live_mb"] for r in rs) if all(r["live_mb"] is not None for r in rs) else None
        results.append({"impl": impl, "phase": phase, "images_per_s": a.batch / med, "best_images_per_s":
                        a.batch / min(times), "peak_mb": peak, "live_mb": live, "runs": rs})  # fmt: skip
        live_s = f"{live:>8.1f}" if live is not None else f"{'-':>8}"
        ms = f"{1e3 * med:>8.1f} {1e3 * min(times):>8.1f}"
        print(f"{impl:<15} {phase:<7} {a.batch / med:>9.2f} {ms} {peak:>8.1f} {live_s}")
    by = {(r["impl"], r["phase"]): r for r in results}
    ratios = {}
    print()
    for impl in ours:
        for phase in PHASES:
            mine, ref = by[impl, phase], by[TIMM, phase]
            ratio = mine["images_per_s"] / ref["images_per_s"]
            best = mine["best_images_per_s"] / ref["best_images_per_s"]
            mem = {k: mine[k] / ref[k] if mine[k] is not None and ref[k] else None for k in ("peak_mb", "live_mb")}
            ratios[f"{phase}/{impl}"] = {"throughput": ratio, "best_throughput": best, **mem}
            mem_s = ", ".join(f"{k[:4]} {v:.2f}" for k, v in mem.items() if v is not None)
            print(f"{phase} ratio ours/timm = {ratio:.3f}  [{impl}; {'ok' if ratio >= 1.0 else 'BELOW'} target 1.0; "
                  f"best-call ratio {best:.3f}; memory ours/timm: {mem_s}]")  # fmt: skip
    elapsed = time.perf_counter() - t_start
    print(f"\n# total {elapsed:.0f} s")
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json, "w") as f:
            args = {k: v for k, v in vars(a).items() if k not in ("worker", "timm_weights")}
            json.dump({"machine": info, "args": args, "check": check, "results": results, "ratios": ratios,
                       "elapsed_s": elapsed}, f, indent=2)  # fmt: skip


if __name__ == "__main__":
    main()
