"""``image.linear_probe``: the DINOv2 linear probe as VTP runs it (``tools/test_linear_probing_hf.py``), on frozen
features cached to disk.

Protocol (spec ``vtp.md`` 4.2): frozen model under autocast (bf16 on CUDA); per image the final-normed class tokens
of the last 4 blocks and the mean patch token of the last block. For n in {1, 4} the classifier input is the class
tokens of the last n blocks concatenated with that avgpool ((n + 1)·D, avgpool always on); 13 learning rates per
n give 26 ``nn.Linear`` heads (weight N(0, 0.01), bias 0) trained jointly on the sum of their cross-entropies with
SGD (momentum 0.9, no weight decay), each learning rate scaled by global batch / 256 (default batch 1024 = DINOv2's
128 per GPU x 8 GPUs), ``CosineAnnealingLR`` to 0 over epochs x epoch_length iterations (10 x 1250 officially).
Every head is evaluated on the eval split after every epoch (DINOv2's eval period is one epoch), and the reported
``top1`` is the maximum over all heads and all evaluations: the selection is made on the evaluation split itself
(ImageNet val), exactly as DINOv2 and VTP report it, so it is slightly optimistic. ``top1_last_epoch`` (best head
after the last epoch) and the full per-head, per-epoch table in the details are reported beside it.

Evaluation images: ``Resize(256)`` bicubic + ``CenterCrop(224)``. The probe runs at 224 (14 x 14 patches) although
VTP trained at 256, as the official script does; ``crop`` must be a multiple of the patch size.

Deviation (training augmentation): the official probe augments every training image on the fly
(``RandomResizedCrop(224)`` bicubic + flip) at every iteration, which no feature cache can reproduce. Here the
training features are cached too, chosen by ``train_views``:

* ``train_views=0`` (default): training features from the evaluation transform (centre crop, no augmentation), the
  common cached linear probe; the fastest, usually a little below the official number;
* ``train_views=k >= 1``: k augmented views of the training set (``RandomResizedCrop(crop)`` + flip, view v drawn
  with seed v, each cached separately) are extracted once, and epoch e trains on view e % k. ``train_views=10`` with
  ``epochs=10`` gives every epoch a fresh augmented view, like the official run (whose ~1 epoch per evaluation
  period also sees each image about once, in a fresh augmentation).

Features are cached in ``cache_dtype`` (float16 by default: ImageNet-1k train at D=1024 with 4 blocks is
1.28M x 5 x 1024 values, 13 GB in float16 and twice that in float32) and cast to float32 for the heads. Training
is data-parallel: each rank loads only the cache chunks it extracted (about 1/world_size of the features, of both
splits) onto the run's device, takes its samples of every global batch (the same seeded batches on every rank),
and the head gradients are summed over the ranks before every step; evaluation sums the correct counts. Every
step is the step of one process on the whole batch, so the result does not depend on the number of ranks (up to
float summation order). ``details.samples_per_rank`` records how many samples each rank held.

Shape legend:
    N: samples, n: stored blocks, D: encoder width, C: classes
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from unitok.eval.context import EvalContext, Suite, SuiteOutput
from unitok.eval.extract import per_rank, rank_shard
from unitok.eval.metrics.linear_probe import DEFAULT_LRS, ProbeResult, ProbeTraining, train_linear_probes
from unitok.eval.suites.image_features import BlockFeatures, check_cache_dtype, split_features


@dataclass
class LinearProbeConfig:
    """Settings of ``image.linear_probe``.

    Attributes:
        train_split: split the heads are trained on.
        eval_split: split every head is evaluated on after every epoch (and the best one selected on).
        resize: evaluation transform's short-side resize (bicubic).
        crop: centre crop (evaluation) and RandomResizedCrop size (training views); a multiple of the patch size.
        n_last_blocks_list: block settings; n uses the class tokens of the last n blocks (+ avgpool). The cache
            stores max(n_last_blocks_list) blocks (4 by default, shared with ``image.knn``).
        learning_rates: base learning rates (one head per rate and block setting), scaled by batch_size / 256.
        batch_size: GLOBAL batch of the heads (DINOv2: 128 per GPU x 8 GPUs = 1024).
        epochs: training epochs, one evaluation after each.
        epoch_length: iterations per epoch; 0 = ceil(N_train / batch_size) (1252 for ImageNet at 1024, official
            1250).
        train_views: 0 = train on centre-crop features; k >= 1 = k cached augmented views, epoch e on view e % k.
        cache_dtype: 'float16' or 'float32' storage of the cached features.
        seed: head initialisation and batch order.
    """

    train_split: str = "train"
    eval_split: str = "val"
    resize: int = 256
    crop: int = 224
    n_last_blocks_list: list[int] = field(default_factory=lambda: [1, 4])
    learning_rates: list[float] = field(default_factory=lambda: list(DEFAULT_LRS))
    batch_size: int = 1024
    epochs: int = 10
    epoch_length: int = 0
    train_views: int = 0
    cache_dtype: str = "float16"
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.n_last_blocks_list or min(self.n_last_blocks_list) < 1:
            raise ValueError(f"n_last_blocks_list needs block counts >= 1, got {self.n_last_blocks_list}")
        if len(set(self.n_last_blocks_list)) != len(self.n_last_blocks_list):
            raise ValueError(f"n_last_blocks_list has duplicates: {self.n_last_blocks_list}")
        if not self.learning_rates or min(self.learning_rates) <= 0:
            raise ValueError(f"learning_rates must be positive, got {self.learning_rates}")
        if len({f"{lr:g}" for lr in self.learning_rates}) != len(self.learning_rates):
            raise ValueError(f"learning_rates has duplicates: {self.learning_rates}")
        if self.batch_size < 1 or self.epochs < 1 or self.epoch_length < 0 or self.train_views < 0:
            raise ValueError("batch_size and epochs must be >= 1, epoch_length and train_views >= 0")
        check_cache_dtype(self.cache_dtype)


def _training_features(
    ctx: EvalContext, cfg: LinearProbeConfig, common: dict[str, Any]
) -> tuple[Callable[[int], BlockFeatures], dict[str, Any]]:
    """(epoch -> this rank's training features on ctx.device, data description); every view is extracted first."""
    views = [None] if cfg.train_views == 0 else list(range(cfg.train_views))
    loaded: dict[int | None, tuple[BlockFeatures, dict[str, Any]]] = {}

    def view_features(v: int | None) -> BlockFeatures:
        if v not in loaded:
            loaded.clear()  # one view in memory at a time
            feats, data = split_features(ctx, cfg.train_split, view=v, shard=ctx.dist.enabled, **common)
            feats.n_blocks_list = tuple(cfg.n_last_blocks_list)
            loaded[v] = (feats.to(ctx.device), data)
        return loaded[v][0]

    for v in reversed(views):  # extract all views now; view 0 stays loaded for the first epoch
        view_features(v)
    data = loaded[views[0]][1]
    return (lambda epoch: view_features(views[epoch % len(views)])), data


def _summary(result: ProbeResult) -> dict[str, float]:
    top1, head, epoch = result.best()
    group, lr = result.heads[head]
    return {"top1": top1, "best_lr": lr, "best_n_blocks": int(group[1:]), "best_epoch": epoch + 1,
            "top1_last_epoch": result.best(-1)[0]}  # fmt: skip


def run(ctx: EvalContext, cfg: LinearProbeConfig) -> SuiteOutput:
    common = {"resize": cfg.resize, "crop": cfg.crop, "blocks": max(cfg.n_last_blocks_list),
              "cache_dtype": cfg.cache_dtype}  # fmt: skip
    val, val_data = split_features(ctx, cfg.eval_split, shard=ctx.dist.enabled, **common)
    val.n_blocks_list = tuple(cfg.n_last_blocks_list)
    train, train_data = _training_features(ctx, cfg, common)
    if train_data["num_classes"] != val_data["num_classes"]:
        raise ValueError(f"{cfg.train_split} has {train_data['num_classes']} classes but {cfg.eval_split} has "
                         f"{val_data['num_classes']}: both splits need the same class folders")  # fmt: skip
    training = ProbeTraining(learning_rates=list(cfg.learning_rates), batch_size=cfg.batch_size, epochs=cfg.epochs,
                             epoch_length=cfg.epoch_length, seed=cfg.seed)  # fmt: skip
    dims = {f"n{k}": (k + 1) * val.dim for k in cfg.n_last_blocks_list}
    ctx.log(f"linear probe: {len(dims) * len(cfg.learning_rates)} heads, {train_data['num_samples']} train / "
            f"{val_data['num_samples']} {cfg.eval_split} samples, {val_data['num_classes']} classes")  # fmt: skip
    n_train = train_data["num_samples"]
    shard = rank_shard(ctx, n_train)
    held = {"train": per_rank(ctx, len(train(0).labels)), "eval": per_rank(ctx, len(val.labels))}
    result = train_linear_probes(train, val.to(ctx.device), dims, val_data["num_classes"], training, shard=shard,
                                 progress=ctx.options.progress and ctx.dist.is_main, log=ctx.log)  # fmt: skip
    protocol = {
        **asdict(cfg), "epoch_length": result.epoch_length, "iterations": result.epoch_length * cfg.epochs,
        "batch_size_used": result.batch_size, "feature_blocks": common["blocks"], "input_dims": dims,
        "scaled_learning_rates": [lr * result.batch_size / 256 for lr in cfg.learning_rates],
        "train_transform": "eval (centre crop)" if cfg.train_views == 0 else
        f"RandomResizedCrop({cfg.crop}) bicubic + flip, {cfg.train_views} cached views (epoch e: view e % k)",
        "eval_transform": f"Resize({cfg.resize}) bicubic + CenterCrop({cfg.crop})",
        "selection": f"max over heads and epochs on {cfg.eval_split} (DINOv2 / VTP)",
    }  # fmt: skip
    data = {**val_data, "train": train_data}  # top level: the evaluation split (sample count in reports)
    details = {"heads": result.accuracy, "protocol": protocol, "samples_per_rank": held}
    return SuiteOutput(metrics=_summary(result), data=data, details=details)


SUITE = Suite(
    name="image.linear_probe",
    config=LinearProbeConfig,
    run=run,
    summary="DINOv2 linear probe: 26 heads (n=1,4 blocks x 13 lrs) on cached frozen features (VTP protocol)",
)
