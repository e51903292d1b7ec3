"""Throughput of the ``image.reconstruction`` suite against the official tool's pipeline, stage by stage.

Both pipelines reconstruct the same in-memory images (data loading excluded: smooth random colour fields, quantised
to k/255 like decoded files) with the same randomly initialised model, LPIPS and Inception nets:

* ``ours``: the suite's own per-batch function (``_measure_fn``: encode under the run's autocast, fp32 decode,
  per-image PSNR + SSIM, per-image LPIPS, Inception features of the truncated uint8 images, PNGs written by a
  thread pool), outputs moved to the CPU and one cache chunk written as the extraction does, then the suite's
  reduction (``FeatureStats`` + Fréchet distance).
* ``official``: the shape of VTP ``tools/test_reconstruction_hf.py``: per batch the same encode/decode,
  ``torchmetrics.StructuralSimilarityIndexMeasure`` per batch, the ``lpips`` package per batch, a per-image PSNR
  loop with ``.item()``, PNGs written one by one; then ``pytorch_fid.fid_score.calculate_fid_given_paths`` on the
  two PNG folders (read back, Inception, ``sqrtm``), with its Inception weights handed over the way
  ``InceptionFeatures`` does (random init from seed 0 unless ``--fid-weights``).

Stages are timed with CUDA synchronisation around each call; images/s = images / seconds of the whole pipeline
(the final FID included). The metrics of both are printed side by side: they must agree (same images, same nets).
Inception and the VGG trunk are random unless ``--fid-weights`` / ``--lpips-weights`` are given (same cost).

Run:
    .venv/bin/python bench/eval_reconstruction.py                  # CPU: vtp_s_f16d64 @128 px, 4 x 8 images
    .venv/bin/python bench/eval_reconstruction.py --device cuda    # VTP-L @256 px, bf16 encode, 20 x 50 images
    .venv/bin/python bench/eval_reconstruction.py --preset vtp_b_f16d64 --image-size 256 --batches 2 --json b.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch


class StageTimer:
    """Seconds per named stage, with CUDA synchronisation around every timed call."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: dict[str, float] = defaultdict(float)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def __call__(self, name: str):
        self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.seconds[name] += time.perf_counter() - start

    def wrap(self, name: str, fn):
        def timed(*args, **kwargs):
            with self(name):
                return fn(*args, **kwargs)

        return timed


def synthetic_images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """(n, 3, size, size) smooth colour fields plus mild noise, quantised to k / 255 (PNG cost close to photos)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 8, 8, generator=g)
    images = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    images = images + 0.03 * torch.randn(images.shape, generator=g)
    return (images.clamp(0, 1) * 255).round() / 255


def machine(device: torch.device) -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    gpu = f" | {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    return f"{cpu} ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads){gpu} | torch {torch.__version__}"


# ---------------------------------------------------------------------------------------------- set-up
def build(args, device: torch.device):
    """(eval context, suite config, measuring nets) for a random-init model of ``args.preset``."""
    from dataclasses import replace

    import unitok
    from unitok.engine.distributed import DistInfo
    from unitok.eval.checkpoints import LoadedCheckpoint
    from unitok.eval.context import EvalContext, EvalOptions
    from unitok.eval.suites import image_reconstruction as suite

    torch.manual_seed(0)
    model = unitok.create_model(args.preset, image_size=args.image_size).to(device).eval().requires_grad_(False)
    ckpt = LoadedCheckpoint(model, args.preset, "pretrained_dir", args.preset, {}, {"random": args.preset})
    options = EvalOptions(batch_size=args.batch, precision=args.precision)
    ctx = EvalContext(ckpt, None, Path(args.out), options, DistInfo(device=device))
    cfg = suite.ReconstructionConfig(fid_weights=args.fid_weights, lpips_weights=args.lpips_weights)
    lpips, lpips_info = suite._build_lpips(replace(cfg, random_init_nets=not args.lpips_weights))
    inception, inception_info = suite._build_inception(replace(cfg, random_init_nets=not args.fid_weights))
    for net in (lpips, inception):
        net.to(device).eval().requires_grad_(False)
    return ctx, cfg, suite._Nets(lpips, inception, {"lpips": lpips_info, "inception": inception_info})


def batches(images: torch.Tensor, size: int):
    """Batches as the suite's data loader yields them: CPU images, dataset indices and positions."""
    for start in range(0, len(images), size):
        index = torch.arange(start, min(start + size, len(images)))
        yield {"image": images[index], "index": index, "position": index}


