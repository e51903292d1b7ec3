"""Reading Semantic-VAE checkpoints: the released folder layout and ``config.json`` + ``model.safetensors``.

Released layout (HF ``zkniu/Semantic-VAE/<name>/``, what the official ``scripts/train.py`` writes per tag):

- ``metainfo.json``: ``{"DAC": ..., "Decoder": <BigVGAN json>, "Discriminator": ...}``;
- ``dac/ema_state_dict.pth``: ema_pytorch's state dict, ``ema_model.<generator key>`` plus ``initted``/``step``;
- ``dac/weights.pth``: the online generator, a bare state dict or audiotools' ``{"state_dict", "metadata"}``.

Weight-norm names of the legacy ``torch.nn.utils.weight_norm`` (``weight_g`` / ``weight_v``) map one to one
to the parametrization names (``parametrizations.weight.original0`` / ``original1``). Unlike the official
loaders (``strict=False``), loading is strict after this mapping: missing, unexpected and mis-shaped keys
are named.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch

from unitok.models.pretrained import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    CheckpointMismatchError,
    load_state_dict_strict,
    read_config,
    read_json_object,
    read_weights,
)

METAINFO_NAME = "metainfo.json"
EMA_WEIGHTS = "dac/ema_state_dict.pth"
ONLINE_WEIGHTS = "dac/weights.pth"
EMA_PREFIX = "ema_model."
EMA_BOOKKEEPING = ("initted", "step")
PROJECTOR_PREFIX = "projectors."

_LEGACY_WN = {".weight_g": ".parametrizations.weight.original0", ".weight_v": ".parametrizations.weight.original1"}


def map_legacy_weight_norm(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename ``<layer>.weight_g`` / ``weight_v`` to ``<layer>.parametrizations.weight.original0`` / ``original1``."""
    out = {}
    for key, value in state_dict.items():
        for old, new in _LEGACY_WN.items():
            if key.endswith(old):
                key = key[: -len(old)] + new
                break
        out[key] = value
    return out


def strip_ema(state_dict: dict[str, Any], source: str) -> dict[str, torch.Tensor]:
    """ema_pytorch's state dict -> the generator's: drop ``initted``/``step``, strip ``ema_model.``."""
    stray = [k for k in state_dict if not k.startswith(EMA_PREFIX) and k not in EMA_BOOKKEEPING]
    if stray:
        raise CheckpointMismatchError(
            f"{source}: expected ema_pytorch keys '{EMA_PREFIX}*' (plus initted/step), found {stray[:8]}"
        )
    return {k[len(EMA_PREFIX) :]: v for k, v in state_dict.items() if k.startswith(EMA_PREFIX)}


def _torch_load(file: Path, trust_pickle: bool) -> Any:
    try:
        return torch.load(file, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as e:
        first = str(e).splitlines()[0]
        raise ValueError(
            f"{file} holds Python objects beyond tensors ({first}); if you trust the file, pass trust_pickle=True"
        ) from None


def _unwrap(obj: Any, source: str) -> dict[str, torch.Tensor]:
    """A bare state dict, or audiotools' ``{"state_dict": ..., "metadata": ...}`` container."""
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise ValueError(f"{source} is not a state dict (got {type(obj).__name__})")
    return obj


def _released(root: Path, use_ema: bool | None, trust_pickle: bool):
    ema, online = root / EMA_WEIGHTS, root / ONLINE_WEIGHTS
    if use_ema is None:
        use_ema = ema.is_file() or not online.is_file()
    file = ema if use_ema else online
    if not file.is_file():
        other = "use_ema=False to read dac/weights.pth" if use_ema else "use_ema=True to read dac/ema_state_dict.pth"
        raise FileNotFoundError(f"{file} is missing (pass {other} if that file exists)")
    state = _torch_load(file, trust_pickle)
    state = strip_ema(_unwrap(state, str(file)), str(file)) if use_ema else _unwrap(state, str(file))
    return read_json_object(root / METAINFO_NAME), state, str(file)


def read_checkpoint(
    path: str | os.PathLike, use_ema: bool | None = None, trust_pickle: bool = False
) -> tuple[dict[str, Any], dict[str, torch.Tensor], str]:
    """Read a checkpoint folder.

    Returns:
        (config dict in the metainfo layout, generator state dict with official keys, source file name).
    """
    root = Path(path).expanduser()
    if not root.exists():
        raise FileNotFoundError(
            f"{root} does not exist (expected a released Semantic-VAE folder with {METAINFO_NAME} and dac/, "
            f"or a directory with {CONFIG_NAME} + {WEIGHTS_NAME})"
        )
    if root.is_dir() and (root / METAINFO_NAME).is_file():
        config, state, source = _released(root, use_ema, trust_pickle)
    elif root.is_dir() and not (root / CONFIG_NAME).is_file():
        raise FileNotFoundError(
            f"{root} holds neither {METAINFO_NAME} (released Semantic-VAE folder) nor {CONFIG_NAME} + {WEIGHTS_NAME}"
        )
    else:
        config, state, source = read_config(root), read_weights(root), str(Path(root) / WEIGHTS_NAME)
    return config, map_legacy_weight_norm(state), source


def load_semantic_vae(
    cls: type,
    path: str | os.PathLike,
    use_ema: bool | None,
    with_projector: bool | None,
    trust_pickle: bool,
    overrides: dict[str, Any],
):
    """Build ``cls`` from a checkpoint folder and load its weights strictly (see ``SemanticVAE.from_pretrained``)."""
    from unitok.modalities.speech.semantic_vae_config import SemanticVAEConfig

    config, state, source = read_checkpoint(path, use_ema, trust_pickle)
    has_projector = any(k.startswith(PROJECTOR_PREFIX) for k in state)
    if with_projector is None:
        with_projector = has_projector
    if not with_projector:
        state = {k: v for k, v in state.items() if not k.startswith(PROJECTOR_PREFIX)}
    model = cls(SemanticVAEConfig.from_dict(config, **overrides), with_projector=with_projector)
    try:
        load_state_dict_strict(model, state, source)
    except CheckpointMismatchError as e:
        if with_projector and not has_projector:
            raise CheckpointMismatchError(
                f"{e} (no SSL projector in the checkpoint: pass with_projector=False)"
            ) from None
        raise
    return model.eval()
