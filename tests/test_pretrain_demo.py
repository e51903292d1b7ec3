"""The pre-training demo end to end on a few steps (the full budget runs in `make demo`)."""

import json

from unitok.modalities.image.pretrain_demo import main


def test_demo_trains_both_runs_and_reports(tmp_path, capsys):
    main(
        [
            "--steps",
            "3",
            "--out",
            str(tmp_path),
            "--probe-train",
            "96",
            "--val",
            "48",
            "--set",
            "model.overrides.decoder_depth=1",
        ]
    )
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results) == {"vtp", "ae_only"}
    assert "zero_shot_top1" in results["vtp"] and "zero_shot_top1" not in results["ae_only"]
    for r in results.values():
        assert 0 <= r["linear_probe_top1"] <= 1 and r["psnr_db"] > 5 and r["steps"] == 3
    for run in ("vtp", "ae_only"):  # --set reaches every run
        assert json.loads((tmp_path / run / "model" / "config.json").read_text())["decoder_depth"] == 1
    assert (tmp_path / "reconstructions.png").is_file() and (tmp_path / "vtp" / "model" / "config.json").is_file()
    out = capsys.readouterr().out
    assert "zero-shot" in out and "ae_only" in out