# ---------------------------------------------------------------------------------------------- ours
def run_ours(args, ctx, cfg, nets, images: torch.Tensor, png_dir: Path) -> dict[str, Any]:
    """The suite's per-batch function and reduction, with its stages timed through wrapped calls."""
    from concurrent.futures import ThreadPoolExecutor

    from unitok.engine.checkpoint import atomic_torch_save
    from unitok.eval.suites import image_reconstruction as suite

    timer = StageTimer(ctx.device)
    tok = suite.image_tokenizer(ctx)
    tok.encode, tok.decode = timer.wrap("encode", tok.encode), timer.wrap("decode", tok.decode)
    nets.lpips.distances = timer.wrap("lpips", nets.lpips.distances)
    timed_nets = suite._Nets(nets.lpips, timer.wrap("inception", nets.inception), nets.info)
    patches = {"psnr": "psnr+ssim", "ssim": "psnr+ssim", "write_pngs": "png"}
    with contextlib.ExitStack() as stack, ThreadPoolExecutor(max_workers=8) as pool:
        for attr, stage in patches.items():
            stack.enter_context(mock.patch.object(suite, attr, timer.wrap(stage, getattr(suite, attr))))
        fn = suite._measure_fn(suite._Reconstructor(tok, ctx), timed_nets, png_dir, 0, pool)
        with torch.inference_mode():
            fn(next(batches(images, args.batch)))  # warm-up (cuDNN, allocator), not timed
            timer.seconds.clear()
            with timer("total"):
                parts = defaultdict(list)
                for batch in batches(images, args.batch):
                    for key, value in fn(batch).items():
                        parts[key].append(value.cpu())
                out = {key: torch.cat(value) for key, value in parts.items()}
                with timer("cache chunk"):
                    atomic_torch_save(out, png_dir.parent / "chunk.pt")
                with timer("fid (stats + sqrtm)"):
                    metrics, _ = suite._reduce(out, cfg)
    return {"seconds": dict(timer.seconds), "metrics": metrics}


# ---------------------------------------------------------------------------------------------- official
def _inception_loader(fid_weights: str | None):
    """What ``InceptionFeatures`` hands pytorch-fid instead of a download: the local file, or random weights."""
    from unitok.eval.metrics.inception import _random_init_state_dict

    if fid_weights is None:
        return _random_init_state_dict
    return lambda *_a, **_k: torch.load(fid_weights, map_location="cpu", weights_only=True)


@contextlib.contextmanager
def _pytorch_fid_scipy_compat():
    """pytorch-fid 0.3.0 calls ``linalg.sqrtm(..., disp=False)`` and unpacks (sqrtm, error estimate); SciPy 1.18
    removed ``disp``. Where it is gone, hand pytorch-fid that old calling convention (the same square root)."""
    import inspect

    from scipy import linalg

    sqrtm = linalg.sqrtm
    if "disp" in inspect.signature(sqrtm).parameters:
        yield
        return
    with mock.patch.object(linalg, "sqrtm", lambda a, disp=True: sqrtm(a) if disp else (sqrtm(a), 0.0)):
        yield


def _official_psnr(original: torch.Tensor, processed: torch.Tensor) -> float:
    """The tool's ``calculate_psnr`` on one image (values in 0-255)."""
    mse = torch.mean((original - processed) ** 2)
    if mse == 0:
        return float("inf")
    return 20 * torch.log10(torch.tensor(255.0) / torch.sqrt(mse)).item()


def run_official(args, ctx, nets, images: torch.Tensor, folders: dict[str, Path]) -> dict[str, Any]:
    """The official tool's loop (same model and nets), then pytorch-fid on the two PNG folders."""
    import pytorch_fid.inception as pfi
    from PIL import Image
    from pytorch_fid.fid_score import calculate_fid_given_paths
    from torchmetrics.image import StructuralSimilarityIndexMeasure
    from torchvision.transforms import Normalize

    device, model, timer = ctx.device, ctx.ckpt.model, StageTimer(ctx.device)
    mean, std = model.adapter.mean, model.adapter.std
    normalize = Normalize(mean, std)
    transform_rev = Normalize([-m / s for m, s in zip(mean, std, strict=True)], [1 / s for s in std])
    ssim_metric = StructuralSimilarityIndexMeasure(data_range=1.0).to(device)
    values = defaultdict(list)

    def step(batch, position: int) -> None:
        x = normalize(batch).to(device)
        with timer("encode"), torch.autocast(device.type, dtype=torch.bfloat16, enabled=ctx.bf16):
            latents = model.get_reconstruction_latents(x)
        with timer("decode"), torch.autocast(device.type, enabled=False):
            recon = transform_rev(model.get_latents_decoded_images(latents.float())).clamp(0, 1)
        orig = transform_rev(x).clamp(0, 1)
        with timer("lpips"):
            values["lpips"].append(nets.lpips.net(orig * 2 - 1, recon * 2 - 1).mean().item())
        with timer("psnr+ssim"):
            values["ssim"].append(ssim_metric(orig, recon).item())
            values["psnr"] += [_official_psnr(o * 255.0, r * 255.0) for o, r in zip(orig, recon, strict=True)]
        with timer("png"):
            for kind, tensor in (("ref", orig), ("rec", recon)):
                arrays = (tensor.permute(0, 2, 3, 1).cpu().numpy() * 255.0).astype(np.uint8)
                for i, array in enumerate(arrays):
                    Image.fromarray(array).save(folders[kind] / f"{kind}_{position + i:06d}.png")

    with torch.inference_mode():
        step(images[: args.batch], 0)  # warm-up, not timed
        timer.seconds.clear()
        values.clear()
        with timer("total"):
            for start in range(0, len(images), args.batch):
                step(images[start : start + args.batch], start)
            paths = [str(folders["ref"]), str(folders["rec"])]
            with timer("fid (pytorch-fid: read PNGs, Inception, sqrtm)"), torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)  # the suite's random-init Inception comes from seed 0 too
                loader = mock.patch.object(pfi, "load_state_dict_from_url", _inception_loader(args.fid_weights))
                with loader, _pytorch_fid_scipy_compat():
                    rfid = calculate_fid_given_paths(paths, 50, str(device), 2048, args.fid_workers)
    metrics = {k: float(np.mean(v)) for k, v in values.items()} | {"rfid": float(rfid)}
    return {"seconds": dict(timer.seconds), "metrics": metrics}


