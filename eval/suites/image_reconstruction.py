"""``image.reconstruction``: PSNR, SSIM, LPIPS and rFID, the protocol of VTP's ``tools/test_reconstruction_hf.py``.

Protocol (spec ``vtp.md`` 4.3): the ``split`` images, ADM centre crop to ``image_size`` (256 for VTP), the model's
normalisation; encode under the run's autocast (bf16 on CUDA, as the official tool), decode in fp32 (autocast off,
latents cast to float); de-normalise both input and reconstruction exactly as the tool does (torchvision
``Normalize(-mean/std, 1/std)``) and clamp to [0, 1]. Per image:

* PSNR on float values x 255 (not quantised); an exact reconstruction gives +inf, as in the tool, and the mean is
  then +inf too (as its ``np.mean``): ``details`` count such images and give the mean over the finite ones;
* SSIM, Gaussian 11 x 11, sigma 1.5 (torchmetrics' convention);
* LPIPS-VGG (the ``lpips`` package, v0.1) on images mapped to [-1, 1] (the tool uses LightningDiT's copy of
  taming-transformers' LPIPS, the same network family; equal weights not verified offline);
* rFID: the tool writes both the centre crops and the reconstructions as PNGs with ``(x * 255).astype(uint8)``
  (truncation) and runs ``pytorch_fid.fid_score.calculate_fid_given_paths`` on the two folders. Here the same
  truncated uint8 images go straight (as ``uint8 / 255``, what pytorch-fid reads back) into the same pytorch-fid
  Inception, whose pool_3 features are cached per image; the Fréchet distance is then taken between the statistics
  of all reconstructions and all centre-cropped originals of the same split (never a precomputed gFID npz), from
  float64 sums (pytorch-fid takes a float32 mean: the two agree to ~1e-5 relative).

Averaging: the official tool averages per-batch means (SSIM, LPIPS) and then per-rank means, so its numbers move
slightly with the batch size and the number of GPUs; here every metric is the mean of per-image values over all
images, independent of both (and of resumption: per-image values are cached in resumable chunks).

Files: ``OUT/image.reconstruction/ref_XXXXXX.png`` and ``rec_XXXXXX.png`` (XXXXXX = position in the evaluated set),
written with the truncation convention as the chunks are computed; ``OUT/image.reconstruction_grid.png`` with the
``grid_count`` worst and best images by PSNR (rows: worst originals, their reconstructions, best originals, their
reconstructions; PSNR written on each reconstruction). The PNGs of a chunk are written before the chunk is cached,
so a resumed run writes only the missing ones; the cache key names the PNG folder, so a new ``--out`` recomputes
(and writes) everything, while PNGs deleted by hand come back only with the cache deleted too.

Shape legend:
    B: images in a batch, N: images evaluated, H/W: pixels (``image_size``), D: Inception pool_3 width (2048)
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from unitok.eval.context import EvalContext, Suite, SuiteOutput
from unitok.eval.extract import extract
from unitok.eval.image_artifacts import save_labelled_grid, to_uint8, write_pngs
from unitok.eval.image_data import adm_transform
from unitok.eval.metrics.fid import FeatureStats, fid_from_features
from unitok.eval.metrics.image import psnr, ssim
from unitok.eval.suites.image_common import cache_key, image_tokenizer, split_dataset
from unitok.modalities.image.tokenizer import ImageTokenizer

NAME = "image.reconstruction"
REFERENCE = "centre-cropped originals of the same split"
#: bump when what is cached per image changes: old caches are then never reused
CACHE_VERSION = 1


@dataclass
class ReconstructionConfig:
    """Settings of ``image.reconstruction``.

    Attributes:
        split: evaluation split under ``--data``.
        image_size: ADM centre-crop side; 0 = the model's ``image_size`` (256 for the released VTP).
        fid: compute rFID (needs the FID Inception weights).
        lpips: compute LPIPS (needs torchvision's VGG16 weights).
        fid_method: 'sqrtm' (pytorch-fid's route, the default) or 'eigh' (exact for singular covariances).
        fid_weights: ``pt_inception-2015-12-05-6726825d.pth``; None: ``$UNITOK_FID_INCEPTION_WEIGHTS`` or the torch
            hub cache.
        lpips_weights: ``vgg16-397923af.pth``; None: ``$UNITOK_LPIPS_VGG16``.
        save_images: write every original and reconstruction as a PNG (as the official tool).
        max_saved_images: write only the first this many of each (0: all).
        grid_count: worst and best images shown in the grid (0: no grid).
        random_init_nets: tests only: random-init Inception and VGG (meaningless numbers; flagged in the result).
    """

    split: str = "val"
    image_size: int = 0
    fid: bool = True
    lpips: bool = True
    fid_method: str = "sqrtm"
    fid_weights: str | None = None
    lpips_weights: str | None = None
    save_images: bool = True
    max_saved_images: int = 0
    grid_count: int = 8
    random_init_nets: bool = False

    def __post_init__(self) -> None:
        if self.fid_method not in ("sqrtm", "eigh"):
            raise ValueError(f"fid_method must be 'sqrtm' or 'eigh', got {self.fid_method!r}")
        if self.max_saved_images < 0 or self.grid_count < 0:
            raise ValueError("max_saved_images and grid_count must be >= 0")


class _Positioned(Dataset):
    """Adds ``position`` (the sample's index in the evaluated set, which may be a subset) to every sample."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, position: int) -> dict[str, Any]:
        return {**self.dataset[position], "position": position}


# ---------------------------------------------------------------------------------------------- measuring nets
@dataclass
class _Nets:
    lpips: torch.nn.Module | None
    inception: torch.nn.Module | None
    info: dict[str, Any]


def _seeded(factory, seed: int = 0):
    """Build a random-init stand-in from a fixed seed: the same nets in every run and on every rank."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory()


def _build_lpips(cfg: ReconstructionConfig) -> tuple[torch.nn.Module | None, dict[str, Any]]:
    from unitok.eval.metrics.inception import sha256_of
    from unitok.losses.perceptual import LPIPS, VGG_FILE, resolve_vgg_weights

    if not cfg.lpips:
        return None, {}
    if cfg.random_init_nets:
        return _seeded(lambda: LPIPS(random_trunk=True)), {"vgg_weights": None, "vgg_sha256": None}
    try:
        path = resolve_vgg_weights(cfg.lpips_weights)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{e} With unitok-eval: lpips_weights=/path/to/{VGG_FILE} (or lpips=false).") from None
    info = {"vgg_weights": str(path), "vgg_sha256": sha256_of(path)}
    return LPIPS(vgg_weights=path), info


def _build_inception(cfg: ReconstructionConfig) -> tuple[torch.nn.Module | None, dict[str, Any]]:
    from unitok.eval.metrics.inception import WEIGHTS_FILE, InceptionFeatures

    if not cfg.fid:
        return None, {}
    if cfg.random_init_nets:
        net = _seeded(lambda: InceptionFeatures(random_init=True))
    else:
        try:
            net = InceptionFeatures(weights_path=cfg.fid_weights)
        except FileNotFoundError as e:
            hint = f" With unitok-eval: fid_weights=/path/to/{WEIGHTS_FILE} (or fid=false)."
            raise FileNotFoundError(f"{e}{hint}") from None
    path = str(net.weights_path) if net.weights_path else None
    return net, {"weights": path, "sha256": net.weights_sha256, "implementation": "pytorch-fid InceptionV3"}


def _build_nets(cfg: ReconstructionConfig, device: torch.device) -> _Nets:
    """LPIPS and Inception (either may be off), on ``device``; missing weights stop here, before any work."""
    lpips, lpips_info = _build_lpips(cfg)
    inception, inception_info = _build_inception(cfg)
    nets = [n.to(device) for n in (lpips, inception) if n is not None]
    for net in nets:
        net.eval().requires_grad_(False)
    return _Nets(lpips, inception, {"inception": inception_info or None, "lpips": lpips_info or None})


# ---------------------------------------------------------------------------------------------- reconstruction
class _Reconstructor:
    """[0, 1] crops -> (originals, reconstructions), both de-normalised and clamped as the official tool does."""

    def __init__(self, tok: ImageTokenizer, ctx: EvalContext):
        self.tok, self.ctx = tok, ctx
        as_col = lambda v: torch.tensor(v, dtype=torch.float32, device=ctx.device).view(1, -1, 1, 1)  # noqa: E731
        self.mean, self.std = as_col(tok.mean), as_col(tok.std)
        # torchvision Normalize(-m/s, 1/s): the tool's transform_rev, bit for bit (not x * s + m)
        self.rev_mean = as_col([-m / s for m, s in zip(tok.mean, tok.std, strict=True)])
        self.rev_std = as_col([1 / s for s in tok.std])

    def _denormalise(self, x: torch.Tensor) -> torch.Tensor:
        return ((x.float() - self.rev_mean) / self.rev_std).clamp(0, 1)

    def __call__(self, images01: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) crops in [0, 1] -> (B, 3, H, W) originals and reconstructions in [0, 1]."""
        x = (images01.to(self.ctx.device, torch.float32, non_blocking=True) - self.mean) / self.std
        with self.ctx.autocast():
            latents = self.tok.encode(x)
        with torch.autocast(self.ctx.device.type, enabled=False):
            recon = self.tok.decode(latents.float())
        return self._denormalise(x), self._denormalise(recon)


def _measure_fn(rec: _Reconstructor, nets: _Nets, png_dir: Path | None, cap: int, pool):
    """The per-batch function of the extraction: per-image metrics, Inception features, PNG files."""

    def measure(batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        orig, recon = rec(batch["image"])
        out = {"psnr": psnr(recon, orig), "ssim": ssim(recon, orig), "index": batch["index"]}
        out["position"] = batch["position"]
        if nets.lpips is not None:
            out["lpips"] = nets.lpips.distances(recon * 2 - 1, orig * 2 - 1)
        ref8, rec8 = to_uint8(orig), to_uint8(recon)
        if nets.inception is not None:  # exactly what pytorch-fid would read back from the PNGs
            features = nets.inception(torch.cat([ref8, rec8]).float() / 255)
            out["ref_features"], out["rec_features"] = features.float().split(len(orig))
        if png_dir is not None:
            keep = [i for i, p in enumerate(batch["position"].tolist()) if not cap or p < cap]
            names = [f"{int(batch['position'][i]):06d}.png" for i in keep]
            paths = [png_dir / f"{kind}_{n}" for kind in ("ref", "rec") for n in names]
            write_pngs(torch.cat([ref8[keep], rec8[keep]]), paths, pool)
        return out

    return measure


# ---------------------------------------------------------------------------------------------- reduction, grid
def _feature_stats(features: torch.Tensor, block: int = 4096) -> FeatureStats:
    """(N, D) features -> statistics, accumulated in fixed blocks (the same sums whatever the batch or ranks)."""
    stats = FeatureStats(features.shape[1])
    for part in features.split(block):
        stats.update(part)
    return stats


def _reduce(out: dict[str, torch.Tensor], cfg: ReconstructionConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """Means of per-image values over all images, and rFID between all originals and all reconstructions."""
    values = out["psnr"].double()
    finite = torch.isfinite(values)
    metrics = {"psnr": values.mean().item(), "ssim": out["ssim"].double().mean().item()}
    if "lpips" in out:
        metrics["lpips"] = out["lpips"].double().mean().item()
    if "ref_features" in out:
        real, fake = _feature_stats(out["ref_features"]), _feature_stats(out["rec_features"])
        metrics["rfid"] = fid_from_features(real, fake, method=cfg.fid_method)
    details = {
        "psnr_identical_images": int((~finite).sum()),
        "psnr_finite_mean": values[finite].mean().item() if finite.any() else None,
    }
    return metrics, details


def _grid(ctx, rec, dataset, folder, out, count: int) -> tuple[str, dict[str, Any]]:
    """The ``count`` worst and best images by PSNR, reconstructed again and saved as a labelled grid."""
    order = torch.argsort(out["psnr"], stable=True)
    k = min(count, len(order))
    picks = {"worst": order[:k].tolist(), "best": order.flip(0)[:k].tolist()}
    images = torch.stack([dataset[p]["image"] for p in picks["worst"] + picks["best"]])
    with torch.inference_mode():
        orig, recon = rec(images)
    orig, recon = orig.cpu(), recon.cpu()
    rows, labels = [], []
    for b, name in enumerate(picks):
        block = slice(b * k, (b + 1) * k)
        rows += [orig[block], recon[block]]
        labels += [None, [f"{out['psnr'][p].item():.2f}" for p in picks[name]]]  # PSNR in dB
    rel = f"{NAME}_grid.png"
    save_labelled_grid(ctx.out_dir / rel, rows, labels)
    return rel, {name: [_describe(folder, out, p) for p in positions] for name, positions in picks.items()}


def _describe(folder, out: dict[str, torch.Tensor], position: int) -> dict[str, Any]:
    """One evaluated image for the result file: position, file (relative to the split) and its metrics."""
    file = Path(folder.folder.samples[int(out["index"][position])][0]).relative_to(folder.root)
    metrics = {m: out[m][position].item() for m in ("psnr", "ssim", "lpips") if m in out}
    return {"position": position, "file": str(file), **metrics}


# ---------------------------------------------------------------------------------------------- the suite
def _protocol(ctx, cfg, size: int, tok: ImageTokenizer, nets: _Nets) -> dict[str, Any]:
    return {
        "image_size": size, "crop": "adm_center_crop", "reference": REFERENCE,
        "normalisation": {"mean": list(tok.mean), "std": list(tok.std)},
        "precision": {"encode": "bf16 autocast" if ctx.bf16 else "fp32", "decode": "fp32"},
        "fid_method": cfg.fid_method if cfg.fid else None, **nets.info,
        "png": "uint8 by truncation, (x * 255).astype(uint8)",
        "averaging": "mean of per-image values over all images (batch- and world-size independent)",
    }  # fmt: skip


def run(ctx: EvalContext, cfg: ReconstructionConfig) -> SuiteOutput:
    tok = image_tokenizer(ctx)
    tok.require("decoder")
    size = cfg.image_size or tok.image_size
    if not size:
        raise ValueError("image_size=0 needs a model that records its image size; pass image_size=...")
    nets = _build_nets(cfg, ctx.device)
    dataset, folder, data = split_dataset(ctx, cfg.split, adm_transform(size))
    data = {**data, "image_size": size, "crop": "adm_center_crop", "reference": REFERENCE}
    png_dir = ctx.out_dir / NAME if cfg.save_images else None
    if png_dir is not None:
        png_dir.mkdir(parents=True, exist_ok=True)
    pngs = {"png_dir": str(png_dir.resolve()) if png_dir else None, "max_saved_images": cfg.max_saved_images}
    nets_key = {"lpips": nets.info["lpips"], "inception": nets.info["inception"], "random": cfg.random_init_nets}
    key = cache_key(ctx, data, suite=NAME, version=CACHE_VERSION, image_size=size, nets=nets_key, pngs=pngs)
    rec = _Reconstructor(tok, ctx)
    with ThreadPoolExecutor(max_workers=8) as pool:  # PNG writing
        fn = _measure_fn(rec, nets, png_dir, cfg.max_saved_images, pool)
        out = extract(ctx, _Positioned(dataset), fn, "reconstruction", key, desc=f"reconstruction {cfg.split}")
    metrics, details = _reduce(out, cfg)
    details["protocol"] = _protocol(ctx, cfg, size, tok, nets)
    artifacts = {"images": NAME} if png_dir is not None else {}
    if cfg.grid_count and ctx.dist.is_main:
        artifacts["grid"], details["grid"] = _grid(ctx, rec, dataset, folder, out, cfg.grid_count)
    if cfg.random_init_nets:
        details["random_init_nets"] = True
        details["warning"] = "RANDOM-INIT Inception/VGG (random_init_nets=true): LPIPS and rFID are meaningless"
    return SuiteOutput(metrics=metrics, data=data, artifacts=artifacts, details=details)


SUITE = Suite(
    name=NAME,
    config=ReconstructionConfig,
    run=run,
    summary="PSNR, SSIM, LPIPS-VGG and rFID vs the centre crops (VTP test_reconstruction_hf protocol)",
)
