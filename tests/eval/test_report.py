"""Result files, summary.md and run comparisons of unitok.eval.report (CPU, no model)."""

import json
import math
import os
import subprocess
import sys

import pytest
from PIL import Image

from unitok.eval import report
from unitok.eval.report import (
    compare,
    compare_main,
    format_metric,
    load_results,
    metric_direction,
    summary_markdown,
    write_result,
)


def _result(suite, metrics, name="vtp", num_samples=50000, protocol=None, **extra):
    return {
        "suite": suite,
        "metrics": {f"{suite}/{k}": v for k, v in metrics.items()},
        "checkpoint": {"path": f"/ckpts/{name}", "name": name, "model_type": "vtp", "kind": "pretrained_dir"},
        "data": {"path": "/data/imagenet/val", "split": "val", "num_samples": num_samples},
        "protocol": protocol if protocol is not None else {"batch_size": 64, "resolution": 256},
        "provenance": {
            "git_sha": "abc123",
            "unitok_version": "0.1.0",
            "torch": "2.11.0",
            "device": "cuda",
            "world_size": 8,
            "created": "2026-11-24T18:00:00Z",
            "elapsed_s": 123.4,
            "command": "unitok-eval image.zeroshot --ckpt /ckpts/vtp",
        },
        **extra,
    }


def test_write_result_round_trip_and_summary(tmp_path):
    zeroshot = _result("image.zeroshot", {"top1": 0.7812, "top5": 0.9301})
    recon = _result(
        "image.reconstruction",
        {"psnr": 21.6, "ssim": 0.71, "rfid": 3.1},
        artifacts={"grid": "image.reconstruction_grid.png", "samples": "audio/sample 1.wav"},
    )
    path = write_result(tmp_path, zeroshot)
    write_result(tmp_path, recon)

    assert path == tmp_path / "image.zeroshot.json"
    on_disk = json.loads(path.read_text())
    assert on_disk["format"] == "unitok-eval/1"
    assert on_disk["metrics"] == {"image.zeroshot/top1": 0.7812, "image.zeroshot/top5": 0.9301}
    assert "format" not in zeroshot  # the caller's dict is left alone
    loaded = load_results(tmp_path)
    assert list(loaded) == ["image.reconstruction", "image.zeroshot"]
    assert loaded["image.reconstruction"]["metrics"] == recon["metrics"]
    assert loaded["image.zeroshot"]["provenance"] == zeroshot["provenance"]

    summary = (tmp_path / "summary.md").read_text()
    assert summary.startswith("# Evaluation summary: vtp")
    assert "/ckpts/vtp" in summary
    assert "| top1 ↑ | 78.12% |" in summary and "| top5 ↑ | 93.01% |" in summary
    assert "| psnr ↑ | 21.60 |" in summary and "| rfid ↓ | 3.100 |" in summary
    assert "50,000 samples" in summary and "`/data/imagenet/val`" in summary
    assert "batch_size=64" in summary and "git `abc123`" in summary and "cuda × 8" in summary
    assert "2 min 3 s" in summary
    assert "![image.reconstruction grid](image.reconstruction_grid.png)" in summary
    assert "[samples](audio/sample%201.wav)" in summary  # linked, not embedded
    assert "![image.reconstruction samples]" not in summary


def test_nan_metric_is_stored_as_null_and_read_back_as_nan(tmp_path):
    path = write_result(tmp_path, _result("image.knn", {"top1": float("nan"), "top5": 0.5}))
    assert json.loads(path.read_text())["metrics"]["image.knn/top1"] is None
    value = load_results(tmp_path)["image.knn"]["metrics"]["image.knn/top1"]
    assert math.isnan(value)
    assert "| top1 ↑ | NaN |" in (tmp_path / "summary.md").read_text()


def test_infinite_metric_is_stored_as_text_and_read_back(tmp_path):
    path = write_result(tmp_path, {"suite": "image.reconstruction", "metrics": {"image.reconstruction/psnr": math.inf}})
    assert json.loads(path.read_text())["metrics"]["image.reconstruction/psnr"] == "inf"  # strict JSON
    assert load_results(tmp_path)["image.reconstruction"]["metrics"]["image.reconstruction/psnr"] == math.inf


