"""Pretrained directories (``config.json`` + ``model.safetensors``): strict reading, atomic writing.

The layout is the Hugging Face one the released VTP checkpoints use, so a directory written here loads in
the official code and vice versa.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unitok.engine.checkpoint import atomic_write

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class CheckpointMismatchError(ValueError):
    """A state dict whose keys or shapes do not match the model."""


def _listing(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def resolve_dir(path: str | os.PathLike) -> Path:
    """A pretrained directory (or its config.json / model.safetensors) -> the directory, checked to exist."""
    p = Path(path).expanduser()
    if p.is_file() and p.name in (CONFIG_NAME, WEIGHTS_NAME):
        p = p.parent
    if not p.exists():
        raise FileNotFoundError(
            f"pretrained path {str(p)!r} does not exist (expected a directory holding {CONFIG_NAME} and {WEIGHTS_NAME})"
        )
    if not p.is_dir():
        raise FileNotFoundError(f"pretrained path {str(p)!r} is a file; pass the directory holding {CONFIG_NAME}")
    return p


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """The ``config.json`` of a pretrained directory as a dict."""
    cfg_path = resolve_dir(path) / CONFIG_NAME
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path} is missing: a pretrained directory needs {CONFIG_NAME} and {WEIGHTS_NAME}")
    return read_json_object(cfg_path)


def read_json_object(file: str | os.PathLike) -> dict[str, Any]:
    """A JSON file holding an object, as a dict (an error naming the file when it is not JSON or not an object)."""
    try:
        with open(file) as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{file} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{file} must hold a JSON object, got {type(data).__name__}")
    return data


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of ``model.safetensors`` (dtypes as stored)."""
    from safetensors.torch import load_file

    w_path = resolve_dir(path) / WEIGHTS_NAME
    if not w_path.is_file():
        raise FileNotFoundError(f"{w_path} is missing: a pretrained directory needs {CONFIG_NAME} and {WEIGHTS_NAME}")
    try:
        return load_file(str(w_path))
    except Exception as e:  # safetensors raises its own error types for truncated or corrupt files
        raise ValueError(f"cannot read {w_path} as safetensors ({e})") from None


def write_pretrained(path: str | os.PathLike, config: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> Path:
    """Write ``config.json`` and ``model.safetensors`` atomically (temp file + rename, weights first)."""
    from safetensors.torch import save_file

    out = Path(path).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write(out / WEIGHTS_NAME, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))

    def write_json(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(dict(config), f, indent=2, sort_keys=True)
            f.write("\n")

    atomic_write(out / CONFIG_NAME, write_json)
    return out


def load_state_dict_strict(
    module: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint"
) -> None:
    """``module.load_state_dict`` that first reports missing/unexpected keys and shape mismatches by name."""
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    wrong = [
        f"{k} {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listing(unexpected)}")
    if wrong:
        problems.append(f"shape mismatches: {_listing(wrong)}")
    if problems:
        raise CheckpointMismatchError(f"{source} does not match {type(module).__name__}: " + "; ".join(problems))
    module.load_state_dict(state_dict, strict=True)
