"""Stage-2 helpers of any modality: find a stage-1 model's weights, train only some parts of a model.

:func:`stage1_state_dict` reads what ``init_from`` points at: a run directory (its ``model/``, else its latest
checkpoint), a ``save_pretrained`` directory, a ``checkpoints/`` directory or a checkpoint file (EMA weights when
saved). :class:`PartlyTrainable` wraps a model of which only named submodules train (e.g. a decoder fine-tuned
with a GAN while the latent space stays fixed); the rest is frozen and kept in eval mode.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn


def stage1_state_dict(
    path: str | Path, prefix: str = "student.model.", what: str = "model"
) -> tuple[dict[str, torch.Tensor] | None, str]:
    """(state dict of the exported model, source) from a checkpoint; (None, directory) for a pretrained directory.

    Args:
        path: see the module docstring.
        prefix: key prefix of the exported model among a checkpoint's trainable weights.
        what: the model's name in error messages.
    """
    from unitok.engine.checkpoint import exported_weights, latest_checkpoint, load_checkpoint

    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"init_from={str(path)!r} does not exist (expected a stage-1 run directory)")
    if path.is_dir() and (path / "model" / "config.json").is_file():
        return None, str(path / "model")
    if path.is_dir() and (path / "config.json").is_file():
        return None, str(path)
    if path.is_dir():
        ckpt_dir = path / "checkpoints" if (path / "checkpoints").is_dir() else path
        found = latest_checkpoint(ckpt_dir)
        if found is None:
            raise FileNotFoundError(
                f"init_from={str(path)!r} holds neither model/config.json, config.json nor a checkpoint "
                "(checkpoints/step_*.pt): point it at a stage-1 run directory, its model/ or a checkpoint file"
            )
        path = found
    ckpt = load_checkpoint(path)  # names the path when missing or unreadable
    sd = exported_weights(ckpt, prefix, source=f"{path} (not a stage-1 run's {what} checkpoint)")
    return sd, f"{path} (EMA)" if ckpt.get("ema") is not None else str(path)


class PartlyTrainable(nn.Module):
    """``model`` with only the submodules at ``trained`` (dotted paths) trainable; the rest frozen, in eval mode.

    Subclasses define ``forward``.
    """

    def __init__(self, model: nn.Module, trained: Sequence[str]):
        super().__init__()
        self.model = model.requires_grad_(False)
        self.trained = tuple(trained)
        for name in self.trained:
            model.get_submodule(name).requires_grad_(True)

    def train(self, mode: bool = True) -> PartlyTrainable:
        super().train(False)  # frozen parts stay in eval mode
        for name in self.trained:
            self.model.get_submodule(name).train(mode)
        return self


def check_same_architecture(saved: dict, wanted: dict, source: str) -> None:
    """Raise a ValueError naming every configuration field where a stage-1 model differs from the recipe's."""
    diff = [f"{k}: {saved.get(k)!r} there, {wanted[k]!r} in the recipe" for k in wanted if saved.get(k) != wanted[k]]
    if diff:
        raise ValueError(f"{source} is a different architecture from the recipe's model ({'; '.join(diff)})")


def load_stage1(
    model: nn.Module,
    init_from: str,
    *,
    what: str,
    example: str,
    saved_config: Callable[[str], dict],
    wanted_config: dict,
    load_pretrained: Callable[[dict[str, torch.Tensor], str], None] | None = None,
) -> str:
    """Load the stage-1 weights ``init_from`` points at into ``model`` (strict); returns where they came from.

    Args:
        what: the model's name in error messages; example: a run directory for the message of a missing init_from.
        saved_config: pretrained directory -> its configuration, comparable field by field with ``wanted_config``
            (raises when the directory holds another kind of model).
        load_pretrained: ``(state dict, source)`` loader of a pretrained directory's weights (default: the strict
            ``load_state_dict`` that checkpoints use).
    """
    from unitok.models.pretrained import load_state_dict_strict, read_weights

    if not init_from:
        raise ValueError(f"task.params.init_from is required: the stage-1 run directory (e.g. {example})")
    sd, source = stage1_state_dict(init_from, what=what)
    if sd is None:
        check_same_architecture(saved_config(source), wanted_config, source)
        sd, source = read_weights(source), f"{source}/model.safetensors"
        if load_pretrained is not None:
            load_pretrained(sd, source)
            return source
    load_state_dict_strict(model, sd, source)
    return source
