"""Name -> "module:attr" tables, resolved lazily (the core never imports modalities or eval directly).

Public entry points: :func:`create_model`, :func:`list_models`, :func:`load_pretrained`.
"""

from __future__ import annotations

import argparse
import fnmatch
import importlib
import os
from collections.abc import Mapping
from typing import Any


class Registry:
    """A table of names to lazily imported objects ("package.module:attr")."""

    def __init__(self, kind: str, entries: Mapping[str, str] | None = None):
        self.kind = kind
        self._entries: dict[str, str] = dict(entries or {})

    def register(self, name: str, target: str) -> None:
        if ":" not in target:
            raise ValueError(f"{self.kind} target must look like 'package.module:attr', got {target!r}")
        self._entries[name] = target

    def names(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def get(self, name: str) -> Any:
        if name not in self._entries:
            import difflib

            close = difflib.get_close_matches(name, self._entries, n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise KeyError(f"unknown {self.kind} {name!r}.{hint} Known: {', '.join(self.names())}")
        module, attr = self._entries[name].split(":")
        return getattr(importlib.import_module(module), attr)


#: model presets (see unitok/models/presets.py for the table of configurations)
MODELS = Registry("model")
#: config.json "model_type" -> class with from_pretrained(path, **kw)
MODEL_TYPES = Registry(
    "model_type",
    {
        "vtp": "unitok.modalities.image.vtp:VTPModel",
        "unitok_autoencoder": "unitok.models.autoencoder:TransformerAutoencoder",
        "unitok_speech": "unitok.modalities.speech.vtp_speech:SpeechTokenizerModel",
        "semantic_vae": "unitok.modalities.speech.semantic_vae:SemanticVAE",
    },
)
#: pretrained layouts whose config.json has no "model_type", recognised by a file they hold -> model_type
LAYOUT_MARKERS: dict[str, str] = {
    "metainfo.json": "semantic_vae",  # released Semantic-VAE folders (metainfo.json + dac/*.pth)
}
#: modality adapters by data key
ADAPTERS = Registry(
    "adapter",
    {
        "image": "unitok.modalities.image.adapter:ImageAdapter",
        "audio": "unitok.modalities.speech.adapter:SpeechAdapter",
    },
)

#: training tasks: name -> builder(run_config, model, params) -> Task
TASKS = Registry(
    "task",
    {
        "autoencoder": "unitok.engine.builders:build_autoencoder_task",
        "vtp": "unitok.modalities.image.builders:build_vtp_task",
        "vtp_gan": "unitok.modalities.image.builders:build_vtp_gan_task",
        "speech": "unitok.modalities.speech.speech_task:build_speech_task",
        "speech_gan": "unitok.modalities.speech.speech_gan_task:build_speech_gan_task",
        "semantic_vae": "unitok.modalities.speech.semantic_vae_task:build_semantic_vae_task",
    },
)
#: training data sets: name -> builder(params, split) -> (dataset, collate_fn)
DATASETS = Registry(
    "dataset",
    {
        "toy_shapes": "unitok.modalities.image.builders:build_toy_dataset",
        "image_folder": "unitok.modalities.image.builders:build_image_folder_dataset",
        "webdataset": "unitok.modalities.image.builders:build_webdataset_dataset",
        "speech_cuts": "unitok.modalities.speech.builders:build_speech_cuts_dataset",
        "speech_toy": "unitok.modalities.speech.builders:build_speech_toy_dataset",
    },
)

#: evaluation suites: ``<modality>.<protocol>`` -> Suite (``unitok-eval SUITE``); speech suites join as ``speech.*``
SUITES = Registry(
    "eval suite",
    {
        "image.zeroshot": "unitok.eval.suites.image_zeroshot:SUITE",
        "image.linear_probe": "unitok.eval.suites.image_linear_probe:SUITE",
        "image.knn": "unitok.eval.suites.image_knn:SUITE",
        "image.reconstruction": "unitok.eval.suites.image_reconstruction:SUITE",
        "image.latent_stats": "unitok.eval.suites.image_latent_stats:SUITE",
        "speech.reconstruction": "unitok.eval.suites.speech_reconstruction:SUITE",
        "speech.speaker_similarity": "unitok.eval.suites.speech_speaker_similarity:SUITE",
        "speech.intelligibility": "unitok.eval.suites.speech_intelligibility:SUITE",
        "speech.latent_stats": "unitok.eval.suites.speech_latent_stats:SUITE",
    },
)


def _register_presets() -> None:
    from unitok.models.presets import PRESETS

    for name, spec in PRESETS.items():
        MODELS.register(name, spec["factory"])


_register_presets()


def list_models(pattern: str = "*") -> list[str]:
    """Preset names matching a glob pattern, e.g. ``list_models("vtp_*")``."""
    return MODELS.names(pattern)


def create_model(name: str, **overrides: Any):
    """A randomly initialised model from a preset; ``overrides`` replace configuration fields."""

    factory = MODELS.get(name)
    return factory(name, **overrides)


def load_pretrained(path: str | os.PathLike, **kwargs: Any):
    """Load a pretrained directory (``config.json`` + ``model.safetensors``), dispatching on ``model_type``.

    Released VTP checkpoints (``model_type: "vtp"``) and directories written by ``save_pretrained`` both load, and
    so do released layouts without a ``model_type``, recognised by a marker file (``LAYOUT_MARKERS``: a released
    Semantic-VAE folder holds ``metainfo.json`` and ``dac/``). The directory's ``latents_stats.pt`` (see
    :mod:`unitok.latent_stats`), when present, becomes ``model.latent_stats`` (None otherwise): a plain attribute,
    not a buffer, so the state dict is unchanged.
    """
    from unitok.latent_stats import load_from_checkpoint

    model = MODEL_TYPES.get(pretrained_model_type(path)).from_pretrained(path, **kwargs)
    model.latent_stats = load_from_checkpoint(path)
    return model


def pretrained_model_type(path: str | os.PathLike) -> str:
    """The ``model_type`` of a pretrained directory: its config.json's, else the one of a marker file it holds."""
    from unitok.models.pretrained import CONFIG_NAME, read_config, resolve_dir

    root = resolve_dir(path)
    has_config = (root / CONFIG_NAME).is_file()
    model_type = read_config(root).get("model_type") if has_config else None
    if model_type is not None:
        return model_type
    for marker, name in LAYOUT_MARKERS.items():
        if (root / marker).is_file():
            return name
    if not has_config:
        read_config(root)  # raises: names the missing config.json
    markers = ", ".join(f"{m} ({n})" for m, n in LAYOUT_MARKERS.items())
    raise ValueError(
        f"{root}/{CONFIG_NAME} has no 'model_type' (known: {', '.join(MODEL_TYPES.names())}) and the directory "
        f"holds no marker file of a released layout ({markers})"
    )


def list_models_cli(argv: list[str] | None = None) -> None:
    """``unitok-models [PATTERN]``: print the model presets."""
    parser = argparse.ArgumentParser(description="List unitok model presets.", epilog="example: unitok-models 'vtp_*'")
    parser.add_argument("pattern", nargs="?", default="*")
    args = parser.parse_args(argv)
    for name in list_models(args.pattern):
        print(name)
