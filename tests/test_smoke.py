"""End-to-end runs of the entry points (console scripts as installed, and the demo on the parity checkpoint)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def test_demo_writes_png_and_summary(vtp_parity_dir, tmp_path, capsys):
    from unitok.modalities.image.demo import main

    main(["--ckpt", str(vtp_parity_dir), "--out", str(tmp_path), "--images", "4"])
    printed = capsys.readouterr().out
    assert "latents      shape (4, 8, 4, 4)" in printed and "PSNR" in printed
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["latents"]["shape"] == [4, 8, 4, 4] and len(summary["captions"]) == 4
    from PIL import Image

    w, h = Image.open(tmp_path / "reconstructions.png").size
    assert (w, h) == (4 * 64 + 5 * 2, 2 * 64 + 3 * 2)


def test_demo_reports_a_missing_checkpoint(tmp_path, capsys):
    from unitok.modalities.image.demo import main

    with pytest.raises(SystemExit) as e:
        main(["--ckpt", str(tmp_path / "nothing")])
    assert e.value.code == 2 and "does not exist" in capsys.readouterr().err


def test_console_scripts_are_installed():
    exe = shutil.which("unitok-demo", path=str(Path(sys.executable).parent)) or shutil.which("unitok-demo")
    assert exe, "unitok-demo is not on PATH: is the package installed (pip install -e .)?"
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, check=True).stdout
    assert "examples:" in out and "--ckpt" in out
