"""``image.knn``: DINO's weighted k-nearest-neighbour classifier on frozen features (the fast probe).

Features: the final-normed class token of the last block, L2-normalised; the training and evaluation splits both
use the evaluation transform (``Resize(resize)`` bicubic + ``CenterCrop(crop)``). Every evaluation sample votes with
its k most cosine-similar training samples, each weighted by ``exp(sim / T)`` (T = 0.07); top-1 for every k of
``ks``, with ``top1`` the k = 20 result (DINO's headline number). Queries are processed in chunks of
``query_chunk`` on the run's device, so a 50k x 1.28M similarity matrix never exists at once. Neighbours are
ranked by similarity, ties by the lower training index, so the result is deterministic.

Under torchrun the search is data-parallel: each rank loads only the training cache chunks it extracted (about
1/world_size of the training features) and every evaluation feature; for every query chunk each rank takes the
top-k (k = max of ``ks``) of its own training samples, the candidates of all ranks are gathered and merged into
the global top-k, and every rank votes on the same neighbours as one process holding the whole training set would
(tested: 2 ranks equal 1 process). ``details.samples_per_rank`` records how many training samples each rank held.

The features come from the probe record of :mod:`unitok.eval.suites.image_features` (class tokens of the last
``cache_blocks`` blocks + avgpool, stored in ``cache_dtype``): with the defaults (4 blocks, float16, 256 / 224) it
is the very cache ``image.linear_probe`` writes for the same splits, so whichever suite runs second extracts
nothing (with ``train_views=0`` both splits are shared, otherwise the evaluation split).

Shape legend:
    N: training samples, n: training samples of one rank, M: evaluation samples, D: encoder width
"""

from __future__ import annotations

from dataclasses import dataclass, field

from unitok.eval.context import EvalContext, Suite, SuiteOutput
from unitok.eval.extract import per_rank, rank_shard
from unitok.eval.metrics.classification import knn_accuracies
from unitok.eval.suites.image_features import check_cache_dtype, split_features


@dataclass
class KnnConfig:
    """Settings of ``image.knn``.

    Attributes:
        train_split: the neighbours' split.
        eval_split: the queries' split.
        resize: short-side resize (bicubic) of both splits.
        crop: centre crop; a multiple of the patch size.
        ks: neighbour counts; metric ``top1_k<k>`` for each, ``top1`` = k 20 (else the first k listed).
        temperature: T of the vote weights ``exp(sim / T)``.
        query_chunk: evaluation samples per similarity block.
        cache_blocks: class tokens stored per sample in the shared probe record (only the last is used; 4 matches
            ``image.linear_probe``'s default so the two suites share one cache).
        cache_dtype: 'float16' or 'float32' (match ``image.linear_probe`` to share its cache).
    """

    train_split: str = "train"
    eval_split: str = "val"
    resize: int = 256
    crop: int = 224
    ks: list[int] = field(default_factory=lambda: [10, 20, 100, 200])
    temperature: float = 0.07
    query_chunk: int = 1024
    cache_blocks: int = 4
    cache_dtype: str = "float16"

    def __post_init__(self) -> None:
        if not self.ks or min(self.ks) < 1:
            raise ValueError(f"ks must be neighbour counts >= 1, got {self.ks}")
        if self.temperature <= 0 or self.query_chunk < 1 or self.cache_blocks < 1:
            raise ValueError("temperature must be > 0, query_chunk and cache_blocks >= 1")
        check_cache_dtype(self.cache_dtype)


def run(ctx: EvalContext, cfg: KnnConfig) -> SuiteOutput:
    common = {"resize": cfg.resize, "crop": cfg.crop, "blocks": cfg.cache_blocks, "cache_dtype": cfg.cache_dtype}
    train, train_data = split_features(ctx, cfg.train_split, shard=ctx.dist.enabled, **common)
    test, test_data = split_features(ctx, cfg.eval_split, **common)
    if train_data["num_classes"] != test_data["num_classes"]:
        raise ValueError(f"{cfg.train_split} has {train_data['num_classes']} classes but {cfg.eval_split} has "
                         f"{test_data['num_classes']}: both splits need the same class folders")  # fmt: skip
    n_train = train_data["num_samples"]
    shard = rank_shard(ctx, n_train)
    acc = knn_accuracies(
        train.cls[:, -1].to(ctx.device),
        train.labels,
        test.cls[:, -1],
        test.labels,
        ks=cfg.ks,
        temperature=cfg.temperature,
        query_chunk=cfg.query_chunk,
        num_classes=train_data["num_classes"],
        shard=shard,
    )
    metrics = {f"top1_k{k}": v for k, v in acc.items()}
    metrics["top1"] = acc[20] if 20 in acc else acc[cfg.ks[0]]
    protocol = {"features": "final-norm class token of the last block, L2-normalised", "similarity": "cosine",
                "vote_weight": "exp(sim / T)", "ties": "lower training index first",
                "transform": f"Resize({cfg.resize}) bicubic + CenterCrop({cfg.crop})",
                "headline_k": 20 if 20 in acc else cfg.ks[0]}  # fmt: skip
    details = {"protocol": protocol, "samples_per_rank": {"train": per_rank(ctx, len(train.labels))}}
    return SuiteOutput(metrics=metrics, data={**test_data, "train": train_data}, details=details)


SUITE = Suite(
    name="image.knn",
    config=KnnConfig,
    run=run,
    summary="DINO weighted kNN (cosine, T=0.07, k=10/20/100/200) on cached frozen class tokens",
)