@pytest.mark.parametrize(
    ("metrics", "message"),
    [
        ({"image.knn/top1": 0.5, "top5": 0.9}, "'top5'"),
        ({"image.zeroshot/top1": 0.5}, "'image.zeroshot/top1'"),
        ({"image.knn/top1": "0.5"}, "'image.knn/top1' must be a number"),
        ({"image.knn/top1": True}, "'image.knn/top1' must be a number"),
    ],
)
def test_write_result_rejects_bad_metrics_and_writes_nothing(tmp_path, metrics, message):
    with pytest.raises(ValueError, match=message):
        write_result(tmp_path, {"suite": "image.knn", "metrics": metrics})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("suite", ["", "../evil", "image/knn", None])
def test_write_result_rejects_bad_suite_names(tmp_path, suite):
    with pytest.raises(ValueError, match="suite"):
        write_result(tmp_path, {"suite": suite, "metrics": {}})


def test_write_is_atomic_and_leaves_other_files_alone(tmp_path, monkeypatch):
    (tmp_path / "notes.txt").write_text("keep me")
    (tmp_path / "config.json").write_text('{"lr": 0.1}')
    first = write_result(tmp_path, _result("image.knn", {"top1": 0.5}))
    before = first.read_bytes()

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(report.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        write_result(tmp_path, _result("image.knn", {"top1": 0.9}))
    monkeypatch.undo()

    assert first.read_bytes() == before  # the old result survives a failed write intact
    assert (tmp_path / "notes.txt").read_text() == "keep me"
    assert (tmp_path / "config.json").read_text() == '{"lr": 0.1}'
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]

    write_result(tmp_path, _result("image.linear_probe", {"top1": 0.6}))
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["config.json", "image.knn.json", "image.linear_probe.json", "notes.txt", "summary.md"]


def test_load_results_ignores_foreign_json_and_compare_json(tmp_path):
    write_result(tmp_path, _result("image.knn", {"top1": 0.5}))
    (tmp_path / "config.json").write_text('{"lr": 0.1, "metrics": {"loss": 1.0}}')
    (tmp_path / "list.json").write_text("[1, 2, 3]")
    (tmp_path / "compare.json").write_text(json.dumps({"suite": "image.other", "metrics": {"image.other/x": 0.1}}))
    (tmp_path / "image.knn.old.json").write_text(json.dumps({"suite": "image.knn", "metrics": {"top1": 0.2}}))
    (tmp_path / "hand.json").write_text(json.dumps({"suite": "image.latent_stats", "metrics": {"mean": 0.1}}))
    results = load_results(tmp_path)
    assert sorted(results) == ["image.knn", "image.latent_stats"]
    assert results["image.knn"]["metrics"] == {"image.knn/top1": 0.5}  # <suite>.json wins over a renamed copy
    assert results["image.latent_stats"]["metrics"] == {"image.latent_stats/mean": 0.1}  # prefix added


@pytest.mark.parametrize(
    "text",
    [
        '{"format": "unitok-eval/1", "suite": "image.knn"}',
        '{"format": "unitok-eval/1", "suite": "image.knn", "metrics": {"image.knn/top1": "high"}}',
        '{"format": "unitok-eval/1", "suite": "image.knn", "metr',
    ],
)
def test_broken_result_file_is_an_error_naming_the_file(tmp_path, text):
    (tmp_path / "image.knn.json").write_text(text)
    with pytest.raises(ValueError, match="image.knn.json"):
        load_results(tmp_path)
    # write_result still saves a new suite; the summary skips the broken file with a warning
    with pytest.warns(UserWarning, match="image.knn.json"):
        write_result(tmp_path, _result("image.zeroshot", {"top1": 0.5}))
    assert "image.zeroshot" in (tmp_path / "summary.md").read_text()


@pytest.mark.parametrize(
    ("key", "direction"),
    [
        ("image.zeroshot/top1", "higher"),
        ("image.knn/knn_top5", "higher"),
        ("image.linear_probe/acc", "higher"),
        ("image.reconstruction/psnr", "higher"),
        ("image.reconstruction/ssim", "higher"),
        ("image.reconstruction/lpips", "lower"),
        ("image.reconstruction/rfid", "lower"),
        ("image.generation/fid50k", "lower"),
        ("speech.reconstruction/si_sdr", "higher"),
        ("speech.reconstruction/pesq", "higher"),
        ("speech.reconstruction/stoi", "higher"),
        ("speech.reconstruction/mel_distance", "lower"),
        ("speech.reconstruction/stft_distance_mean", "lower"),
        ("speech.speaker_similarity/sim", "higher"),
        ("speech.speaker_similarity/speaker_similarity", "higher"),
        ("speech.intelligibility/wer", "lower"),
        ("speech.intelligibility/cer", "lower"),
        ("image.latent_stats/mean", None),
        ("image.latent_stats/std", None),
        ("image.latent_stats/sim_std", None),
        ("image.latent_stats/channel_kurtosis", None),
    ],
)
def test_metric_direction(key, direction):
    assert metric_direction(key) == direction


