"""``image.latent_stats``: per-channel latent mean / std for diffusion training (LightningDiT ``latents_stats.pt``).

As VTP's ``extract_features_vtp.py`` + LightningDiT's ``ImgLatentDataset``: ADM centre crop, the model's
normalisation, ``get_reconstruction_latents`` in fp32 (no autocast), then the per-channel mean and unbiased std over
(N, h, w) of ``num_samples`` random un-flipped training latents (10,000 upstream). The moments of every image are
cached per chunk (resumable, any number of ranks) and merged exactly. Writes ``OUT/latents_stats.pt`` and, with
``store_in_checkpoint=true``, the same file into the checkpoint directory, where ``unitok.load_pretrained`` picks it
up as ``model.latent_stats`` (``LatentStats.normalize`` at encode, ``denormalize`` at decode).

Shape legend:
    B: images, L: latent channels, h/w: latent grid
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torchvision.transforms import v2

from unitok.eval.context import EvalContext, Suite, SuiteOutput
from unitok.eval.extract import extract
from unitok.eval.image_data import adm_transform
from unitok.eval.suites.image_common import cache_key, fixed_subset, image_tokenizer, split_dataset
from unitok.latent_stats import (
    LATENT_STATS_FILE,
    LatentStats,
    LatentStatsAccumulator,
    checkpoint_target,
    save_to_checkpoint,
)


@dataclass
class LatentStatsConfig:
    """Settings of ``image.latent_stats``.

    Attributes:
        split: split to draw the latents from (LightningDiT: ImageNet train).
        image_size: ADM centre-crop side; 0 = the model's ``image_size`` (256 for VTP).
        num_samples: random images (seed ``seed``) the statistics are computed over (LightningDiT: 10,000).
        seed: seed of that draw.
        multiplier: ``latent_multiplier`` of the DiT config, recorded (the file never stores it).
        bf16: encode under bf16 autocast (upstream extracts in fp32).
        store_in_checkpoint: also write ``latents_stats.pt`` into the checkpoint's pretrained directory.
    """

    split: str = "train"
    image_size: int = 0
    num_samples: int = 10_000
    seed: int = 0
    multiplier: float = 1.0
    bf16: bool = False
    store_in_checkpoint: bool = False


def checkpoint_dir(ctx: EvalContext) -> Path:
    """The pretrained directory of the evaluated checkpoint, where ``store_in_checkpoint`` writes the statistics.

    Raises before any work when the checkpoint cannot take them (a train-state file, a released layout without
    ``config.json`` + ``model.safetensors``).
    """
    if ctx.ckpt.kind == "train_state":
        raise ValueError(
            "store_in_checkpoint=true needs a pretrained directory (or a run with an exported model/), "
            f"not the train-state file {ctx.ckpt.path}"
        )
    path = Path(ctx.ckpt.path)
    return checkpoint_target(path / "model" if (path / "model" / "config.json").is_file() else path)


def run(ctx: EvalContext, cfg: LatentStatsConfig) -> SuiteOutput:
    tok = image_tokenizer(ctx)
    size = cfg.image_size or tok.image_size
    if not size:
        raise ValueError("image_size=0 needs a model that records its image size; pass image_size=...")
    if cfg.store_in_checkpoint:
        target = checkpoint_dir(ctx)  # fail before the long pass
    transform = v2.Compose([adm_transform(size), v2.Normalize(list(tok.mean), list(tok.std))])
    dataset, _, data = split_dataset(ctx, cfg.split, transform)
    dataset = fixed_subset(dataset, cfg.num_samples, seed=cfg.seed)
    data["num_samples"] = len(dataset)

    def moments(batch):
        with ctx.autocast(enabled=cfg.bf16):
            z = tok.encode(batch["image"].to(ctx.device, non_blocking=True))
        flat = z.double().flatten(2)  # (B, L, h·w)
        mean = flat.mean(-1)
        return {"count": torch.full_like(mean, flat.shape[-1]), "mean": mean,
                "m2": (flat - mean[..., None]).square().sum(-1)}  # fmt: skip

    bf16 = cfg.bf16 and ctx.bf16
    key = cache_key(ctx, data, suite="image.latent_stats", image_size=size, seed=cfg.seed, bf16_encode=bf16)
    out = extract(ctx, dataset, moments, "latent_stats", key, desc=f"latents {cfg.split}")
    stats, artifacts = publish_latent_stats(ctx, out, tok.latent_dim, cfg.multiplier,
                                            target if cfg.store_in_checkpoint else None)  # fmt: skip
    metrics = stats_metrics(stats)
    protocol = {**asdict(cfg), "image_size": size, "crop": "adm_center_crop", "latent_channels": tok.latent_dim}
    return SuiteOutput(metrics, data, artifacts, details={"protocol": protocol, "stats": stats.to_dict()})


def publish_latent_stats(
    ctx: EvalContext, moments: dict[str, torch.Tensor], channels: int, multiplier: float, target: Path | None
) -> tuple[LatentStats, dict[str, str]]:
    """Per-channel statistics from per-sample moments (``count``, ``mean``, ``m2``: (N, C)), written by the main rank
    to ``OUT/latents_stats.pt`` and, with a ``target`` pretrained directory, beside its weights.

    Returns (statistics, artifacts of the suite's result).
    """
    acc = LatentStatsAccumulator(channels).add_moments(moments["count"], moments["mean"], moments["m2"])
    stats = acc.compute(multiplier)
    artifacts = {}
    if ctx.dist.is_main:
        stats.save(ctx.out_dir / LATENT_STATS_FILE)
        artifacts["latents_stats"] = LATENT_STATS_FILE
        if target is not None:
            ctx.log(f"stored the latent statistics in {save_to_checkpoint(target, stats)}")
    return stats, artifacts


def stats_metrics(stats) -> dict[str, float]:
    """Summary numbers of per-channel statistics: mean / min / max of the channel means and stds."""
    mean, std = stats.mean.flatten(), stats.std.flatten()
    return {"mean_avg": mean.mean().item(), "mean_min": mean.min().item(), "mean_max": mean.max().item(),
            "std_avg": std.mean().item(), "std_min": std.min().item(), "std_max": std.max().item()}  # fmt: skip


SUITE = Suite(
    name="image.latent_stats",
    config=LatentStatsConfig,
    run=run,
    summary="per-channel latent mean/std (LightningDiT latents_stats.pt), optionally stored in the checkpoint",
)
