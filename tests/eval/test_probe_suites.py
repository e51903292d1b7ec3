"""image.linear_probe and image.knn: the grouped probe trainer, the kNN metric and both suites end to end."""

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from unitok.eval.checkpoints import LoadedCheckpoint
from unitok.eval.context import EvalContext, EvalOptions
from unitok.eval.metrics.classification import knn_accuracies, knn_accuracy
from unitok.eval.metrics.linear_probe import (
    ProbeTraining,
    Shard,
    TensorProbeData,
    batch_stream,
    make_head_groups,
    train_linear_probes,
)
from unitok.eval.suites import image_knn, image_linear_probe
from unitok.modalities.image.tokenizer import ImageTokenizer
from unitok.modalities.image.toy import write_image_folder
from unitok.testing import init_gloo, run_distributed, tiny_vtp

SMALL = {"resize": 32, "crop": 32}


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("toy"), {"train": 96, "val": 48}, size=32)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    model = tiny_vtp(vision_depth=4).requires_grad_(False)
    return LoadedCheckpoint(model, str(tmp_path_factory.mktemp("ckpt")), "pretrained_dir", "tiny", {}, {"id": "tiny"})


def _ctx(ckpt, tree, out):
    return EvalContext(ckpt, str(tree), out, EvalOptions(num_workers=0, batch_size=16, chunk_size=32, progress=False))


