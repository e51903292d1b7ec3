"""LPIPS (VGG16, v0.1) through the ``lpips`` package, with its VGG16 trunk read from a local weights file.

The small linear calibration heads ship inside the ``lpips`` wheel; the 528 MB VGG16 trunk does not, and nothing
may be downloaded at run time, so it is loaded from ``vgg_weights``: torchvision's ImageNet VGG16 state dict
(``vgg16-397923af.pth``, i.e. ``torchvision.models.VGG16_Weights.IMAGENET1K_V1``). Every parameter is frozen.
Tests use ``random_trunk=True`` (a random-init stand-in, useless as a loss).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import nn

#: environment variable naming the VGG16 weights file when no path is configured
VGG_WEIGHTS_ENV = "UNITOK_LPIPS_VGG16"
VGG_FILE = "vgg16-397923af.pth"
#: lpips splits torchvision's vgg16.features into 5 slices at these feature indices
_SLICES = [(1, range(0, 4)), (2, range(4, 9)), (3, range(9, 16)), (4, range(16, 23)), (5, range(23, 30))]


def resolve_vgg_weights(path: str | os.PathLike | None) -> Path:
    """The VGG16 weights file to use, or a FileNotFoundError saying where to put it."""
    chosen = path or os.environ.get(VGG_WEIGHTS_ENV)
    if not chosen or not Path(chosen).expanduser().is_file():
        where = f"{chosen!r} does not exist" if chosen else "no path is configured"
        raise FileNotFoundError(
            f"LPIPS needs torchvision's ImageNet VGG16 weights ({VGG_FILE}, 528 MB; "
            f"torchvision.models.VGG16_Weights.IMAGENET1K_V1) and {where}. Copy the file to this machine and pass "
            f"its path (recipe key `perceptual.vgg_weights=/path/{VGG_FILE}`) or set {VGG_WEIGHTS_ENV}; "
            "or set the LPIPS weight to 0 to train without it."
        )
    return Path(chosen).expanduser()


def _trunk_state_dict(torchvision_sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision ``features.{i}.*`` keys -> lpips ``slice{k}.{i}.*`` keys (classifier keys dropped)."""
    out = {}
    for key, value in torchvision_sd.items():
        if not key.startswith("features."):
            continue
        index = int(key.split(".")[1])
        slice_id = next(s for s, r in _SLICES if index in r)
        out[f"slice{slice_id}.{key[len('features.') :]}"] = value
    return out


class LPIPS(nn.Module):
    """Frozen LPIPS-VGG distance: the batch mean (``forward``, a loss) or one value per image (``distances``).

    Args:
        vgg_weights: torchvision VGG16 state-dict file (see module docstring); None reads ``$UNITOK_LPIPS_VGG16``.
        random_trunk: use a random VGG trunk instead (tests only).
    """

    def __init__(self, vgg_weights: str | os.PathLike | None = None, random_trunk: bool = False):
        super().__init__()
        import lpips

        weights = None if random_trunk else resolve_vgg_weights(vgg_weights)
        with warnings.catch_warnings():  # lpips passes torchvision's deprecated `pretrained=` argument
            warnings.simplefilter("ignore", UserWarning)
            self.net = lpips.LPIPS(net="vgg", version="0.1", pretrained=True, pnet_rand=True, verbose=False)
        if weights is not None:
            sd = torch.load(weights, map_location="cpu", weights_only=True)
            trunk = _trunk_state_dict(sd)
            missing, unexpected = self.net.net.load_state_dict(trunk, strict=False)
            if missing or unexpected:
                raise ValueError(f"{weights} is not a torchvision VGG16 state dict (missing {missing[:4]})")
        self.net.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> LPIPS:
        super().train(mode)
        self.net.eval()  # frozen: dropout of the linear heads stays off
        return self

    def distances(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images in [-1, 1] -> (B,) LPIPS of each pair (computed in fp32)."""
        with torch.autocast(prediction.device.type, enabled=False):
            return self.net(prediction.float(), target.float()).flatten()

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images in [-1, 1] -> scalar mean LPIPS (computed in fp32)."""
        return self.distances(prediction, target).mean()
