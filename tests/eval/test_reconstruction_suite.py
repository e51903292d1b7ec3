"""``image.reconstruction`` end to end on a tiny random VTP and 40 toy images, with random-init Inception and VGG.

The FID Inception sees 75-px inputs instead of 299 in these tests (pytorch-fid's resize is patched, the same way for
our suite and for pytorch-fid's own ``calculate_fid_given_paths``): 16x less compute, the same code path.
"""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unitok.engine.distributed import DistInfo
from unitok.eval.checkpoints import LoadedCheckpoint
from unitok.eval.context import EvalContext, EvalOptions
from unitok.eval.image_data import IndexedImages, adm_transform
from unitok.eval.suites import image_reconstruction as suite
from unitok.modalities.image.tokenizer import ImageTokenizer
from unitok.testing import init_gloo, run_distributed, tiny_vtp

pytestmark = pytest.mark.filterwarnings("ignore:Matrix is singular:scipy.linalg.LinAlgWarning")

N, SIZE, FID_INPUT = 40, 32, 75
METRICS = ("psnr", "ssim", "lpips", "rfid")


class _SmallInceptionInput:
    """``torch.nn.functional`` as pytorch-fid's Inception sees it, with its 299-px resize made 75-px."""

    def __getattr__(self, name):
        return getattr(torch.nn.functional, name)

    @staticmethod
    def interpolate(x, size=None, **kwargs):
        return torch.nn.functional.interpolate(x, size=(FID_INPUT, FID_INPUT), **kwargs)


def _patch_inception(mp) -> None:
    import pytorch_fid.inception

    mp.setattr(pytorch_fid.inception, "F", _SmallInceptionInput())


def _tiny_vtp():
    return tiny_vtp(image_size=SIZE, text_vocab_size=1024)


def _context(root, out, batch_size=8, chunk_size=16, dist=None) -> EvalContext:
    ckpt = LoadedCheckpoint(_tiny_vtp(), "tiny", "pretrained_dir", "tiny", {}, {"id": "tiny"})
    options = EvalOptions(num_workers=0, batch_size=batch_size, chunk_size=chunk_size, progress=False)
    return EvalContext(ckpt, str(root), Path(out), options, **({"dist": dist} if dist else {}))


def _run(ctx, **cfg):
    """The suite with random-init nets; FID by the fast 'eigh' route unless asked (scipy's sqrtm of a 2048 x 2048
    matrix takes ~13 s on 2 cores; the two routes agree with pytorch-fid's in tests/eval/test_fid.py)."""
    cfg.setdefault("fid_method", "eigh")
    return suite.run(ctx, suite.ReconstructionConfig(random_init_nets=True, **cfg))


