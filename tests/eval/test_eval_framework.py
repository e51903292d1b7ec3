"""The evaluation framework: checkpoint resolution, the image-tokenizer view, eval data, resumable extraction,
the zero-shot and latent-statistics suites."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import unitok
from unitok.eval import extract as extract_mod
from unitok.eval.checkpoints import LoadedCheckpoint, load_checkpoint_for_eval
from unitok.eval.context import EvalContext, EvalOptions
from unitok.eval.image_data import IndexedImages, class_names, prompt_templates, resolve_split, squash_transform
from unitok.eval.suites import image_latent_stats, image_zeroshot
from unitok.latent_stats import LatentStats
from unitok.modalities.image.tokenizer import ImageTokenizer
from unitok.testing import init_gloo, run_distributed, tiny_vtp

RECIPES = Path(__file__).resolve().parents[2] / "recipes" / "debug"


def _ctx(ckpt, data, out, **options) -> EvalContext:
    opts = {"num_workers": 0, "batch_size": 8, "chunk_size": 10, "progress": False, **options}
    return EvalContext(ckpt, str(data), Path(out), EvalOptions(**opts))


def _loaded(model, name="tiny") -> LoadedCheckpoint:
    return LoadedCheckpoint(model, f"/nowhere/{name}", "pretrained_dir", name, {}, {"id": name})


# ------------------------------------------------------------------------------------------ checkpoints
@pytest.fixture(scope="module")
def ae_run(tmp_path_factory):
    """A 4-step unitok-train run of the tiny AE recipe, with checkpoints at steps 2 and 4 and an exported model/."""
    run_dir = tmp_path_factory.mktemp("runs") / "ae"
    overrides = ["train.steps=4", "train.ckpt_every=2", "train.batch_size=4", "data.params.num_samples=16",
                 "data.params.size=32", f"run_dir={run_dir}"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "unitok.train", str(RECIPES / "ae_tiny.yaml"), *overrides]
    subprocess.run(cmd, check=True, env=env, capture_output=True, timeout=180)
    return run_dir


def test_checkpoint_kinds_all_load_the_exported_weights(ae_run, tiny_vtp_dir):
    exported = unitok.load_pretrained(ae_run / "model").state_dict()
    for path, kind in [(ae_run, "run_dir"), (ae_run / "model", "pretrained_dir"),
                       (ae_run / "checkpoints" / "step_00000004.pt", "train_state"),
                       (ae_run / "checkpoints" / "latest", "train_state")]:  # fmt: skip
        ckpt = load_checkpoint_for_eval(path)
        assert ckpt.kind == kind and ckpt.name.startswith("ae")
        assert ckpt.adapter_params == {"modality": "image", "patch_size": 16}  # from the run's config.yaml
        for k, v in ckpt.model.state_dict().items():
            assert torch.equal(v, exported[k]), (path, k)
    early = load_checkpoint_for_eval(ae_run / "checkpoints" / "step_00000002.pt")
    assert early.identity["step"] == 2 and early.name == "ae@2"
    assert not all(torch.equal(v, exported[k]) for k, v in early.model.state_dict().items())
    vtp = load_checkpoint_for_eval(tiny_vtp_dir / "config.json")
    assert vtp.model_type == "vtp" and vtp.kind == "pretrained_dir" and vtp.describe()["name"] == "tiny_vtp"


def test_checkpoint_errors_name_the_problem(tmp_path, ae_run):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint_for_eval(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a checkpoint"):
        load_checkpoint_for_eval(tmp_path / "empty")
    orphan = tmp_path / "orphan" / "checkpoints"
    orphan.mkdir(parents=True)
    (orphan / "step_00000001.pt").write_bytes((ae_run / "checkpoints" / "step_00000002.pt").read_bytes())
    with pytest.raises(FileNotFoundError, match="config.yaml is missing"):
        load_checkpoint_for_eval(orphan / "step_00000001.pt")


# ------------------------------------------------------------------------------------------ the tokenizer view
def test_image_tokenizer_over_an_autoencoder_matches_the_model_calls():
    torch.manual_seed(0)
    ae = unitok.create_model("unitok_tiny_img_p16_d8").eval()
    tok = ImageTokenizer(ae)  # patch size inferred from patch_dim = 3·16·16
    assert tok.patch_size == 16 and not tok.has_text and tok.has_decoder and tok.image_size is None
    x = torch.randn(2, 3, 32, 48)
    z = tok.encode(x)
    assert z.shape == (2, 8, 2, 3)
    tokens = tok.adapter.patchify(x)
    assert torch.equal(z.flatten(2).transpose(1, 2), ae.encode(tokens).x)
    assert tok.decode(z).shape == x.shape
    cls, avg = tok.probe_features(x, n_last_blocks=2)
    assert cls.shape == (2, 2, 64) and avg.shape == (2, 64)
    with pytest.raises(ValueError, match="no text tower"):
        tok.clip_image_features(x)
    with pytest.raises(ValueError, match="not an image tokenizer"):
        ImageTokenizer(unitok.create_model("unitok_tiny_wav_p320_d8"))
    with pytest.raises(ValueError, match="trained on 'audio'"):
        ImageTokenizer(ae, {"modality": "audio"})


def test_image_tokenizer_over_vtp_uses_the_official_api():
    model = tiny_vtp()
    tok = ImageTokenizer(model)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(tok.encode(x), model.get_reconstruction_latents(x))
    cls, avg = tok.probe_features(x, n_last_blocks=2)
    ref = model.get_intermediate_layers_feature(x, n=2, return_class_token=True)
    assert torch.equal(cls[:, 1], ref[1][1]) and torch.equal(avg, ref[1][0].mean(1))
    assert torch.allclose(tok.clip_image_features(x), model.get_clip_image_feature(x, normalize=True))


# ------------------------------------------------------------------------------------------ data
def test_splits_class_names_and_templates(toy_folder, tmp_path):
    assert resolve_split(toy_folder, "val") == toy_folder / "val"
    assert resolve_split(toy_folder / "val", "val") == toy_folder / "val"  # a bare class-folder tree
    with pytest.raises(FileNotFoundError, match="no 'test' split"):
        resolve_split(toy_folder, "test")
    with pytest.raises(ValueError, match="needs --data"):
        resolve_split(None, "val")
    ds = IndexedImages(toy_folder / "val", squash_transform(32))
    names = class_names(ds)  # classnames.txt beside the splits
    assert names[0] == "red circle" and len(names) == len(ds.classes) == 24
    assert class_names(ds, "folders")[0] == "00 red circle"
    bad = tmp_path / "names.txt"
    bad.write_text("one\ntwo\n")
    with pytest.raises(ValueError, match="lists 2 class names but the data has 24"):
        class_names(ds, str(bad))
    with pytest.raises(ValueError, match="1000 ImageNet"):
        class_names(ds, "imagenet")
    assert prompt_templates("auto", ds.root)[0] == "a photo of a {}."
    assert len(prompt_templates("openai")) == 80 and len(prompt_templates("simple")) == 7
    (tmp_path / "t.txt").write_text("a {}\nno slot\n")
    with pytest.raises(ValueError, match="needs a '\\{\\}'"):
        prompt_templates(str(tmp_path / "t.txt"))


# ------------------------------------------------------------------------------------------ extraction
def _counting_fn(calls):
    def fn(batch):
        calls.append(len(batch["index"]))
        return {"index": batch["index"], "mean": batch["image"].mean(dim=(1, 2, 3))}

    return fn


def test_extraction_is_ordered_resumable_and_independent_of_batch_and_chunk(toy_folder, tmp_path):
    ds = IndexedImages(toy_folder / "train", squash_transform(32))
    ctx = _ctx(_loaded(torch.nn.Linear(1, 1)), toy_folder, tmp_path / "a", batch_size=8, chunk_size=10)
    calls = []
    out = extract_mod.extract(ctx, ds, _counting_fn(calls), "t", {"k": 1})
    assert out["index"].tolist() == list(range(48)) and sum(calls) == 48
    assert max(calls) <= 8
    folder = next((tmp_path / "a" / "cache").glob("t-*"))
    assert len(list(folder.glob("chunk_*.pt"))) == 5 and json.loads((folder / "key.json").read_text()) == {"k": 1}
    calls.clear()
    again = extract_mod.extract(ctx, ds, _counting_fn(calls), "t", {"k": 1})
    assert calls == [] and torch.equal(again["mean"], out["mean"])  # served from the cache
    (folder / "chunk_000002.pt").unlink()  # as if killed before that chunk was written
    extract_mod.extract(ctx, ds, _counting_fn(calls), "t", {"k": 1})
    assert sum(calls) == 10
    other = _ctx(ctx.ckpt, toy_folder, tmp_path / "b", batch_size=5, chunk_size=7)
    assert torch.allclose(extract_mod.extract(other, ds, _counting_fn([]), "t", {"k": 1})["mean"], out["mean"])
    calls.clear()
    extract_mod.extract(ctx, ds, _counting_fn(calls), "t", {"k": 2})  # another key: another cache
    assert sum(calls) == 48


def _extract_worker(rank, world, init_file, root, out):
    from unitok.engine.distributed import DistInfo

    init_gloo(rank, world, init_file)
    ds = IndexedImages(Path(root) / "train", squash_transform(32))
    ctx = EvalContext(_loaded(torch.nn.Linear(1, 1)), root, Path(out), EvalOptions(num_workers=0, batch_size=4,
                      chunk_size=10, progress=False), DistInfo(rank=rank, world_size=world))  # fmt: skip
    calls = []
    got = extract_mod.extract(ctx, ds, _counting_fn(calls), "t", {"k": 1})
    shard = extract_mod.extract(ctx, ds, _counting_fn(calls), "t", {"k": 1}, shard=True)
    mine = extract_mod.rank_samples(ctx, len(ds)).tolist()
    torch.save({"mean": got["mean"], "calls": sum(calls), "shard": shard["index"].tolist(), "rank_samples": mine},
               Path(out) / f"rank{rank}.pt")  # fmt: skip


def test_two_ranks_share_the_work_and_both_get_every_sample(toy_folder, tmp_path):
    run_distributed(_extract_worker, 2, str(toy_folder), str(tmp_path))
    ds = IndexedImages(toy_folder / "train", squash_transform(32))
    single = extract_mod.extract(_ctx(_loaded(torch.nn.Linear(1, 1)), toy_folder, tmp_path / "s"), ds,
                                 _counting_fn([]), "t", {"k": 1})  # fmt: skip
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert [r["calls"] for r in ranks] == [28, 20]  # chunks 0, 2, 4 (8 samples) and 1, 3
    for r in ranks:
        assert torch.equal(r["mean"], single["mean"])
    # shard=True: each rank reads back only its own chunks, the samples rank_samples lists
    assert ranks[0]["shard"] == [*range(10), *range(20, 30), *range(40, 48)] == ranks[0]["rank_samples"]
    assert ranks[1]["shard"] == [*range(10, 20), *range(30, 40)] == ranks[1]["rank_samples"]


def test_a_rank_without_chunks_gets_empty_outputs_and_another_chunk_size_is_refused(toy_folder, tmp_path, monkeypatch):
    import dataclasses

    from unitok.engine.distributed import DistInfo

    ds = IndexedImages(toy_folder / "train", squash_transform(32))
    ctx = _ctx(_loaded(torch.nn.Linear(1, 1)), toy_folder, tmp_path, chunk_size=10)
    full = extract_mod.extract(ctx, ds, _counting_fn([]), "t", {"k": 1})
    monkeypatch.setattr(EvalContext, "barrier", lambda self: None)  # rank 6 of 8, alone: 5 chunks, none of them its own
    idle = dataclasses.replace(ctx, dist=DistInfo(rank=6, world_size=8))
    calls = []
    got = extract_mod.extract(idle, ds, _counting_fn(calls), "t", {"k": 1}, shard=True)
    assert calls == [] and extract_mod.rank_samples(idle, len(ds)).tolist() == []
    assert extract_mod.rank_shard(ctx, len(ds)) is None  # not distributed
    shard = extract_mod.rank_shard(dataclasses.replace(ctx, dist=DistInfo(rank=1, world_size=2)), len(ds))
    assert shard.total == 48 and shard.indices.tolist() == [*range(10, 20), *range(30, 40)]
    assert {f: (v.shape, v.dtype) for f, v in got.items()} == {f: ((0,), v.dtype) for f, v in full.items()}
    other = dataclasses.replace(ctx, options=dataclasses.replace(ctx.options, chunk_size=16))
    with pytest.raises(ValueError, match="chunk_000000.pt holds 10 samples where chunk 0 has 16.*another --chunk-size"):
        extract_mod.extract(other, ds, _counting_fn([]), "t", {"k": 1})


# ------------------------------------------------------------------------------------------ suites
def test_zero_shot_suite_is_the_official_computation(toy_folder, tmp_path):
    model = tiny_vtp()
    ctx = _ctx(_loaded(model), toy_folder, tmp_path)
    out = image_zeroshot.run(ctx, image_zeroshot.ZeroShotConfig())
    ds = IndexedImages(toy_folder / "val", squash_transform(32))
    images = torch.stack([ds[i]["image"] for i in range(len(ds))])
    labels = torch.tensor(ds.targets)
    with torch.no_grad():
        feats = model.get_clip_image_feature(images)
        tok = model.get_tokenizer()
        names, templates = class_names(ds), prompt_templates("auto", ds.root)
        W = torch.stack([F.normalize(model.encode_text(tok([t.format(n) for t in templates]), normalize=True)
                                     .mean(0), dim=0) for n in names], dim=1)  # fmt: skip
    logits = 100 * feats @ W
    assert out.metrics["top1"] == pytest.approx((logits.argmax(1) == labels).float().mean().item(), abs=1e-6)
    top5 = (logits.topk(5).indices == labels[:, None]).any(1).float().mean().item()
    assert out.metrics["top5"] == pytest.approx(top5, abs=1e-6)
    assert out.data["num_samples"] == 24 and out.details["protocol"]["num_templates"] == 5
    ae = _loaded(unitok.create_model("unitok_tiny_img_p16_d8"))
    with pytest.raises(ValueError, match="no text tower"):
        image_zeroshot.run(_ctx(ae, toy_folder, tmp_path), image_zeroshot.ZeroShotConfig())


def test_latent_stats_suite_equals_the_direct_statistics_and_is_stored(toy_folder, tiny_vtp_dir, tmp_path):
    import shutil

    ckpt_dir = tmp_path / "ckpt"
    shutil.copytree(tiny_vtp_dir, ckpt_dir)
    ckpt = load_checkpoint_for_eval(ckpt_dir)
    ctx = _ctx(ckpt, toy_folder, tmp_path / "out")
    cfg = image_latent_stats.LatentStatsConfig(num_samples=30, store_in_checkpoint=True)
    out = image_latent_stats.run(ctx, cfg)
    subset = image_latent_stats.fixed_subset(range(48), 30)
    from torchvision.transforms import v2

    from unitok.eval.image_data import adm_transform

    ds = IndexedImages(toy_folder / "train", v2.Compose([adm_transform(32), v2.Normalize(tok_mean := [0.485, 0.456,
                       0.406], [0.229, 0.224, 0.225])]))  # fmt: skip
    assert tok_mean == list(ImageTokenizer(ckpt.model).mean)
    with torch.no_grad():
        z = ckpt.model.get_reconstruction_latents(torch.stack([ds[i]["image"] for i in subset]))
    flat = z.double().transpose(0, 1).reshape(8, -1)
    saved = LatentStats.load(tmp_path / "out" / "latents_stats.pt")
    assert torch.allclose(saved.mean.flatten().double(), flat.mean(1), atol=1e-6)
    assert torch.allclose(saved.std.flatten().double(), flat.std(1), rtol=1e-5)
    assert out.metrics["std_avg"] == pytest.approx(flat.std(1).mean().item(), rel=1e-5)
    assert out.data["num_samples"] == 30
    reloaded = unitok.load_pretrained(ckpt_dir)
    assert reloaded.latent_stats == saved
    tok = ImageTokenizer(reloaded)
    x = torch.randn(1, 3, 32, 32)
    zn = tok.encode(x, normalize_latents=True)
    assert torch.allclose(zn, (tok.encode(x) - saved.mean) / saved.std, atol=1e-5)
    assert torch.allclose(tok.decode(zn, denormalize_latents=True), tok.decode(tok.encode(x)), atol=1e-4)
    with pytest.raises(RuntimeError, match="no latent statistics"):
        ImageTokenizer(tiny_vtp()).encode(x, normalize_latents=True)