def _forbid_model(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("the model ran although every feature is cached")

    monkeypatch.setattr(ImageTokenizer, "probe_features", boom)


def _separable(n, dim=16, classes=4, seed=0, scale=5.0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=g) * scale
    y = torch.arange(n) % classes
    return centers[y] + torch.randn(n, dim, generator=g), y


# ----------------------------------------------------------------------------------------------- probe trainer
def test_probe_heads_reach_full_accuracy_on_separable_features():
    x, y = _separable(240)
    train = TensorProbeData({"a": x[:160], "b": x[:160, :8]}, y[:160])
    val = TensorProbeData({"a": x[160:], "b": x[160:, :8]}, y[160:])
    cfg = ProbeTraining(learning_rates=[1e-5, 1e-2, 1.0], batch_size=32, epochs=4)
    result = train_linear_probes(lambda e: train, val, {"a": 16, "b": 8}, 4, cfg)
    assert set(result.accuracy) == {"a_lr1e-05", "a_lr0.01", "a_lr1", "b_lr1e-05", "b_lr0.01", "b_lr1"}
    assert all(len(v) == 4 for v in result.accuracy.values())
    assert result.best()[0] == 1.0 and result.accuracy["a_lr1"][-1] == 1.0
    # random labels cannot be learnt: the probe is not trivially perfect
    shuffled = TensorProbeData({"a": x[160:], "b": x[160:, :8]}, y[160:][torch.randperm(80)])
    assert train_linear_probes(lambda e: train, shuffled, {"a": 16, "b": 8}, 4, cfg).best()[0] < 0.7


def test_grouped_heads_equal_independent_sgd_heads():
    x, y = _separable(64, dim=8, classes=3, scale=1.0)
    data = TensorProbeData({"a": x, "b": x[:, :5] * 2}, y)
    lrs, batch, epochs = [0.05, 0.8], 16, 3
    cfg = ProbeTraining(learning_rates=lrs, batch_size=batch, epochs=epochs, seed=3)
    result = train_linear_probes(lambda e: data, data, {"a": 8, "b": 5}, 3, cfg)
    total = epochs * math.ceil(64 / batch)

    init = make_head_groups({"a": 8, "b": 5}, 3, [1.0, 1.0], seed=3, device=torch.device("cpu"))
    for name, group in init.items():
        for h, lr in enumerate(lrs):
            head = torch.nn.Linear(group.weight.shape[2], 3)
            with torch.no_grad():
                head.weight.copy_(group.weight[h])
                head.bias.copy_(group.bias[h])
            opt = torch.optim.SGD(head.parameters(), lr=lr * batch / 256, momentum=0.9)
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, total, eta_min=0)
            stream = batch_stream(64, batch, torch.Generator().manual_seed(3))
            for _ in range(total):
                idx = next(stream)
                opt.zero_grad()
                F.cross_entropy(head(data.inputs(idx)[name]), y[idx]).backward()
                opt.step()
                sched.step()
            trained = result.groups[name]
            assert not torch.allclose(head.weight, group.weight[h], atol=1e-3)  # it did train
            torch.testing.assert_close(trained.weight[h], head.weight, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(trained.bias[h], head.bias, atol=1e-5, rtol=1e-5)


def test_learning_rates_scale_with_batch_and_cosine_decays_to_zero():
    x, y = _separable(32, dim=6, classes=2)
    data = TensorProbeData({"a": x}, y)
    lrs = [0.1, 0.4]
    one = train_linear_probes(lambda e: data, data, {"a": 6}, 2, ProbeTraining(lrs, batch_size=32, epochs=1))
    assert one.scaled_lrs == {"a_lr0.1": 0.1 * 32 / 256, "a_lr0.4": 0.4 * 32 / 256}
    # the first update is -lr * batch / 256 * gradient (the momentum buffer starts at the gradient)
    init = make_head_groups({"a": 6}, 2, [1.0, 1.0], seed=0, device=torch.device("cpu"))["a"]
    for h, lr in enumerate(lrs):
        w = init.weight[h].detach().clone().requires_grad_(True)
        F.cross_entropy(x @ w.T + init.bias[h], y).backward()
        torch.testing.assert_close(one.groups["a"].weight[h], w - lr * 32 / 256 * w.grad, atol=1e-7, rtol=1e-6)

    cfg = ProbeTraining(lrs, batch_size=8, epochs=2, epoch_length=50)
    long = train_linear_probes(lambda e: data, data, {"a": 6}, 2, cfg)
    assert long.scaled_lrs["a_lr0.4"] == pytest.approx(0.4 * 8 / 256)
    assert len(long.lr_factors) == 100 and long.lr_factors[0] == 1.0
    expected = [0.5 * (1 + math.cos(math.pi * t / 100)) for t in range(100)]
    assert long.lr_factors == pytest.approx(expected, abs=1e-9)
    assert long.lr_factors[-1] < 3e-4  # the last step's lr, one step before reaching 0


def test_tiny_set_smaller_than_the_batch_trains_on_the_whole_set():
    x, y = _separable(12, dim=4, classes=2)
    data = TensorProbeData({"a": x}, y)
    result = train_linear_probes(lambda e: data, data, {"a": 4}, 2, ProbeTraining([0.1], batch_size=1024, epochs=2))
    assert result.batch_size == 12 and result.epoch_length == 1 and len(result.lr_factors) == 2
    assert result.scaled_lrs["a_lr0.1"] == pytest.approx(0.1 * 12 / 256)


def _two_view_problem():
    """Two training views (epoch e trains on view e % 2) of 60 samples, 30 evaluation samples, 2 input groups."""
    x, y = _separable(90, dim=8, classes=3, scale=1.0)
    noisy = x[:60] + 0.5 * torch.randn(60, 8, generator=torch.Generator().manual_seed(7))
    views = [{"a": v, "b": v[:, :5] * 2} for v in (x[:60], noisy)]
    cfg = ProbeTraining(learning_rates=[0.05, 0.8], batch_size=16, epochs=3, seed=3)  # 4 its/epoch: 3 permutations
    return views, y[:60], {"a": x[60:], "b": x[60:, :5] * 2}, y[60:], cfg


def _sharded_probe_worker(rank, world, init_file, out):
    init_gloo(rank, world, init_file)
    views, y, val_x, val_y, cfg = _two_view_problem()
    # uneven, interleaved shards in no particular order: rank 0 holds every third sample, rank 1 the rest reversed;
    # rank 0 holds the whole evaluation set and rank 1 none of it
    mine = torch.arange(0, 60, 3) if rank == 0 else torch.tensor([i for i in range(59, -1, -1) if i % 3])
    val_rows = torch.arange(30) if rank == 0 else torch.arange(0)
    train = [TensorProbeData({k: v[mine] for k, v in view.items()}, y[mine]) for view in views]
    val = TensorProbeData({k: v[val_rows] for k, v in val_x.items()}, val_y[val_rows])
    result = train_linear_probes(lambda e: train[e % 2], val, {"a": 8, "b": 5}, 3, cfg, shard=Shard(mine, 60))
    weights = {name: (g.weight.detach(), g.bias.detach()) for name, g in result.groups.items()}
    torch.save({"accuracy": result.accuracy, "weights": weights, "held": len(mine)}, Path(out) / f"rank{rank}.pt")


def test_data_parallel_probe_training_takes_the_single_process_steps(tmp_path):
    views, y, val_x, val_y, cfg = _two_view_problem()
    train = [TensorProbeData(view, y) for view in views]
    single = train_linear_probes(lambda e: train[e % 2], TensorProbeData(val_x, val_y), {"a": 8, "b": 5}, 3, cfg)
    run_distributed(_sharded_probe_worker, 2, str(tmp_path), timeout_s=120)
    init = make_head_groups({"a": 8, "b": 5}, 3, [1.0, 1.0], seed=3, device=torch.device("cpu"))
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert [r["held"] for r in ranks] == [20, 40]
    for r in ranks:
        assert r["accuracy"].keys() == single.accuracy.keys()
        for head, accs in single.accuracy.items():
            assert r["accuracy"][head] == pytest.approx(accs, abs=1e-6), head
        for name, group in single.groups.items():
            weight, bias = r["weights"][name]
            assert not torch.allclose(weight, init[name].weight, atol=1e-3)  # it did train
            torch.testing.assert_close(weight, group.weight.detach(), atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(bias, group.bias.detach(), atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------------- kNN metric
def test_knn_matches_a_hand_computation():
    # unit training vectors: x0 (label 0), x1, x2 (label 1), x3 (label 2); scaled to check the normalisation
    train = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [-1.0, 0.0]]) * torch.tensor([[3.0], [1.0], [2.0], [5.0]])
    train_y = torch.tensor([0, 1, 1, 2])
    test = torch.tensor([[1.0, 0.0], [0.1, 1.0], [-1.0, 0.1], [0.75, 0.66]])
    test_y = torch.tensor([0, 1, 2, 0])
    # k=1: nearest x0, x2, x3, x1 -> right, right, right, wrong
    # k=3, T=1: q0 sims 1 | .8, .6 -> e^1 = 2.72 < e^.8 + e^.6 = 4.05: label 1, wrong; q1, q2 right; q3 wrong
    # k=3, T=0.07: q0 e^(1/.07) outweighs label 1; q3 still has two label-1 neighbours closer than x0: wrong
    assert knn_accuracies(train, train_y, test, test_y, ks=[1, 3], temperature=1.0) == {1: 0.75, 3: 0.5}
    assert knn_accuracies(train, train_y, test, test_y, ks=[3], temperature=0.07) == {3: 0.75}
    assert knn_accuracy(train, train_y, test, test_y, k=3, temperature=1.0) == 0.5


def test_knn_chunked_equals_unchunked():
    g = torch.Generator().manual_seed(1)
    train, test = torch.randn(300, 12, generator=g), torch.randn(70, 12, generator=g)
    train_y, test_y = torch.randint(0, 5, (300,), generator=g), torch.randint(0, 5, (70,), generator=g)
    centers = torch.randn(5, 12, generator=g)
    train, test = train + centers[train_y], test + centers[test_y]
    whole = knn_accuracies(train, train_y, test, test_y, ks=[1, 5, 20, 500])
    assert whole == knn_accuracies(train, train_y, test, test_y, ks=[1, 5, 20, 500], query_chunk=7)
    assert whole[5] == knn_accuracy(train, train_y, test, test_y, k=5, query_chunk=16)
    assert len(set(whole.values())) > 1 and whole[5] > 0.5  # k matters, and the label signal is found


def _knn_reference(train, train_y, test, test_y, ks, temperature=0.07):
    """The definition: rank every training sample (similarity descending, ties by index: a stable sort), vote."""
    sims = F.normalize(test.float(), dim=-1) @ F.normalize(train.float(), dim=-1).T
    order = sims.argsort(dim=1, descending=True, stable=True)
    out = {}
    for k in ks:
        top = order[:, :k]
        votes = torch.zeros(len(test), int(max(train_y.max(), test_y.max())) + 1)
        votes.scatter_add_(1, train_y[top], (sims.gather(1, top) / temperature).exp())
        out[k] = (votes.argmax(1) == test_y).sum().item() / len(test)
    return out


def _tied_problem():
    """40 training samples, half of them basis vectors (x 1, 2 or 4), and 40 queries, some of which tie exactly:
    basis vectors and diagonals e_i + e_j. Labels: the largest of the first 4 coordinates, 40% of training labels
    changed (so that tied duplicates disagree)."""
    g = torch.Generator().manual_seed(5)
    eye = torch.eye(6)
    basis = eye[torch.randint(0, 3, (20,), generator=g)] * 2.0 ** torch.randint(0, 3, (20, 1), generator=g)
    train = torch.cat([torch.randn(20, 6, generator=g), basis])[torch.randperm(40, generator=g)]
    flip = (torch.rand(40, generator=g) < 0.4) * torch.randint(1, 4, (40,), generator=g)
    test = torch.cat([torch.randn(35, 6, generator=g), eye[:3], eye[[0]] + eye[[1]], eye[[1]] + eye[[2]]])
    return train, (train[:, :4].argmax(1) + flip) % 4, test, test[:, :4].argmax(1)


#: rank 0's and rank 1's training samples: chunks of 6 dealt round robin (as extraction does; both ranks hold
#: fewer than the 30 neighbours asked for), a rank with 3 samples, a rank with none
KNN_LAYOUTS = {
    "chunks": [i for i in range(40) if i // 6 % 2 == 0],
    "three": [i for i in range(40) if i not in (4, 17, 30)],
    "none": list(range(40)),
}
KNN_KS = [1, 3, 5, 15, 30]
KNN_TEMPERATURES = [0.07, 1.0]  # at T = 1 far neighbours weigh as much as near ones


def test_knn_ties_go_to_the_lower_training_index():
    e0, e1 = torch.eye(2)
    train, query = torch.stack([e1, e0, 3 * e0, e0]), e0[None]
    assert knn_accuracies(train, torch.tensor([0, 1, 0, 0]), query, torch.tensor([1]), ks=[1]) == {1: 1.0}
    assert knn_accuracies(train, torch.tensor([1, 0, 1, 1]), query, torch.tensor([1]), ks=[1]) == {1: 0.0}
    # ties across the k-th place (topk alone picks any of them): every k agrees with a stable sort of all samples
    train, train_y, test, test_y = _tied_problem()
    ks = [1, 2, 3, 5, 8, 13, 40]
    for t in KNN_TEMPERATURES:
        got = knn_accuracies(train, train_y, test, test_y, ks=ks, temperature=t, query_chunk=4)
        assert got == _knn_reference(train, train_y, test, test_y, ks, t)
        assert got != knn_accuracies(train.flip(0), train_y.flip(0), test, test_y, ks=ks, temperature=t)  # ties matter


def _sharded_knn_worker(rank, world, init_file, out):
    init_gloo(rank, world, init_file)
    train, train_y, test, test_y = _tied_problem()
    got = {}
    for name, first in KNN_LAYOUTS.items():
        mine = torch.tensor(first if rank == 0 else sorted(set(range(40)) - set(first)), dtype=torch.long)
        got[name] = len(mine), [
            knn_accuracies(train[mine], train_y[mine], test, test_y, ks=KNN_KS, temperature=t, query_chunk=4,
                           num_classes=4, shard=Shard(mine, 40))
            for t in KNN_TEMPERATURES
        ]  # fmt: skip
    torch.save(got, Path(out) / f"rank{rank}.pt")


def test_data_parallel_knn_finds_the_single_process_neighbours(tmp_path):
    train, train_y, test, test_y = _tied_problem()
    single = [knn_accuracies(train, train_y, test, test_y, ks=KNN_KS, temperature=t) for t in KNN_TEMPERATURES]
    assert all(len(set(acc.values())) > 2 for acc in single)  # k matters
    run_distributed(_sharded_knn_worker, 2, str(tmp_path), timeout_s=120)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert {name: [r[name][0] for r in ranks] for name in KNN_LAYOUTS} == {
        "chunks": [22, 18], "three": [37, 3], "none": [40, 0]}  # fmt: skip
    for name in KNN_LAYOUTS:
        for r in ranks:
            assert r[name][1] == single, name


# ----------------------------------------------------------------------------------------------- suites
def test_linear_probe_suite_end_to_end_and_cached_rerun(ckpt, tree, tmp_path, monkeypatch):
    cfg = image_linear_probe.LinearProbeConfig(**SMALL, epochs=2, batch_size=32)
    out = image_linear_probe.run(_ctx(ckpt, tree, tmp_path), cfg)
    m = out.metrics
    assert set(m) == {"top1", "best_lr", "best_n_blocks", "best_epoch", "top1_last_epoch"}
    assert 0 <= m["top1_last_epoch"] <= m["top1"] <= 1 and m["top1"] > 1 / 24
    assert m["best_lr"] in cfg.learning_rates and m["best_n_blocks"] in (1, 4) and m["best_epoch"] in (1, 2)
    heads = out.details["heads"]
    assert len(heads) == 26 and all(len(v) == 2 for v in heads.values()) and "n4_lr0.001" in heads
    assert m["top1"] == max(max(v) for v in heads.values())
    assert out.data["train"]["num_samples"] == 96 and out.data["num_samples"] == 48 and out.data["split"] == "val"
    assert out.details["protocol"]["input_dims"] == {"n1": 64, "n4": 160}

    _forbid_model(monkeypatch)
    again = image_linear_probe.run(_ctx(ckpt, tree, tmp_path), cfg)
    assert again.metrics == out.metrics and again.details["heads"] == heads


def test_linear_probe_train_views_are_cached_separately(ckpt, tree, tmp_path):
    cfg = image_linear_probe.LinearProbeConfig(**SMALL, epochs=2, batch_size=32, train_views=2)
    out = image_linear_probe.run(_ctx(ckpt, tree, tmp_path), cfg)
    assert len(out.details["heads"]) == 26
    cache = tmp_path / "cache"
    views = [sorted(cache.glob(f"probe_train_view{v}-*")) for v in (0, 1)]
    assert [len(v) for v in views] == [1, 1] and not list(cache.glob("probe_train-*"))
    feats = [torch.load(v[0] / "chunk_000000.pt", weights_only=True) for v in views]
    assert feats[0]["cls"].shape == (32, 4, 32) and feats[0]["cls"].dtype == torch.float16
    assert not torch.equal(feats[0]["cls"], feats[1]["cls"])
    assert torch.equal(feats[0]["label"], feats[1]["label"])


def test_linear_probe_rejects_a_crop_off_the_patch_grid(ckpt, tree, tmp_path):
    with pytest.raises(ValueError, match="multiple of the model's patch size 16"):
        image_linear_probe.run(_ctx(ckpt, tree, tmp_path), image_linear_probe.LinearProbeConfig(resize=40, crop=40))


def test_knn_suite_end_to_end_and_shares_the_linear_probe_cache(ckpt, tree, tmp_path, monkeypatch):
    knn_cfg = image_knn.KnnConfig(**SMALL, ks=[1, 5, 20])
    fresh = image_knn.run(_ctx(ckpt, tree, tmp_path / "alone"), knn_cfg)
    assert set(fresh.metrics) == {"top1_k1", "top1_k5", "top1_k20", "top1"}
    assert fresh.metrics["top1"] == fresh.metrics["top1_k20"]
    assert all(0 <= v <= 1 for v in fresh.metrics.values()) and fresh.metrics["top1_k1"] > 1 / 24

    ctx = _ctx(ckpt, tree, tmp_path / "shared")
    image_linear_probe.run(ctx, image_linear_probe.LinearProbeConfig(**SMALL, epochs=1, batch_size=32))
    folders = sorted(p.name for p in ctx.cache_root.iterdir())
    _forbid_model(monkeypatch)
    shared = image_knn.run(ctx, knn_cfg)
    assert shared.metrics == fresh.metrics
    assert sorted(p.name for p in ctx.cache_root.iterdir()) == folders and len(folders) == 2
