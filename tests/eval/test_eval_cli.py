"""`unitok-eval` end to end: list, suites on a checkpoint with result files, compare, errors, torchrun."""

import json
import os
import subprocess
import sys

import pytest

from unitok.eval.cli import main
from unitok.registry import SUITES


def test_list_shows_every_registered_suite_and_its_settings(capsys):
    assert main(["list", "-v"]) == 0
    out = capsys.readouterr().out
    for name in SUITES.names():
        assert name in out
    assert "store_in_checkpoint=False" in out and "templates='auto'" in out


def test_suites_write_results_and_compare_puts_runs_side_by_side(toy_folder, tiny_vtp_dir, tmp_path, capsys):
    common = ["--ckpt", str(tiny_vtp_dir), "--data", str(toy_folder), "--workers", "0", "--no-progress"]
    args = ["image.zeroshot,image.latent_stats", *common, "num_samples=20", "image.zeroshot.templates=simple"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    result = json.loads((tmp_path / "a" / "image.zeroshot.json").read_text())
    assert set(result["metrics"]) == {"image.zeroshot/top1", "image.zeroshot/top5"}
    assert result["protocol"]["templates"] == "simple" and result["protocol"]["num_templates"] == 7
    assert result["checkpoint"]["name"] == "tiny_vtp" and result["data"]["num_samples"] == 24
    assert result["provenance"]["git_sha"] and result["provenance"]["world_size"] == 1
    stats = json.loads((tmp_path / "a" / "image.latent_stats.json").read_text())
    assert stats["data"]["num_samples"] == 20 and (tmp_path / "a" / "latents_stats.pt").is_file()
    summary = (tmp_path / "a" / "summary.md").read_text()
    assert "image.zeroshot" in summary and "image.latent_stats" in summary
    assert main(["image.zeroshot", *common, "--out", str(tmp_path / "b"), "--max-samples", "12"]) == 0
    assert json.loads((tmp_path / "b" / "image.zeroshot.json").read_text())["data"]["num_samples"] == 12
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "cmp"),
                 "--labels", "all,subset"]) == 0  # fmt: skip
    report = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert set(report["metrics"]["image.zeroshot/top1"]) == {"all", "subset"}
    assert "image.latent_stats/std_avg" in report["metrics"]
    assert "num_samples" in (tmp_path / "cmp" / "compare.md").read_text()  # differing sample counts are flagged


def test_bad_invocations_exit_2_with_a_message(toy_folder, tiny_vtp_dir, tmp_path, capsys):
    base = ["--ckpt", str(tiny_vtp_dir), "--out", str(tmp_path), "--workers", "0"]
    assert main(["image.zeroshot", *base, "--data", str(toy_folder), "temperature=3"]) == 2
    assert "no selected suite has a setting 'temperature'" in capsys.readouterr().err
    assert main(["image.zeroshot", *base]) == 2
    assert "needs --data" in capsys.readouterr().err
    assert main(["image.zeroshots", *base, "--data", str(toy_folder)]) == 2
    assert "Did you mean image.zeroshot" in capsys.readouterr().err
    assert main(["image.zeroshot", "--ckpt", str(tmp_path / "nope"), "--data", str(toy_folder)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.json"))


def test_torchrun_two_ranks_give_the_single_process_metrics(toy_folder, tiny_vtp_dir, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    probe = [f"image.linear_probe.{k}" for k in ("resize=32", "crop=32", "n_last_blocks_list=[1,2]", "batch_size=16",
                                                  "epochs=3", "train_views=2")]  # fmt: skip
    knn = [f"image.knn.{k}" for k in ("resize=32", "crop=32", "cache_blocks=2", "ks=[1,5,30]", "query_chunk=7")]
    args = ["image.zeroshot,image.latent_stats,image.linear_probe,image.knn", "--ckpt", str(tiny_vtp_dir), "--data",
            str(toy_folder), "--workers", "0", "--no-progress", "--batch-size", "5", "--chunk-size", "4",
            *probe, *knn]  # fmt: skip
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    subprocess.run([*torchrun, "-m", "unitok.eval.cli", *args, "--out", str(tmp_path / "ddp")], check=True, env=env,
                   capture_output=True, timeout=180)  # fmt: skip
    assert main([*args, "--out", str(tmp_path / "one"), "--batch-size", "8", "--chunk-size", "10"]) == 0
    for suite in ("image.zeroshot", "image.latent_stats", "image.linear_probe", "image.knn"):
        ddp = json.loads((tmp_path / "ddp" / f"{suite}.json").read_text())
        one = json.loads((tmp_path / "one" / f"{suite}.json").read_text())
        assert ddp["provenance"]["world_size"] == 2
        assert ddp["metrics"] == pytest.approx(one["metrics"], rel=1e-5), suite
    # the probe trains data-parallel: each rank held half the features (chunks of 4), every head learnt the same
    ddp, one = (
        json.loads((tmp_path / run / "image.linear_probe.json").read_text())["details"] for run in ("ddp", "one")
    )
    assert ddp["samples_per_rank"] == {"train": [24, 24], "eval": [12, 12]}
    assert one["samples_per_rank"] == {"train": [48], "eval": [24]}
    assert ddp["heads"].keys() == one["heads"].keys() and len(one["heads"]) == 26
    for head, accs in one["heads"].items():
        assert ddp["heads"][head] == pytest.approx(accs, abs=1e-5), head
    assert len({tuple(v) for v in one["heads"].values()}) > 1  # the heads differ: the comparison is not vacuous
    # kNN searches data-parallel: each rank held half the training features, fewer than the 30 neighbours asked for
    ddp, one = (json.loads((tmp_path / run / "image.knn.json").read_text()) for run in ("ddp", "one"))
    assert ddp["details"]["samples_per_rank"] == {"train": [24, 24]} and one["details"]["samples_per_rank"] == {
        "train": [48]}  # fmt: skip
    assert len(set(one["metrics"].values())) > 1  # k matters: the comparison is not vacuous
