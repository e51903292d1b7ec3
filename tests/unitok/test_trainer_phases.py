"""Trainer options for GAN-style tasks: the auxiliary phase first (DAC order), exponential lr, EMA warm-up."""

import math

import pytest
import torch
from torch import nn

from unitok.config import ConfigError, build_config
from unitok.engine.optim import OptimConfig, lr_schedule
from unitok.engine.task import Task
from unitok.engine.trainer import TrainConfig, Trainer


class _Pairs(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 16

    def __getitem__(self, i: int) -> dict:
        return {"x": torch.full((4,), float(i))}


class _TwoPhase(Task):
    """Records the order of its phases and what the cache carries between them."""

    trainable = ("gen", "disc")
    aux_trainable = ("disc",)

    def __init__(self, aux_first: bool):
        super().__init__()
        self.gen, self.disc = nn.Linear(4, 4), nn.Linear(4, 1)
        self.aux_optim, self.aux_first = OptimConfig(lr=0.1), aux_first
        self.calls: list[tuple[str, int, dict]] = []

    def training_forward(self, batch, step, cache):
        self.calls.append(("main", step, dict(cache)))
        out = self.call("gen", batch["x"])
        cache["fake"] = out.detach()
        return self.call("disc", out).mean(), {}

    def aux_active(self, step: int) -> bool:
        return step >= 1

    def aux_forward(self, batch, step, cache):
        self.calls.append(("aux", step, dict(cache)))
        cache["from_aux"] = step
        return self.call("disc", batch["x"]).square().mean(), {"d": 1.0}


@pytest.mark.parametrize("aux_first", [False, True])
def test_phase_order_and_cache(aux_first):
    task = _TwoPhase(aux_first)
    cfg = TrainConfig(steps=3, batch_size=2, precision="fp32", device="cpu", progress=False)
    trainer = Trainer(task, _Pairs(), None, OptimConfig(lr=0.1), cfg, None)
    batches = trainer._batches()
    for _ in range(3):
        trainer.train_step(batches)
    order = [(name, step) for name, step, _ in task.calls]
    if aux_first:  # step 0: no auxiliary phase; then the auxiliary phase first, its cache reaching the main phase
        assert order == [("main", 0), ("aux", 1), ("main", 1), ("aux", 2), ("main", 2)]
        assert task.calls[2][2] == {"from_aux": 1} and task.calls[1][2] == {}
    else:
        assert order == [("main", 0), ("main", 1), ("aux", 1), ("main", 2), ("aux", 2)]
        assert set(task.calls[2][2]) == {"fake"}


def test_exponential_schedule_is_torch_exponential_lr():
    cfg = OptimConfig(lr=1e-4, schedule="exponential", gamma=0.999996)
    lr_at = lr_schedule(cfg, total_steps=10)
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1e-4)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.999996)
    for step in range(5):
        assert lr_at(step) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12)
        opt.step()
        sched.step()
    assert lr_at(600_000) == pytest.approx(1e-4 * math.exp(600_000 * math.log(0.999996)))
    warm = lr_schedule(OptimConfig(lr=1.0, schedule="exponential", gamma=0.5, warmup_steps=3), 10)
    assert [warm(s) for s in range(5)] == [0.0, 0.5, 1.0, 1.0, 0.5]
    with pytest.raises(ConfigError, match="schedule must be one of"):
        build_config(OptimConfig, {"schedule": "linear"})
    with pytest.raises(ConfigError, match="gamma"):
        build_config(OptimConfig, {"gamma": 1.5})


def test_ema_warmup_follows_timm_and_ema_pytorch():
    task = _TwoPhase(aux_first=False)
    cfg = TrainConfig(steps=3, batch_size=2, precision="fp32", device="cpu", progress=False, ema_decay=0.99999,
                      ema_warmup_gamma=10**-1.5)  # fmt: skip
    ema = Trainer(task, _Pairs(), None, OptimConfig(), cfg, None).ema
    assert ema.use_warmup
    for step in (10, 1000, 600_000):  # 1 - (1 + s/gamma)^(-2/3), capped at ema_decay
        want = min(0.99999, 1 - (1 + (step - 1) / 10**-1.5) ** (-2 / 3))
        assert ema.get_decay(step) == pytest.approx(want)
    plain = Trainer(task, _Pairs(), None, OptimConfig(), TrainConfig(ema_decay=0.9, device="cpu"), None).ema
    assert not plain.use_warmup and plain.get_decay(10) == 0.9
