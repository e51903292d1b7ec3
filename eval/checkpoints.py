"""Open any tokenizer checkpoint for evaluation: a pretrained directory, a ``unitok-train`` run or a train-state file.

Accepted ``--ckpt`` values:
    * a pretrained directory (``config.json`` + ``model.safetensors``): a released VTP checkpoint or anything written
      by ``save_pretrained``, loaded by :func:`unitok.load_pretrained`; also a released layout recognised by a marker
      file (``unitok.registry.LAYOUT_MARKERS``: a Semantic-VAE folder with ``metainfo.json`` + ``dac/*.pth``);
    * a ``unitok-train`` run directory: its exported ``model/`` when present, else its latest train checkpoint;
    * a train-state file ``RUN/checkpoints/step_XXXXXXXX.pt`` (or ``latest``): the model is rebuilt from the run's
      ``config.yaml`` and given the exported weights (the EMA when the run kept one), exactly what the run would
      have exported at that step.
The run's ``config.yaml`` also tells how the model sees its data (the task's adapter settings), which a bare
autoencoder checkpoint does not record.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

RUN_CONFIG = "config.yaml"


@dataclass
class LoadedCheckpoint:
    """A model ready for evaluation and where it came from.

    Attributes:
        model: the exported model in eval mode (e.g. ``VTPModel`` or ``TransformerAutoencoder``).
        path: the resolved path given by the user.
        kind: 'pretrained_dir' | 'run_dir' | 'train_state'.
        name: a short label (the run or directory name).
        adapter_params: the training task's adapter settings when known (``modality``, ``patch_size``, ...).
        identity: what makes results of this checkpoint cacheable (weights file, size, mtime, step).
    """

    model: nn.Module
    path: str
    kind: str
    name: str
    adapter_params: dict[str, Any] = field(default_factory=dict)
    identity: dict[str, Any] = field(default_factory=dict)

    @property
    def model_type(self) -> str:
        return getattr(self.model, "model_type", type(self.model).__name__)

    def describe(self) -> dict[str, Any]:
        """JSON-friendly description for result files."""
        return {"path": self.path, "name": self.name, "kind": self.kind, "model_type": self.model_type,
                **({"step": self.identity["step"]} if "step" in self.identity else {})}  # fmt: skip


def _file_identity(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"file": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _is_pretrained_dir(path: Path) -> bool:
    """Whether ``unitok.load_pretrained`` reads ``path``: a config.json, or the marker file of a released layout."""
    from unitok.registry import LAYOUT_MARKERS

    return path.is_dir() and any((path / name).is_file() for name in ("config.json", *LAYOUT_MARKERS))


def _weights_file(path: Path) -> Path:
    """The weights file ``unitok.load_pretrained`` reads in a pretrained directory.

    ``model.safetensors``, or in a released Semantic-VAE folder its EMA weights when present, else its online ones.
    """
    if (path / "metainfo.json").is_file():
        from unitok.modalities.speech.semantic_vae_io import EMA_WEIGHTS, ONLINE_WEIGHTS

        return path / EMA_WEIGHTS if (path / EMA_WEIGHTS).is_file() else path / ONLINE_WEIGHTS
    return path / "model.safetensors"


def _run_adapter_params(run_dir: Path) -> tuple[dict[str, Any], Any]:
    """(task adapter params, RunConfig) of a run directory, or ({}, None) when it has no config.yaml."""
    if not (run_dir / RUN_CONFIG).is_file():
        return {}, None
    from unitok.train import load_run_config

    cfg = load_run_config(run_dir / RUN_CONFIG)
    params = {k: v for k, v in cfg.task.params.items() if k in ("modality", "patch_size", "in_chans", "mean", "std")}
    return params, cfg


def _from_pretrained_dir(path: Path, kind: str, name: str) -> LoadedCheckpoint:
    import unitok

    model = unitok.load_pretrained(path).eval()
    run_dir = path.parent if path.name == "model" else path  # a run's exported model/ sits beside config.yaml
    params, _ = _run_adapter_params(run_dir)
    return LoadedCheckpoint(model, str(path), kind, name, params, _file_identity(_weights_file(path)))


def _from_train_state(file: Path) -> LoadedCheckpoint:
    from unitok.engine.checkpoint import exported_weights, load_checkpoint
    from unitok.models.pretrained import load_state_dict_strict
    from unitok.train import build_task

    run_dir = file.parent.parent
    params, cfg = _run_adapter_params(run_dir)
    if cfg is None:
        raise FileNotFoundError(
            f"{file} is a train-state checkpoint but {run_dir / RUN_CONFIG} is missing: the model cannot be rebuilt "
            "without the run's configuration"
        )
    task = build_task(cfg)
    ckpt = load_checkpoint(file)
    model = task.export_model()
    qualified = next(name for name, module in task.named_modules() if module is model)  # e.g. "student.model"
    load_state_dict_strict(model, exported_weights(ckpt, f"{qualified}.", str(file)), source=str(file))
    step = int(ckpt.get("state", {}).get("step", -1))
    identity = {**_file_identity(file), "step": step}
    return LoadedCheckpoint(model.eval(), str(file), "train_state", f"{run_dir.name}@{step}", params, identity)


def load_checkpoint_for_eval(path: str | os.PathLike) -> LoadedCheckpoint:
    """Resolve ``path`` (see the module docstring) and load the model it holds, in eval mode on the CPU."""
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(
            f"checkpoint {str(p)!r} does not exist: pass a pretrained directory (config.json + model.safetensors, or "
            "a released Semantic-VAE folder), a unitok-train run directory or one of its checkpoints/step_*.pt files"
        )
    if p.is_file() and p.name in ("config.json", "model.safetensors"):
        p = p.parent
    if _is_pretrained_dir(p):
        return _from_pretrained_dir(p, "pretrained_dir", p.name if p.name != "model" else p.parent.name)
    if _is_pretrained_dir(p / "model"):
        return _from_pretrained_dir(p / "model", "run_dir", p.name)
    if p.is_dir() and (p / "checkpoints").is_dir():
        from unitok.engine.checkpoint import latest_checkpoint

        latest = latest_checkpoint(p / "checkpoints")
        if latest is None:
            raise FileNotFoundError(f"run directory {p} has neither an exported model/ nor a checkpoint yet")
        return _from_train_state(latest)
    if p.is_file() and p.name == "latest":
        return _from_train_state(p.parent / p.read_text().strip())
    if p.is_file() and p.suffix == ".pt":
        return _from_train_state(p)
    raise ValueError(
        f"{p} is not a checkpoint: expected a directory with config.json (+ model.safetensors), a run directory "
        "with model/ or checkpoints/, or a checkpoints/step_*.pt file"
    )
