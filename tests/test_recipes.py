"""Every recipe parses strictly, and the full VTP recipes build the released architectures."""

from pathlib import Path

import pytest
import torch

import unitok
from unitok.train import load_run_config

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").rglob("*.yaml"))
RELEASED = {"vtp_s_f16d64": 384, "vtp_b_f16d64": 768, "vtp_l_f16d64": 1024}


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_parses(recipe):
    cfg = load_run_config(recipe)
    assert cfg.model.name in unitok.list_models()
    assert cfg.losses.terms, "a recipe must state its loss weights"


@pytest.mark.parametrize("name", list(RELEASED))
def test_full_recipes_use_the_released_shapes(name):
    cfg = load_run_config(Path(__file__).resolve().parents[1] / "recipes" / "image" / f"{name}.yaml")
    assert cfg.model.name == name and not cfg.model.overrides
    with torch.device("meta"):
        model = unitok.create_model(cfg.model.name, **cfg.model.overrides)
    assert model.config.vision_embed_dim == RELEASED[name] and model.config.vision_feature_bottleneck == 64
    assert model.config.image_size == 256 and cfg.data.params["size"] == 256
    assert cfg.losses.groups["rec"] == 0.1
