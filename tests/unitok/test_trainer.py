"""The trainer: exact resume after SIGKILL, gradient accumulation, the non-finite guard, the run directory."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from unitok.engine.logging import read_metrics
from unitok.engine.trainer import Trainer
from unitok.train import build_run, load_run_config

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "recipes" / "debug" / "ae_tiny.yaml"
QUICK = ["train.steps=16", "train.ckpt_every=2", "train.log_every=2", "train.progress=false"]
QUICK += ["data.params.num_samples=160", "model.overrides.encoder.depth=1", "model.overrides.decoder.depth=1"]


def _train_cmd(run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "unitok.train", str(RECIPE), f"run_dir={run_dir}", *QUICK, *extra]


def _write_shards(folder: Path, n_shards: int = 4, per_shard: int = 12) -> str:
    """img2dataset-style tar shards (``key.png`` + ``key.txt``), the last sample of each a corrupt image."""
    import io
    import tarfile

    from PIL import Image

    folder.mkdir()
    for s in range(n_shards):
        with tarfile.open(folder / f"{s:05d}.tar", "w") as tar:
            for i in range(per_shard):
                buf = io.BytesIO()
                Image.new("RGB", (40, 32), (60 * s % 256, 20 * i % 256, 128)).save(buf, "PNG")
                image = buf.getvalue() if i < per_shard - 1 else b"corrupt"
                for ext, payload in (("png", image), ("txt", f"shard {s} sample {i}".encode())):
                    info = tarfile.TarInfo(f"{s:05d}{i:04d}.{ext}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
    return str(folder / f"{{00000..{n_shards - 1:05d}}}.tar")


@pytest.mark.parametrize("data", ["toy_shapes", "webdataset"])
def test_run_killed_at_any_moment_resumes_to_the_same_weights(tmp_path, data):
    ref_dir, killed_dir = tmp_path / "ref", tmp_path / "killed"
    extra = []
    if data == "webdataset":  # streaming shards read by 2 DataLoader workers, shuffle buffer: the position resumes
        shards = _write_shards(tmp_path / "shards")
        extra = ["data.name=webdataset", "data.params.num_samples=null", f"data.params.shards={shards}",
                 "data.params.shuffle_buffer=6", "train.num_workers=2"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(_train_cmd(ref_dir, *extra), check=True, env=env, capture_output=True, timeout=120)
    proc = subprocess.Popen(
        _train_cmd(killed_dir, *extra), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    latest = killed_dir / "checkpoints" / "latest"
    deadline = time.monotonic() + 120
    while not (latest.exists() and "step_00000006" <= latest.read_text().strip()) and time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail("the training run ended before it could be killed")
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed_dir / "model").exists(), "the run finished before the kill; the test proves nothing"
    subprocess.run(_train_cmd(killed_dir, *extra), check=True, env=env, capture_output=True, timeout=120)
    ref = load_file(ref_dir / "model" / "model.safetensors")
    resumed = load_file(killed_dir / "model" / "model.safetensors")
    assert ref.keys() == resumed.keys()
    for k in ref:
        assert torch.equal(ref[k], resumed[k]), k
    rows = read_metrics(killed_dir / "metrics.jsonl")
    assert any("resumed from" in str(r.get("event", "")) for r in rows)
    assert (killed_dir / "config.yaml").is_file() and (killed_dir / "git.txt").read_text().strip()


def _trainer(tmp_path, *overrides):
    cfg = load_run_config(RECIPE, [*QUICK, f"run_dir={tmp_path}", *overrides])
    torch.manual_seed(0)
    return build_run(cfg)


def test_gradient_accumulation_equals_the_large_batch(tmp_path):
    big, _ = _trainer(tmp_path / "a", "train.batch_size=8", "train.grad_accum=1", "train.steps=1")
    small, _ = _trainer(tmp_path / "b", "train.batch_size=4", "train.grad_accum=2", "train.steps=1")
    big.fit()
    small.fit()
    for (name, a), b in zip(
        big.task.student.state_dict().items(), small.task.student.state_dict().values(), strict=True
    ):
        assert torch.allclose(a, b, atol=1e-6), name


class _NaNAt:
    """Wraps a task's forward to return a NaN loss at chosen (0-based) calls."""

    def __init__(self, task, bad_calls):
        self.forward, self.bad, self.calls = task.training_forward, set(bad_calls), 0

    def __call__(self, batch, step):
        loss, report = self.forward(batch, step)
        self.calls += 1
        if self.calls - 1 in self.bad:
            loss = loss * float("nan")
            report = {**report, "loss": float("nan")}
        return loss, report


def test_nonfinite_steps_are_skipped_then_rolled_back(tmp_path):
    trainer, task = _trainer(tmp_path, "train.steps=8", "train.max_consecutive_nonfinite=2", "train.ckpt_every=4")
    # calls 0-4 make steps 1-5 (checkpoint at 4); calls 5 and 6 fail -> roll back to step 4 and redo steps 5-8
    forward = _NaNAt(task, bad_calls={5, 6})
    task.training_forward = forward
    trainer.fit()
    assert trainer.state.step == 8
    assert trainer.state.skipped_steps == 2 and trainer.state.rollbacks == 1 and forward.calls == 5 + 2 + 4
    events = [r["event"] for r in read_metrics(tmp_path / "metrics.jsonl") if "event" in r]
    assert any("rolled back to step_00000004.pt" in e for e in events), events
    assert all(torch.isfinite(p).all() for p in task.student.parameters())


def test_nonfinite_without_checkpoint_stops_with_a_message(tmp_path):
    trainer, task = _trainer(tmp_path, "train.steps=4", "train.max_consecutive_nonfinite=1", "train.ckpt_every=100")
    task.training_forward = _NaNAt(task, bad_calls={0})
    with pytest.raises(FloatingPointError, match="no checkpoint to roll back to"):
        trainer.fit()


def test_bad_recipe_is_reported(tmp_path, capsys):
    from unitok.train import main

    with pytest.raises(SystemExit):
        main([str(RECIPE), "train.stpes=3"])
    assert "did you mean train.steps" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(tmp_path / "nope.yaml")])
    assert isinstance(Trainer, type)


def test_torchrun_ddp_and_fsdp2_match_the_single_process_run(tmp_path):
    """2 CPU processes (gloo) with batch 4 each = 1 process with batch 8: same samples, same averaged gradient."""
    base = ["train.steps=3", "train.ema_decay=0.9", "data.params.num_samples=48", *QUICK[2:]]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = [sys.executable, "-m", "unitok.train", str(RECIPE), *base, "train.batch_size=8"]
    subprocess.run([*single, f"run_dir={tmp_path / 'single'}"], check=True, env=env, capture_output=True, timeout=120)
    ref = load_file(tmp_path / "single" / "model" / "model.safetensors")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    for strategy in ("ddp", "fsdp"):
        run_dir = tmp_path / strategy
        cmd = [*torchrun, "-m", "unitok.train", str(RECIPE), *base, "train.batch_size=4", f"train.strategy={strategy}"]
        subprocess.run([*cmd, f"run_dir={run_dir}"], check=True, env=env, capture_output=True, timeout=120)
        got = load_file(run_dir / "model" / "model.safetensors")
        for k in ref:
            assert torch.allclose(got[k], ref[k], atol=1e-6), (strategy, k)
        assert read_metrics(run_dir / "metrics.jsonl")[-1]["loss"] == pytest.approx(
            read_metrics(tmp_path / "single" / "metrics.jsonl")[-1]["loss"], rel=1e-5
        )