@pytest.mark.parametrize(
    ("key", "value", "text"),
    [
        ("image.zeroshot/top1", 0.78125, "78.12%"),
        ("image.linear_probe/acc", 1.0, "100.00%"),
        ("image.zeroshot/top1", 3.5, "3.500"),  # not a fraction: no percent
        ("image.reconstruction/psnr", 21.6, "21.60"),
        ("image.reconstruction/lpips", 0.123456, "0.1235"),
        ("image.reconstruction/rfid", 123.456, "123.5"),
        ("image.latent_stats/mean", -0.0001234, "-1.234e-04"),
        ("image.latent_stats/count", 50000, "50,000"),
        ("image.reconstruction/ssim", float("nan"), "NaN"),
    ],
)
def test_format_metric(key, value, text):
    assert format_metric(key, value) == text


def _three_runs(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    write_result(a, _result("image.reconstruction", {"psnr": 21.6, "rfid": 3.1, "lpips": 0.12}))
    write_result(a, _result("image.zeroshot", {"top1": 0.5}))
    write_result(b, _result("image.reconstruction", {"psnr": 23.1, "rfid": 2.5}, num_samples=10000))
    write_result(b, _result("speech.intelligibility", {"wer": 0.031}))
    recon_c = _result("image.reconstruction", {"psnr": 20.0, "rfid": 1.9}, protocol={"batch_size": 32})
    del recon_c["checkpoint"]
    write_result(c, recon_c)
    return [a, b, c]


def test_compare_three_runs(tmp_path):
    dirs = _three_runs(tmp_path)
    out = tmp_path / "cmp"
    result = compare(dirs, out_dir=out)

    labels = [r["label"] for r in result["runs"]]
    assert labels == ["vtp (a)", "vtp (b)", "c"]  # same checkpoint name: made unique; no checkpoint: dir name
    assert result["runs"][0]["dir"] == str(dirs[0].resolve())
    assert result["runs"][0]["checkpoint"]["path"] == "/ckpts/vtp" and result["runs"][2]["checkpoint"] == {}
    assert list(result["metrics"]) == [
        "image.reconstruction/lpips",
        "image.reconstruction/psnr",
        "image.reconstruction/rfid",
        "image.zeroshot/top1",
        "speech.intelligibility/wer",
    ]
    assert result["metrics"]["image.reconstruction/psnr"] == {"vtp (a)": 21.6, "vtp (b)": 23.1, "c": 20.0}
    assert result["metrics"]["image.reconstruction/lpips"] == {"vtp (a)": 0.12}  # missing runs left out
    diffs = result["protocol_differences"]
    assert set(diffs) == {"image.reconstruction"}
    assert diffs["image.reconstruction"]["data.num_samples"] == {"vtp (a)": 50000, "vtp (b)": 10000, "c": 50000}
    assert diffs["image.reconstruction"]["batch_size"] == {"vtp (a)": 64, "vtp (b)": 64, "c": 32}
    assert "resolution" in diffs["image.reconstruction"]  # c has none
    assert json.loads((out / "compare.json").read_text()) == result

    md = (out / "compare.md").read_text()
    assert "| metric | vtp (a) | vtp (b) | c |" in md
    assert "| psnr ↑ | 21.60 | **23.10** | 20.00 |" in md  # higher is better
    assert "| rfid ↓ | 3.100 | 2.500 | **1.900** |" in md  # lower is better
    assert "| lpips ↓ | 0.1200 | – | – |" in md  # a single value is not "best"
    assert "| top1 ↑ | 50.00% | – | – |" in md and "| wer ↓ | – | 0.03100 | – |" in md
    assert md.index("## image.reconstruction") < md.index("## image.zeroshot") < md.index("## speech.intelligibility")
    assert "- vtp (b): 10,000 samples, checkpoint `/ckpts/vtp`" in md
    warning = next(line for line in md.splitlines() if line.startswith("> **Warning:**"))
    assert "image.reconstruction" in warning and "`data.num_samples`" in warning and "`batch_size`" in warning
    assert md.count("> **Warning:**") == 1

    assert sorted(result["plots"]) == [
        "compare_image.reconstruction.png",
        "compare_image.zeroshot.png",
        "compare_speech.intelligibility.png",
    ]
    for name in result["plots"]:
        with Image.open(out / name) as img:
            assert img.format == "PNG" and img.width > 200
            img.verify()
    # compare.json in a result directory is never read back as a result
    compare(dirs, out_dir=dirs[0], plots=False)
    assert sorted(load_results(dirs[0])) == ["image.reconstruction", "image.zeroshot"]


def test_compare_labels(tmp_path):
    dirs = _three_runs(tmp_path)
    assert [r["label"] for r in compare(dirs, labels=["x", "y", "z"])["runs"]] == ["x", "y", "z"]
    assert [r["label"] for r in compare(dirs, labels=["x", "x", "z"])["runs"]] == ["x (a)", "x (b)", "z"]
    assert [r["label"] for r in compare([dirs[0], dirs[0]])["runs"]] == ["vtp (a)", "vtp (a)-2"]
    with pytest.raises(ValueError, match="2 labels for 3"):
        compare(dirs, labels=["x", "y"])


def test_compare_without_matplotlib_skips_plots(tmp_path, monkeypatch, capsys):
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)
    result = compare(_three_runs(tmp_path), out_dir=tmp_path / "cmp")
    assert result["plots"] == []
    assert capsys.readouterr().out.count("matplotlib is not installed") == 1
    assert sorted(p.name for p in (tmp_path / "cmp").iterdir()) == ["compare.json", "compare.md"]


