"""Test and benchmark helpers: tiny configurations and random inputs (no weights, no data downloads)."""

from __future__ import annotations

from typing import Any

import torch

from unitok.adapter import Tokens
from unitok.layers.rope import grid_coords

#: a tiny VTP configuration with the same switches as the released models (the parity checkpoint's sizes)
TINY_VTP: dict[str, Any] = {
    "image_size": 64,
    "vision_embed_dim": 64, "vision_depth": 2, "vision_num_heads": 2, "vision_feature_bottleneck": 8,
    "text_context_length": 16, "text_vocab_size": 1024, "text_embed_dim": 64, "text_num_heads": 2, "text_depth": 2,
    "decoder_embed_dim": 64, "decoder_depth": 2, "decoder_num_heads": 2,
}  # fmt: skip


def random_tokens(
    batch: int, grid: tuple[int, ...], patch_dim: int, lengths: list[int] | None = None, seed: int = 0
) -> Tokens:
    """Random Tokens over a row-major grid; ``lengths`` (1-D grids) pads samples to the longest."""
    g = torch.Generator().manual_seed(seed)
    coords = grid_coords(grid)
    n = coords.shape[0]
    mask = None
    if lengths is not None:
        mask = torch.arange(n)[None] < torch.tensor(lengths)[:, None]
    return Tokens(x=torch.randn(batch, n, patch_dim, generator=g), coords=coords.expand(batch, -1, -1), mask=mask)


def random_text_tokens(batch: int, context_length: int, vocab_size: int, seed: int = 0) -> torch.Tensor:
    """(B, T) CLIP-style ids: SOT = vocab-2, random body, EOT = vocab-1 (the largest id), zero padding."""
    g = torch.Generator().manual_seed(seed)
    out = torch.zeros(batch, context_length, dtype=torch.long)
    for i in range(batch):
        n = int(torch.randint(1, context_length - 1, (1,), generator=g))
        out[i, 0] = vocab_size - 2
        out[i, 1 : n + 1] = torch.randint(1, vocab_size - 2, (n,), generator=g)
        out[i, min(n + 1, context_length - 1)] = vocab_size - 1
    return out


def run_distributed(fn, world_size: int, *args, timeout_s: float = 60.0) -> None:
    """Run ``fn(rank, world_size, init_file, *args)`` in ``world_size`` CPU processes over gloo.

    ``fn`` must be a module-level function; it calls :func:`init_gloo` first. Raises if any process fails.
    """
    import tempfile

    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        init_file = f"{tmp}/rendezvous"
        ctx = mp.start_processes(
            fn, args=(world_size, init_file, *args), nprocs=world_size, join=False, start_method="spawn"
        )
        import time

        deadline = time.monotonic() + timeout_s
        while not ctx.join(timeout=1.0):
            if time.monotonic() > deadline:
                for p in ctx.processes:
                    p.kill()
                raise TimeoutError(f"distributed test did not finish within {timeout_s} s")


def init_gloo(rank: int, world_size: int, init_file: str) -> None:
    """Initialise a CPU gloo process group through a shared file (no ports needed)."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)


def write_tar_shard(path, groups: list[tuple[str, dict[str, bytes]]]) -> list[tuple[str, int]]:
    """A webdataset tar shard: members ``{key}.{ext}`` in the given (img2dataset) order.

    Returns (member name, data offset) of every member, for truncation tests.
    """
    import io
    import tarfile

    with tarfile.open(path, "w") as tar:
        for key, members in groups:
            for ext, payload in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    with tarfile.open(path) as tar:
        return [(m.name, m.offset_data) for m in tar]


#: configuration overrides of a VTP small enough for CPU tests (32-px images, a 2x2 grid of 8-channel latents)
TINY_VTP_OVERRIDES = dict(image_size=32, vision_embed_dim=32, vision_depth=2, vision_num_heads=2,
                          vision_feature_bottleneck=8, text_context_length=16, text_embed_dim=32, text_depth=1,
                          text_num_heads=2, decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2)  # fmt: skip


def tiny_vtp(seed: int = 0, **overrides: Any):
    """A randomly initialised tiny VTP model (CLIP head and decoder included), in eval mode."""
    import unitok

    torch.manual_seed(seed)
    return unitok.create_model("vtp_s_f16d64", **{**TINY_VTP_OVERRIDES, **overrides}).eval()


def seeded_state_dict(
    shapes: dict[str, tuple[int, ...] | list[int]], seed: int = 0, scale: float = 0.1
) -> dict[str, torch.Tensor]:
    """Deterministic float32 weights for checks against an official implementation (same keys on both sides).

    Keys are filled in sorted order from one ``torch.Generator(seed)`` with N(0, scale²); weight-norm magnitudes
    (keys ending in ``original0`` or ``weight_g``) get 1 + that, so every normalised weight keeps a unit norm.
    """
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key in sorted(shapes):
        value = scale * torch.randn(tuple(shapes[key]), generator=gen)
        out[key] = value + 1.0 if key.endswith(("original0", "weight_g")) else value
    return out
