"""The training registry's image data sets drive a real (tiny) VTP run."""

from pathlib import Path

import pytest
from PIL import Image

from unitok.modalities.image.toy import sample_images
from unitok.train import build_run, load_run_config

RECIPE = Path(__file__).resolve().parents[3] / "recipes" / "debug" / "image_tiny.yaml"
TINY = [
    "train.steps=2",
    "train.batch_size=4",
    "train.progress=false",
    "task.params.ssl_batch=2",
    "task.params.rec_batch=2",
    "model.overrides.vision_depth=1",
    "model.overrides.decoder_depth=1",
]


def _folder(root: Path, n: int = 8) -> Path:
    images, captions = sample_images(n, size=64)
    for i, (img, cap) in enumerate(zip(images, captions, strict=True)):
        Image.fromarray((img.permute(1, 2, 0).numpy() * 255).astype("uint8")).save(root / f"{i:03d}.png")
        (root / f"{i:03d}.txt").write_text(cap)
    return root


def _recipe_with_data(tmp_path: Path, data: dict) -> Path:
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(RECIPE)
    cfg.data = data
    path = tmp_path / "recipe.yaml"
    OmegaConf.save(cfg, path)
    return path


def test_image_folder_trains_the_vtp_task(tmp_path):
    (tmp_path / "data").mkdir()
    root = _folder(tmp_path / "data")
    data = {
        "name": "image_folder",
        "params": {"root": str(root), "size": 64, "multicrop": {"local_size": 32, "n_local": 2}},
    }
    trainer, _ = build_run(load_run_config(_recipe_with_data(tmp_path, data), [*TINY, f"run_dir={tmp_path / 'run'}"]))
    report = trainer.fit()
    assert trainer.state.step == 2 and "clip_loss" in report and "dino_loss" in report and "rec_l1_loss" in report


def test_image_folder_names_bad_params(tmp_path):
    recipe = _recipe_with_data(tmp_path, {"name": "image_folder", "params": {"size": 64}})
    with pytest.raises(ValueError, match="data.params.root"):
        build_run(load_run_config(recipe, [*TINY, f"run_dir={tmp_path}"]))
    with pytest.raises(ValueError, match="num_samples"):
        build_run(load_run_config(RECIPE, [*TINY, f"run_dir={tmp_path}", "data.name=image_folder"]))