def test_compare_main_prints_the_table_and_honours_no_plots(tmp_path, capsys):
    dirs = _three_runs(tmp_path)
    out = tmp_path / "cmp"
    code = compare_main([*map(str, dirs), "--out", str(out), "--labels", "a, b,c", "--no-plots"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "| psnr ↑ | 21.60 | **23.10** | 20.00 |" in printed and "| metric | a | b | c |" in printed
    assert f"Wrote 2 files to {out}" in printed
    assert sorted(p.name for p in out.iterdir()) == ["compare.json", "compare.md"]


def test_compare_main_errors_exit_2_on_stderr(tmp_path, capsys):
    dirs = _three_runs(tmp_path)
    assert compare_main([str(dirs[0]), str(tmp_path / "nope"), "--out", str(tmp_path / "cmp")]) == 2
    captured = capsys.readouterr()
    assert "nope" in captured.err and "not found" in captured.err and captured.out == ""
    (tmp_path / "empty").mkdir()
    assert compare_main([str(dirs[0]), str(tmp_path / "empty"), "--out", str(tmp_path / "cmp")]) == 2
    assert "holds no evaluation results" in capsys.readouterr().err
    assert compare_main([*map(str, dirs), "--labels", "x,y", "--out", str(tmp_path / "cmp")]) == 2
    assert "2 labels for 3" in capsys.readouterr().err
    assert not (tmp_path / "cmp").exists()


def test_compare_main_help_shows_examples(capsys):
    with pytest.raises(SystemExit) as exit_info:
        compare_main(["--help"])
    assert exit_info.value.code == 0
    assert "unitok-eval compare runs/vtp_l/eval runs/ae_only/eval" in capsys.readouterr().out


def test_summary_markdown_warns_about_mixed_checkpoints():
    results = {
        "image.knn": _result("image.knn", {"top1": 0.5}, name="a"),
        "image.zeroshot": _result("image.zeroshot", {"top1": 0.6}, name="b"),
    }
    md = summary_markdown(results)
    assert "2 different checkpoints" in md and "Checkpoint: b at `/ckpts/b`" in md


def test_importing_report_imports_no_plotting_library():
    code = "import sys, unitok.eval.report; assert 'matplotlib' not in sys.modules"
    env = {**os.environ, "MPLBACKEND": "Agg"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_compare_nan_is_shown_and_never_best(tmp_path):
    write_result(tmp_path / "a", _result("image.reconstruction", {"ssim": float("nan"), "psnr": 20.0}))
    write_result(tmp_path / "b", _result("image.reconstruction", {"ssim": 0.5, "psnr": 21.0}, name="ae"))
    write_result(tmp_path / "c", _result("image.reconstruction", {"ssim": 0.4}, name="ours"))
    result = compare([tmp_path / d for d in "abc"], out_dir=tmp_path / "cmp", plots=False)
    assert result["metrics"]["image.reconstruction/ssim"] == {"vtp": None, "ae": 0.5, "ours": 0.4}
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| ssim ↑ | NaN | **0.5000** | 0.4000 |" in md and "| psnr ↑ | 20.00 | **21.00** | – |" in md
