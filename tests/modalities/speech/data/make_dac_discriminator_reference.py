"""Writes ``dac_discriminator_reference.pt``: the official DAC discriminator and ``GANLoss`` (as used by Semantic-VAE)
run on fixed inputs with seeded weights, the golden reference of ``tests/modalities/speech/test_discriminator.py``.

Usage (the official modules are imported from a checkout, not copied; needs descript-audiotools and einops)::

    python tests/modalities/speech/data/make_dac_discriminator_reference.py /path/to/Semantic-VAE

The discriminator is built with the released kwargs (``keys_full.json: released_config.Discriminator``) and loaded
with :func:`unitok.testing.seeded_state_dict` (seed 0, scale 0.1) over its own state-dict keys.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import types
from pathlib import Path

import torch

from unitok.testing import seeded_state_dict

HERE = Path(__file__).resolve().parent
RELEASED = {"sample_rate": 16000, "rates": [], "periods": [2, 3, 5, 7, 11], "fft_sizes": [2048, 1024, 512],
            "bands": [[0.0, 0.1], [0.1, 0.25], [0.25, 0.5], [0.5, 0.75], [0.75, 1.0]]}  # fmt: skip
LENGTH = 1203  # odd, not a multiple of any period or hop


def _load(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """(2, 1, LENGTH) real (sines with a DC offset and noise) and fake (real plus more noise) clips."""
    gen = torch.Generator().manual_seed(7)
    t = torch.arange(LENGTH) / 16000
    real = torch.stack([0.5 * torch.sin(2 * torch.pi * 220 * t) + 0.1, 0.2 * torch.sin(2 * torch.pi * 1300 * t)])
    real = (real + 0.02 * torch.randn(real.shape, generator=gen))[:, None]
    return real, real + 0.1 * torch.randn(real.shape, generator=gen)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkout", type=Path, help="a ZhikangNiu/Semantic-VAE checkout")
    args = parser.parse_args()
    import audiotools

    disc_mod = _load("dac.model.discriminator", args.checkout / "dac/model/discriminator.py")
    loss_mod = _load("dac.nn.loss", args.checkout / "dac/nn/loss.py")
    torch.manual_seed(0)
    disc = disc_mod.Discriminator(**RELEASED).eval()
    disc.load_state_dict(seeded_state_dict({k: v.shape for k, v in disc.state_dict().items()}))
    real, fake = inputs()
    gan = loss_mod.GANLoss(disc)
    sig = lambda x: audiotools.AudioSignal(x.clone(), 16000)  # noqa: E731
    with torch.no_grad():
        d_real, d_fake = disc(real), disc(fake)
        gen_loss, feat_loss = gan.generator_loss(sig(fake), sig(real))
        disc_loss = gan.discriminator_loss(sig(fake), sig(real))
    commit = subprocess.run(["git", "-C", str(args.checkout), "rev-parse", "HEAD"], capture_output=True, text=True)
    ref = {
        "provenance": {"official_commit": commit.stdout.strip(), "audiotools": audiotools.__version__,
                       "torch": str(torch.__version__), "weights": "unitok.testing.seeded_state_dict(seed=0)"},
        "config": RELEASED,
        "inputs": {"real": real, "fake": fake},
        "logits_real": [maps[-1] for maps in d_real],
        "logits_fake": [maps[-1] for maps in d_fake],
        "fmap_abs_mean_real": [torch.stack([m.abs().mean() for m in maps]) for maps in d_real],
        "disc_loss": disc_loss, "gen_loss": gen_loss, "feat_loss": feat_loss,
    }  # fmt: skip
    torch.save(ref, HERE / "dac_discriminator_reference.pt")
    print({k: float(ref[k]) for k in ("disc_loss", "gen_loss", "feat_loss")})


if __name__ == "__main__":
    main()