# ---------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--preset", help="model (default: vtp_l_f16d64 on CUDA, vtp_s_f16d64 on CPU)")
    p.add_argument("--image-size", type=int, help="default: 256 on CUDA, 128 on CPU")
    p.add_argument("--batch", type=int, help="images per batch (default: 50 on CUDA, as the official script; 8 on CPU)")
    p.add_argument("--batches", type=int, help="timed batches (default: 20 on CUDA, 4 on CPU)")
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto", help="encode autocast")
    p.add_argument("--fid-weights", help="pt_inception-2015-12-05-6726825d.pth (default: random init)")
    p.add_argument("--lpips-weights", help="vgg16-397923af.pth (default: random VGG trunk)")
    p.add_argument("--fid-workers", type=int, help="pytorch-fid PNG reader workers (default: 4 on CUDA, 0 on CPU)")
    p.add_argument("--json", help="write every figure to this path")
    a = p.parse_args(argv)
    cuda = a.device == "cuda"
    a.preset = a.preset or ("vtp_l_f16d64" if cuda else "vtp_s_f16d64")
    a.image_size = a.image_size or (256 if cuda else 128)
    a.batch = a.batch or (50 if cuda else 8)
    a.batches = a.batches or (20 if cuda else 4)
    a.fid_workers = a.fid_workers if a.fid_workers is not None else (4 if cuda else 0)
    return a


def report(name: str, result: dict[str, Any], n: int) -> None:
    seconds = result["seconds"]
    total = seconds["total"]
    stages = "  ".join(f"{k} {v:.2f}s" for k, v in seconds.items() if k != "total")
    other = total - sum(v for k, v in seconds.items() if k != "total")
    print(f"{name:9s} {n / total:8.2f} img/s  total {total:7.2f}s  | {stages}  other {other:.2f}s", flush=True)
    print(f"{'':9s} metrics " + "  ".join(f"{k} {v:.6g}" for k, v in sorted(result["metrics"].items())))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but no CUDA device is available")
    n = args.batch * args.batches
    print(f"# {machine(device)}")
    with tempfile.TemporaryDirectory(prefix="recon_bench_") as tmp:
        args.out = tmp
        ctx, cfg, nets = build(args, device)
        encode = "bf16 autocast" if ctx.bf16 else "fp32"
        print(f"# {args.preset} (random init) @ {args.image_size}px, {n} images = {args.batches} x {args.batch}, "
              f"encode {encode}, decode fp32, Inception {'file' if args.fid_weights else 'random'}, "
              f"VGG {'file' if args.lpips_weights else 'random'}")  # fmt: skip
        images = synthetic_images(n, args.image_size)
        folders = {k: Path(tmp) / k for k in ("ours", "ref", "rec")}
        for folder in folders.values():
            folder.mkdir()
        official = run_official(args, ctx, nets, images, folders)
        ours = run_ours(args, ctx, cfg, nets, images, folders["ours"])
    report("official", official, n)
    report("ours", ours, n)
    ratio = official["seconds"]["total"] / ours["seconds"]["total"]
    gap = abs(ours["metrics"]["rfid"] - official["metrics"]["rfid"]) / max(abs(official["metrics"]["rfid"]), 1e-12)
    print(f"ratio ours/official images/s: {ratio:.2f}x   (rFID relative difference {gap:.1e})")
    if args.json:
        record = {"args": vars(args), "machine": machine(device), "official": official, "ours": ours, "ratio": ratio}
        Path(args.json).write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
