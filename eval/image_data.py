"""Image evaluation data: ImageFolder splits, the official preprocessing of each protocol, class names, templates.

``--data ROOT`` is an ImageFolder tree (``ROOT/<class>/<image>``) or a folder holding splits (``ROOT/train``,
``ROOT/val``). Class names for zero-shot come from open_clip's ImageNet list (1000 WordNet-id folders), a
``classnames.txt`` next to the splits, or the folder names; templates from open_clip (the 80 OpenAI ImageNet
prompts) or a ``templates.txt``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

from unitok.modalities.image.adapter import IMAGENET_MEAN, IMAGENET_STD

BICUBIC = v2.InterpolationMode.BICUBIC
BILINEAR = v2.InterpolationMode.BILINEAR
_WNID = re.compile(r"^n\d{8}$")


def _to_tensor(mean: Sequence[float], std: Sequence[float]) -> list[v2.Transform]:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]


def squash_transform(size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> v2.Compose:
    """Zero-shot (VTP ``test_zero_shot_hf``): ``Resize((S, S))`` bilinear, no crop, then normalise."""
    return v2.Compose([v2.Resize((size, size), interpolation=BILINEAR, antialias=True), *_to_tensor(mean, std)])


def probe_eval_transform(resize: int, crop: int, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> v2.Compose:
    """Linear probe, evaluation (DINOv2): ``Resize(resize)`` bicubic on the short side, ``CenterCrop(crop)``."""
    return v2.Compose([v2.Resize(resize, interpolation=BICUBIC, antialias=True), v2.CenterCrop(crop),
                       *_to_tensor(mean, std)])  # fmt: skip


def probe_train_transform(crop: int, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> v2.Compose:
    """Linear probe, training (DINOv2): ``RandomResizedCrop(crop)`` bicubic + horizontal flip."""
    return v2.Compose([v2.RandomResizedCrop(crop, interpolation=BICUBIC, antialias=True), v2.RandomHorizontalFlip(),
                       *_to_tensor(mean, std)])  # fmt: skip


def adm_transform(size: int) -> Callable:
    """Reconstruction (ADM ``center_crop_arr``): the crop as a (3, size, size) float tensor in [0, 1]."""
    from unitok.modalities.image.augment import adm_center_crop

    to01 = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])
    return lambda pil: to01(adm_center_crop(pil, size))


class IndexedImages(Dataset):
    """An ImageFolder whose samples are ``{"image", "label", "index"}``; ``view_seed`` seeds random transforms.

    With ``view_seed`` set, sample ``i`` draws its random crop from a generator seeded by (view_seed, i), so every
    augmented view is reproducible whatever the workers, ranks or resumptions.
    """

    def __init__(self, root: str | Path, transform: Callable, view_seed: int | None = None):
        from torchvision.datasets import ImageFolder

        self.folder = ImageFolder(str(root))
        self.root = Path(root)
        self.transform = transform
        self.view_seed = view_seed

    @property
    def classes(self) -> list[str]:
        return self.folder.classes

    @property
    def targets(self) -> list[int]:
        return self.folder.targets

    def __len__(self) -> int:
        return len(self.folder)

    def file_list_digest(self) -> str:
        """SHA-1 of the (relative path, label) list: part of every cache key."""
        import hashlib

        h = hashlib.sha1()
        for path, label in self.folder.samples:
            h.update(f"{Path(path).relative_to(self.root)}\t{label}\n".encode())
        return h.hexdigest()

    def __getitem__(self, index: int) -> dict[str, Any]:
        path, label = self.folder.samples[index]
        try:
            image = self.folder.loader(path)
        except Exception as e:  # an evaluation never skips an image silently: the metric would change
            raise ValueError(f"cannot read image {path}: {e}") from e
        if self.view_seed is not None:
            state = torch.random.get_rng_state()
            torch.manual_seed(self.view_seed * 1_000_003 + index)
            try:
                image = self.transform(image)
            finally:
                torch.random.set_rng_state(state)
        else:
            image = self.transform(image)
        return {"image": image, "label": label, "index": index}


def resolve_split(data: str | Path | None, split: str) -> Path:
    """``data/split`` when it exists, else ``data`` itself when it is a class-folder tree; clear errors otherwise."""
    if data is None:
        raise ValueError("this suite needs --data: an ImageFolder tree or a folder with train/ and val/ splits")
    root = Path(data).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"--data {str(root)!r} is not a directory")
    if (root / split).is_dir():
        return root / split
    subdirs = sorted(p.name for p in root.iterdir() if p.is_dir())
    if subdirs and not ({"train", "val"} & set(subdirs)):
        return root  # a single class-folder tree
    raise FileNotFoundError(f"--data {root} has no {split!r} split (sub-folders: {', '.join(subdirs) or 'none'})")


def _split_root(split_dir: Path) -> Path:
    return split_dir.parent if split_dir.name in ("train", "val", "test") else split_dir


def class_names(dataset: IndexedImages, spec: str = "auto") -> list[str]:
    """Zero-shot class names in label order.

    ``spec``: 'auto' (a ``classnames.txt`` beside the splits; else open_clip's IMAGENET_CLASSNAMES for 1000 WordNet
    folders; else the folder names with '_' as spaces), 'imagenet', 'folders', or a path to a text file (one name per
    line, folder order) or a JSON file (a list, or ``{folder: name}``).
    """
    folders = dataset.classes
    if spec == "auto":
        local = _split_root(dataset.root) / "classnames.txt"
        if local.is_file():
            spec = str(local)
        elif len(folders) == 1000 and all(_WNID.match(f) for f in folders):
            spec = "imagenet"
        else:
            spec = "folders"
    if spec == "imagenet":
        from open_clip import IMAGENET_CLASSNAMES

        if len(folders) != len(IMAGENET_CLASSNAMES):
            raise ValueError(f"classnames=imagenet needs the 1000 ImageNet class folders, found {len(folders)}")
        return list(IMAGENET_CLASSNAMES)
    if spec == "folders":
        return [f.replace("_", " ") for f in folders]
    path = Path(spec).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"classnames file {path} does not exist (or use auto, imagenet, folders)")
    if path.suffix == ".json":
        loaded = json.loads(path.read_text())
        names = [loaded[f] for f in folders] if isinstance(loaded, dict) else list(loaded)
    else:
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if len(names) != len(folders):
        raise ValueError(f"{path} lists {len(names)} class names but the data has {len(folders)} class folders")
    return names


def prompt_templates(spec: str = "auto", data_root: Path | None = None) -> list[str | Callable]:
    """Prompt templates: 'auto' (``templates.txt`` beside the splits, else 'openai'), 'openai' (open_clip's 80
    OpenAI ImageNet templates), 'simple' (its 7), or a text file with one template per line containing ``{}``."""
    if spec == "auto":
        local = _split_root(data_root) / "templates.txt" if data_root is not None else None
        spec = str(local) if local is not None and local.is_file() else "openai"
    if spec in ("openai", "simple"):
        import open_clip

        return list(open_clip.OPENAI_IMAGENET_TEMPLATES if spec == "openai" else open_clip.SIMPLE_IMAGENET_TEMPLATES)
    path = Path(spec).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"templates file {path} does not exist (or use auto, openai, simple)")
    templates = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    bad = [t for t in templates if "{}" not in t]
    if bad or not templates:
        raise ValueError(f"{path}: every template needs a '{{}}' for the class name (bad: {bad[:3]})")
    return templates
