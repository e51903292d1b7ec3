"""Every recipe parses strictly, the full VTP recipes build the released architectures, and every GAN (stage-2)
recipe starts from its stage-1 recipe's model."""

import itertools
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


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_crops_are_made_for_exactly_the_ssl_subset(recipe):
    cfg = load_run_config(recipe)
    crops = (cfg.data.params.get("multicrop") or {}).get("crops_per_batch", 0)
    if crops:  # the VTP task refuses a mismatch at the first step; catch it before a cluster job starts
        assert cfg.task.params["ssl_batch"] == crops < cfg.train.batch_size


@pytest.mark.parametrize("name", list(RELEASED))
def test_full_recipes_use_the_released_shapes(name):
    cfg = load_run_config(Path(__file__).resolve().parents[1] / "recipes" / "image" / f"{name}.yaml")
    assert cfg.model.name == name and not cfg.model.overrides
    with torch.device("meta"):
        model = unitok.create_model(cfg.model.name, **cfg.model.overrides)
    assert model.config.vision_embed_dim == RELEASED[name] and model.config.vision_feature_bottleneck == 64
    assert model.config.image_size == 256 and cfg.data.params["size"] == 256
    assert cfg.losses.groups["rec"] == 0.1


def _shard_and_folder(folder: Path) -> Path:
    """``folder/00000.tar`` (two img2dataset samples) and one captioned image ``folder/00000.jpg``."""
    import io

    from PIL import Image

    from unitok.testing import write_tar_shard

    folder.mkdir()
    groups = []
    for i in range(2):
        buf = io.BytesIO()
        Image.new("RGB", (300, 280), (40 * i, 90, 200)).save(buf, "JPEG")
        groups.append((f"{i:09d}", {"jpg": buf.getvalue(), "txt": f"caption {i}".encode()}))
    write_tar_shard(folder / "00000.tar", groups)
    Image.new("RGB", (300, 280)).save(folder / "00000.jpg")
    (folder / "00000.txt").write_text("caption")
    return folder


@pytest.mark.parametrize("name", list(RELEASED))
def test_full_recipes_read_webdataset_shards_or_an_image_folder(name, tmp_path):
    from unitok.registry import DATASETS

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "image" / f"{name}.yaml"
    folder = _shard_and_folder(tmp_path / "data")
    cfg = load_run_config(recipe, [f"data.params.shards={folder}/{{00000..00000}}.tar"])
    dataset, collate = DATASETS.get(cfg.data.name)(cfg.data.params, split="train")
    batch = collate(list(itertools.islice(dataset.stream(0, 1, seed=0), 2)))
    assert sorted(batch["text"]) == ["caption 0", "caption 1"]
    assert batch["image"].shape == (2, 3, 256, 256) and batch["global_crops"][0].shape == (2, 3, 256, 256)
    assert len(batch["local_crops"]) == 8 and batch["local_crops"][0].shape == (2, 3, 96, 96)
    alt = ["data.name=image_folder", "data.params.shards=null", f"data.params.root={folder}"]
    cfg = load_run_config(recipe, alt)
    dataset, _ = DATASETS.get(cfg.data.name)(cfg.data.params, split="train")
    assert len(dataset) == 1


GAN = [p for p in RECIPES if p.stem.endswith("_gan")]
#: stage-2 task -> (its stage-1 task, its config class)
STAGES = {
    "vtp_gan": ("vtp", "unitok.modalities.image.gan_task:VTPGANTaskConfig"),
    "speech_gan": ("speech", "unitok.modalities.speech.speech_gan_task:SpeechGANTaskConfig"),
}


@pytest.mark.parametrize("recipe", GAN, ids=[p.stem for p in GAN])
def test_gan_recipes_start_from_their_stage1_model(recipe):
    import importlib

    from unitok.config import build_config

    cfg = load_run_config(recipe)
    stage1 = load_run_config(recipe.with_name(recipe.stem.removesuffix("_gan") + ".yaml"))
    stage1_task, config_class = STAGES[cfg.task.name]
    assert stage1.task.name == stage1_task
    assert (cfg.model.name, cfg.model.overrides) == (stage1.model.name, stage1.model.overrides)
    module, attr = config_class.split(":")
    params = build_config(getattr(importlib.import_module(module), attr), cfg.task.params)  # strict: unknown keys fail
    assert params.init_from and params.adversarial.disc_weight > 0
    if cfg.task.name == "vtp_gan":
        assert params.disc_optim.weight_decay == 0 and set(cfg.losses.terms) == {"rec_l1", "rec_lpips"}
    else:  # the decoder keeps stage 1's reconstruction objective: same terms, weights and resolutions
        rec = {k: v for k, v in stage1.losses.terms.items() if k.startswith("rec")}
        assert {k: v.weight for k, v in cfg.losses.terms.items() if k.startswith("rec")} == {
            k: v.weight for k, v in rec.items()
        }
        assert cfg.task.params.get("reconstruction") == stage1.task.params.get("reconstruction")


SPEECH = sorted((Path(__file__).resolve().parents[1] / "recipes" / "speech").glob("unitok_speech_*_p320_d64.yaml"))


@pytest.mark.parametrize("recipe", SPEECH, ids=[p.stem for p in SPEECH])
def test_full_speech_recipes_use_their_named_geometry(recipe):
    cfg = load_run_config(recipe)
    assert cfg.model.name == recipe.stem and cfg.task.name == "speech"
    with torch.device("meta"):
        model = unitok.create_model(cfg.model.name, **cfg.model.overrides)
    assert model.latent_rate == 50.0 and model.latent_dim == 64 and model.is_gaussian
    assert {"clip", "dino", "ibot", "koleo", "rec_mel", "kl", "align"} <= set(cfg.losses.terms)


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipes_name_registered_data_sets(recipe):
    from unitok.registry import DATASETS

    cfg = load_run_config(recipe)
    if cfg.data.name not in DATASETS and cfg.data.name.startswith("speech"):
        pytest.skip(f"speech data set {cfg.data.name!r} is not registered yet (written by the speech-data work)")
    assert cfg.data.name in DATASETS
