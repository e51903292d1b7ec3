"""FID Inception-v3 features (pool_3, 2048-d) through pytorch-fid, with the weights read from a local file.

The official VTP rFID runs ``pytorch_fid.fid_score.calculate_fid_given_paths``: pytorch-fid's ``InceptionV3``
with the TF-ported 2015-12-05 weights, bilinear resize to 299, inputs in [0, 1].

Shape legend:
    N: images, H/W: pixels (any size; resized to 299 x 299)
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from unittest import mock

import torch

WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{WEIGHTS_FILE}"
WEIGHTS_ENV = "UNITOK_FID_INCEPTION_WEIGHTS"


def resolve_weights(path: str | os.PathLike | None = None) -> Path:
    """The local FID Inception weights: ``path``, else ``$UNITOK_FID_INCEPTION_WEIGHTS``, else the torch hub cache.

    Raises:
        FileNotFoundError: naming the expected file, where to download it and how to point at it.
    """
    candidates = [Path(path)] if path else []
    if not path and os.environ.get(WEIGHTS_ENV):
        candidates.append(Path(os.environ[WEIGHTS_ENV]))
    if not candidates:
        candidates.append(Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILE)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"FID Inception weights not found (looked at {', '.join(map(str, candidates))}). Download {WEIGHTS_FILE} "
        f"from {WEIGHTS_URL} and pass its path as `weights_path=` or set {WEIGHTS_ENV}=/path/to/{WEIGHTS_FILE}."
    )


def sha256_of(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file (recorded with every FID so results name the exact weights)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _random_init_state_dict(*_args, **_kwargs) -> dict[str, torch.Tensor]:
    """A random-init state dict of the FID Inception: torchvision's Inception-v3 has the same parameters.

    Convolutions get He (fan-in, ReLU) initialisation so the activations keep their scale through the ~90 layers:
    torch's default initialisation shrinks the pool_3 features to ~1e-8, where every FID is rounding noise.
    """
    from torchvision.models import inception_v3

    net = inception_v3(weights=None, aux_logits=False, num_classes=1008, init_weights=False)
    for module in net.modules():
        if isinstance(module, torch.nn.Conv2d | torch.nn.Linear):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    return net.state_dict()


class InceptionFeatures(torch.nn.Module):
    """(N, 3, H, W) images in [0, 1] -> (N, 2048) pool_3 features of pytorch-fid's FID Inception.

    Args:
        weights_path: local ``pt_inception-2015-12-05-6726825d.pth`` (see ``resolve_weights``).
        random_init: build the architecture with random weights (tests only; the features are meaningless).
    """

    def __init__(self, weights_path: str | os.PathLike | None = None, random_init: bool = False):
        super().__init__()
        from pytorch_fid import inception as pfi

        if random_init:
            self.weights_path, self.weights_sha256, loader = None, None, _random_init_state_dict
        else:
            self.weights_path = resolve_weights(weights_path)
            self.weights_sha256 = sha256_of(self.weights_path)
            loader = lambda *_a, **_k: torch.load(self.weights_path, map_location="cpu", weights_only=True)
        # pytorch-fid always fetches its weights from a URL: hand it the local file instead.
        with mock.patch.object(pfi, "load_state_dict_from_url", loader):
            self.net = pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[2048]])
        self.eval()

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected (N, 3, H, W) images in [0, 1], got {tuple(images.shape)}")
        return self.net(images.float())[0].flatten(1)
