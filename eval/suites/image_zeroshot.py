"""``image.zeroshot``: zero-shot classification, the protocol of VTP's ``tools/test_zero_shot_hf.py``.

Squash-resize to the model's image size (no crop), the model's normalisation (ImageNet mean/std for VTP), open_clip
class names and the 80 OpenAI templates (or files), the classifier built by open_clip's
``build_zero_shot_classifier`` (per class: the re-normalised mean of the normalised prompt embeddings), logits
``100 · normalise(image) @ W``, top-1 / top-5 over every sample of every rank.

Shape legend:
    N: images, E: CLIP embedding width, C: classes
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from unitok.eval.context import EvalContext, Suite, SuiteOutput
from unitok.eval.extract import extract
from unitok.eval.image_data import class_names, prompt_templates, squash_transform
from unitok.eval.metrics.classification import zero_shot_accuracy, zero_shot_classifier
from unitok.eval.suites.image_common import cache_key, image_tokenizer, split_dataset


@dataclass
class ZeroShotConfig:
    """Settings of ``image.zeroshot``.

    Attributes:
        split: evaluation split under ``--data``.
        image_size: squash-resize side; 0 = the model's ``image_size`` (256 for the released VTP).
        classnames: 'auto' | 'imagenet' | 'folders' | a file (see :func:`unitok.eval.image_data.class_names`).
        templates: 'auto' | 'openai' | 'simple' | a file with one template per line.
    """

    split: str = "val"
    image_size: int = 0
    classnames: str = "auto"
    templates: str = "auto"


def run(ctx: EvalContext, cfg: ZeroShotConfig) -> SuiteOutput:
    tok = image_tokenizer(ctx)
    tok.require("text")
    size = cfg.image_size or tok.image_size
    if not size:
        raise ValueError("image_size=0 needs a model that records its image size; pass image_size=...")
    dataset, folder, data = split_dataset(ctx, cfg.split, squash_transform(size, tok.mean, tok.std))
    names = class_names(folder, cfg.classnames)
    templates = prompt_templates(cfg.templates, folder.root)
    model, tokenizer = tok.text_model()
    with ctx.autocast():
        classifier = zero_shot_classifier(model, tokenizer, names, templates, device=ctx.device).float()

    def embed(batch):
        with ctx.autocast():
            feats = tok.clip_image_features(batch["image"].to(ctx.device, non_blocking=True))
        return {"features": feats.float(), "label": batch["label"]}

    key = cache_key(ctx, data, suite="image.zeroshot", image_size=size)
    out = extract(ctx, dataset, embed, "zeroshot", key, desc=f"zero-shot {cfg.split}")
    acc = zero_shot_accuracy(out["features"], classifier.cpu(), out["label"])
    protocol = {**asdict(cfg), "image_size": size, "num_templates": len(templates), "num_classes": len(names),
                "resize": "squash (bilinear)", "normalisation": {"mean": tok.mean, "std": tok.std}}  # fmt: skip
    return SuiteOutput(metrics={"top1": acc["top1"], "top5": acc["top5"]}, data=data, details={"protocol": protocol})


SUITE = Suite(
    name="image.zeroshot",
    config=ZeroShotConfig,
    run=run,
    summary="zero-shot top-1/top-5 with open_clip prompts (VTP test_zero_shot_hf protocol)",
)
