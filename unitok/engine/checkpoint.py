"""Atomic train-state checkpoints and RNG capture.

A checkpoint directory holds ``step_00001000.pt`` files and a ``latest`` pointer. Every file is written to a
temporary name in the same directory, flushed to disk and renamed, and ``latest`` is replaced the same way, so a
process killed at any moment leaves either the previous checkpoint or the new one, never a torn file.
"""

from __future__ import annotations

import os
import random
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

_STEP_FILE = re.compile(r"^step_(\d{8})\.pt$")
LATEST = "latest"


def _fsync_replace(tmp: str, dst: Path) -> None:
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, dst)
    dir_fd = os.open(dst.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write(path: str | os.PathLike, write: Callable[[str], Any], fsync: bool = False) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it to ``path``.

    A failed or interrupted write removes the temporary file and leaves ``path`` as it was.

    Args:
        path: the destination (its folder is created).
        write: writes the content to the temporary path it is given.
        fsync: flush the file and its folder to disk before and after the rename.

    Returns:
        ``path``.
    """
    dst = Path(path)
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        if fsync:
            _fsync_replace(tmp, dst)
        else:
            os.replace(tmp, dst)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return dst


def atomic_write_text(path: str | os.PathLike, text: str, fsync: bool = False) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (:func:`atomic_write`)."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), fsync=fsync)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` through a temporary file + rename in the destination directory."""
    return atomic_write(path, lambda tmp: torch.save(obj, tmp), fsync=True)


def save_checkpoint(ckpt_dir: str | os.PathLike, step: int, state: dict[str, Any], keep_last: int = 2) -> Path:
    """Write ``step_{step:08d}.pt`` and point ``latest`` at it; keep the newest ``keep_last`` step files."""
    d = Path(ckpt_dir)
    path = atomic_torch_save(state, d / f"step_{step:08d}.pt")
    atomic_write_text(d / LATEST, path.name + "\n", fsync=True)
    if keep_last > 0:
        for old in list_checkpoints(d)[:-keep_last]:
            old.unlink(missing_ok=True)
    return path


def exported_weights(ckpt: dict[str, Any], prefix: str, source: str = "the checkpoint") -> dict[str, torch.Tensor]:
    """The exported model's weights in a train-state checkpoint: the EMA when the run kept one, else the trainable
    weights under ``prefix`` (e.g. ``"student.model."``), the prefix stripped.

    Raises:
        ValueError: naming ``source`` and a few of its keys, when no trainable weight starts with ``prefix``.
    """
    if ckpt.get("ema") is not None:
        return ckpt["ema"]
    weights = {k[len(prefix) :]: v for k, v in ckpt["trainable"].items() if k.startswith(prefix)}
    if not weights:
        raise ValueError(f"{source} holds no weights under {prefix!r} (keys: {list(ckpt['trainable'])[:4]})")
    return weights


def list_checkpoints(ckpt_dir: str | os.PathLike) -> list[Path]:
    """Step files, oldest first."""
    d = Path(ckpt_dir)
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if _STEP_FILE.match(p.name))


def latest_checkpoint(ckpt_dir: str | os.PathLike) -> Path | None:
    """The file ``latest`` names, else the newest step file, else None."""
    d = Path(ckpt_dir)
    pointer = d / LATEST
    if pointer.is_file():
        candidate = d / pointer.read_text().strip()
        if candidate.is_file():
            return candidate
    files = list_checkpoints(d)
    return files[-1] if files else None


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a train-state file on the CPU, with a clear error for a missing or unreadable one."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint {p} does not exist")
    try:
        return torch.load(p, map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises several error types for truncated files
        raise ValueError(f"checkpoint {p} cannot be read ({e}); delete it to resume from the previous one") from None


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU and CUDA generator states."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