@pytest.fixture(scope="module", autouse=True)
def _small_inception_one_thread():
    """Small Inception inputs, and one intra-op thread: two pytest-xdist workers on two cores would otherwise
    oversubscribe them (each test here is a few seconds of convolutions and eigendecompositions)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        _patch_inception(mp)
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from unitok.modalities.image.toy import write_image_folder

    return write_image_folder(tmp_path_factory.mktemp("toy"), {"val": N}, size=SIZE)


@pytest.fixture(scope="module")
def baseline(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("baseline")
    return out, _run(_context(data_root, out))


def _official_pipeline(data_root, positions):
    """The official tool's steps with torchvision's Normalize, on images at ``positions``: (originals, recons)."""
    from torchvision.transforms import Normalize

    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    rev = Normalize([-m / s for m, s in zip(mean, std, strict=True)], [1 / s for s in std])
    folder = IndexedImages(Path(data_root) / "val", adm_transform(SIZE))
    images = Normalize(mean, std)(torch.stack([folder[p]["image"] for p in positions]))
    tok = ImageTokenizer(_tiny_vtp())
    with torch.inference_mode():
        recon = tok.decode(tok.encode(images))
    return rev(images).clamp(0, 1), rev(recon).clamp(0, 1)


def test_suite_end_to_end_follows_the_official_formulas(baseline, data_root):
    out, result = baseline
    assert set(result.metrics) == set(METRICS) and all(math.isfinite(v) for v in result.metrics.values())
    assert result.data["num_samples"] == N and result.data["image_size"] == SIZE
    assert result.data["crop"] == "adm_center_crop" and "same split" in result.data["reference"]
    assert result.details["random_init_nets"] is True and "RANDOM-INIT" in result.details["warning"]
    protocol = result.details["protocol"]
    assert protocol["precision"] == {"encode": "fp32", "decode": "fp32"} and protocol["fid_method"] == "eigh"
    assert protocol["inception"]["sha256"] is None and protocol["lpips"]["vgg_weights"] is None
    orig, recon = _official_pipeline(data_root, range(N))
    # the tool's per-image PSNR: float32 values x 255
    mse = ((orig * 255 - recon * 255) ** 2).flatten(1).mean(1)
    per_image = 20 * torch.log10(255 / mse.sqrt())
    assert result.metrics["psnr"] == pytest.approx(per_image.mean().item(), rel=1e-5)
    from torchmetrics.functional.image import structural_similarity_index_measure as tm_ssim

    expected_ssim = tm_ssim(recon.double(), orig.double(), data_range=1.0, reduction="none").mean().item()
    assert result.metrics["ssim"] == pytest.approx(expected_ssim, rel=1e-6)  # (float64: torchmetrics' convention)
    worst = result.details["grid"]["worst"]
    best = result.details["grid"]["best"]
    assert len(worst) == len(best) == 8 and [w["psnr"] for w in worst] == sorted(w["psnr"] for w in worst)
    assert worst[0]["position"] == per_image.argmin().item() and best[0]["position"] == per_image.argmax().item()
    assert worst[0]["psnr"] == pytest.approx(per_image.min().item(), rel=1e-5)
    assert worst[0]["file"].endswith(".png") and (Path(data_root) / "val" / worst[0]["file"]).is_file()
    grid = Image.open(out / result.artifacts["grid"])
    assert grid.size == (8 * (SIZE + 2) + 2, 4 * (SIZE + 2) + 2)


def test_rfid_equals_pytorch_fid_on_the_written_png_folders(baseline, tmp_path):
    from unittest import mock

    import pytorch_fid.inception as pfi
    from pytorch_fid.fid_score import compute_statistics_of_path

    from unitok.eval.metrics.fid import frechet_distance
    from unitok.eval.metrics.inception import _random_init_state_dict

    out, result = baseline
    folders = {kind: tmp_path / kind for kind in ("ref", "rec")}
    for kind, folder in folders.items():  # the official tool's two folders
        folder.mkdir()
        for png in (out / "image.reconstruction").glob(f"{kind}_*.png"):
            shutil.copy(png, folder)
        assert len(list(folder.iterdir())) == N
    torch.manual_seed(0)  # the suite builds its random-init Inception from seed 0 too
    with mock.patch.object(pfi, "load_state_dict_from_url", _random_init_state_dict):
        model = pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()  # calculate_fid_given_paths' model
    # pytorch-fid reads the PNG folders back (its statistics: float32 mean, np.cov); the distance routes themselves
    # are compared with pytorch-fid's in test_fid.py
    stats = [compute_statistics_of_path(str(folders[k]), model, 50, 2048, "cpu", 0) for k in ("ref", "rec")]
    reference = frechet_distance(*stats[0], *stats[1], method="eigh")
    assert reference > 1
    assert result.metrics["rfid"] == pytest.approx(reference, rel=1e-5)


def test_pngs_are_truncated_to_uint8_not_rounded(baseline, data_root):
    out, _ = baseline
    orig, recon = _official_pipeline(data_root, range(8))  # the suite's first batch
    for kind, images in (("ref", orig), ("rec", recon)):
        for position in (0, 7):
            png = torch.from_numpy(np.array(Image.open(out / "image.reconstruction" / f"{kind}_{position:06d}.png")))
            assert png.shape == (SIZE, SIZE, 3)
            assert torch.equal(png.permute(2, 0, 1), (images[position] * 255).to(torch.uint8))
    rounded = (recon[0] * 255).round().to(torch.uint8)
    assert not torch.equal(rounded, (recon[0] * 255).to(torch.uint8))  # the check above can tell them apart


def test_metrics_do_not_depend_on_batch_or_chunk_size(baseline, data_root, tmp_path):
    _, first = baseline
    second = _run(_context(data_root, tmp_path, batch_size=5, chunk_size=7), max_saved_images=10, grid_count=3)
    for name in METRICS:
        assert second.metrics[name] == pytest.approx(first.metrics[name], rel=1e-6), name
    assert len(list((tmp_path / "image.reconstruction").glob("ref_*.png"))) == 10
    assert sorted(p.name for p in (tmp_path / "image.reconstruction").glob("rec_*.png"))[-1] == "rec_000009.png"
    assert len(second.details["grid"]["best"]) == 3


def test_a_resumed_run_recomputes_only_the_missing_chunk(baseline, data_root, monkeypatch):
    out, first = baseline
    chunks = sorted((out / "cache").glob("reconstruction-*/chunk_*.pt"))
    assert len(chunks) == 3  # 16 + 16 + 8 images
    chunks[1].unlink()
    decoded = []
    real_decode = ImageTokenizer.decode
    monkeypatch.setattr(ImageTokenizer, "decode", lambda self, z: decoded.append(len(z)) or real_decode(self, z))
    resumed = _run(_context(data_root, out), grid_count=0)
    assert sum(decoded) == 16 and chunks[1].is_file()
    assert resumed.metrics == first.metrics
    decoded.clear()
    assert _run(_context(data_root, out), grid_count=0).metrics == first.metrics and not decoded


class _IdentityTokenizer:
    """A perfect tokenizer: its latents are the normalised images themselves."""

    mean, std, image_size = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), SIZE

    def require(self, what):
        pass

    def encode(self, images):
        return images.clone()

    def decode(self, latents):
        return latents.clone()


def test_a_perfect_tokenizer_gets_inf_psnr_ssim_one_lpips_zero_and_rfid_zero(data_root, tmp_path, monkeypatch):
    monkeypatch.setattr(suite, "image_tokenizer", lambda ctx: _IdentityTokenizer())
    result = _run(_context(data_root, tmp_path), grid_count=2)
    assert result.metrics["psnr"] == math.inf  # as the official tool: +inf per exact image, and in the mean
    assert result.details["psnr_identical_images"] == N and result.details["psnr_finite_mean"] is None
    assert result.metrics["ssim"] == pytest.approx(1.0, abs=1e-6)
    assert result.metrics["lpips"] == 0.0
    assert result.metrics["rfid"] == pytest.approx(0.0, abs=1e-3)
    assert result.details["grid"]["worst"][0]["psnr"] == math.inf


def test_missing_weights_stop_before_any_work_with_a_clear_error(data_root, tmp_path, monkeypatch):
    monkeypatch.delenv("UNITOK_FID_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.delenv("UNITOK_LPIPS_VGG16", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    ctx = _context(data_root, tmp_path / "out")
    cfg = suite.ReconstructionConfig(lpips=False, fid_weights=str(tmp_path / "missing.pth"))
    with pytest.raises(FileNotFoundError, match=r"missing\.pth.*pt_inception-2015-12-05-6726825d\.pth.*fid_weights="):
        suite.run(ctx, cfg)
    with pytest.raises(FileNotFoundError, match=r"vgg16-397923af\.pth.*lpips_weights="):
        suite.run(ctx, suite.ReconstructionConfig(fid=False))
    assert not (tmp_path / "out" / "cache").exists()


def test_settings_are_validated_and_the_suite_is_registered():
    from unitok.config import ConfigError, build_config
    from unitok.registry import SUITES

    assert SUITES.get("image.reconstruction") is suite.SUITE
    with pytest.raises(ConfigError, match="fid_method"):
        build_config(suite.ReconstructionConfig, {"fid_method": "svd"})
    cfg = build_config(suite.ReconstructionConfig, {"lpips": False})
    assert cfg.lpips is False and cfg.fid_method == "sqrtm" and cfg.save_images and cfg.grid_count == 8


def _distributed_worker(rank, world_size, init_file, data_root, out):
    init_gloo(rank, world_size, init_file)
    with pytest.MonkeyPatch.context() as mp:
        _patch_inception(mp)
        ctx = _context(data_root, out, dist=DistInfo(rank=rank, world_size=world_size))
        result = _run(ctx)
    record = {"metrics": result.metrics, "grid": "grid" in result.details}
    (Path(out) / f"rank{rank}.json").write_text(json.dumps(record))


def test_two_gloo_processes_give_the_single_process_result(baseline, data_root, tmp_path):
    _, single = baseline
    run_distributed(_distributed_worker, 2, str(data_root), str(tmp_path), timeout_s=120)
    for rank in range(2):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        for name in METRICS:
            assert result["metrics"][name] == pytest.approx(single.metrics[name], rel=1e-6), (rank, name)
        assert result["grid"] == (rank == 0)  # the grid is drawn on the main rank only
    assert len(list((tmp_path / "image.reconstruction").glob("*.png"))) == 2 * N
