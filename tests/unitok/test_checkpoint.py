import random

import numpy as np
import pytest
import torch

from unitok.engine.checkpoint import (
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)


def test_save_rotate_and_find_latest(tmp_path):
    for step in (10, 20, 30):
        save_checkpoint(tmp_path, step, {"step": step, "w": torch.full((2,), float(step))}, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000020.pt", "step_00000030.pt"]
    latest = latest_checkpoint(tmp_path)
    assert latest.name == "step_00000030.pt" and load_checkpoint(latest)["step"] == 30
    assert not list(tmp_path.glob("*.tmp"))


def test_latest_falls_back_when_the_pointer_is_stale(tmp_path):
    save_checkpoint(tmp_path, 1, {"step": 1})
    (tmp_path / "latest").write_text("step_00000099.pt\n")
    assert latest_checkpoint(tmp_path).name == "step_00000001.pt"
    assert latest_checkpoint(tmp_path / "none") is None


def test_unreadable_checkpoint_is_named(tmp_path):
    (tmp_path / "step_00000005.pt").write_bytes(b"\x80\x02garbage")
    with pytest.raises(ValueError, match="cannot be read"):
        load_checkpoint(tmp_path / "step_00000005.pt")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


def test_rng_round_trip():
    state = rng_state()
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a


def test_exported_weights_are_the_ema_else_the_prefixed_trainables():
    from unitok.engine.checkpoint import exported_weights

    w, e = torch.ones(2), torch.zeros(2)
    trainable = {"student.model.a": w, "student.head.b": e}
    assert exported_weights({"trainable": trainable, "ema": None}, "student.model.") == {"a": w}
    assert exported_weights({"trainable": trainable, "ema": {"a": e}}, "student.model.") == {"a": e}
    with pytest.raises(ValueError, match=r"run.pt holds no weights under 'teacher.' \(keys: \['student.model.a'"):
        exported_weights({"trainable": trainable}, "teacher.", "run.pt")
