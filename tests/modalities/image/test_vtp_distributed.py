"""Stage-1 VTP under DDP and FSDP2 (2 gloo processes): the trainable 0-d logit scale, the sharded EMA teacher,
the EMA model, checkpoints and resume."""

import math
from pathlib import Path

import pytest
import torch

from unitok.engine.logging import read_metrics
from unitok.testing import init_gloo, run_distributed
from unitok.train import build_run, load_run_config

RECIPE = Path(__file__).resolve().parents[3] / "recipes" / "debug" / "image_tiny.yaml"
BASE = ["train.steps=2", "train.progress=false", "train.log_every=1", "train.ckpt_every=100", "train.ema_decay=0.9"]
BASE += ["data.params.num_samples=8", "optim.warmup_steps=0", "optim.eps=1.0e-6"]  # eps: fp32 noise on 0 gradients
BASE += ["task.params.freeze_last_layer_steps=1"]
BASE += ["model.overrides.vision_depth=1", "model.overrides.decoder_depth=1", "model.overrides.text_depth=1"]
BASE += ["task.params.head_prototypes=64", "task.params.head_hidden=32", "task.params.head_bottleneck=16"]
# one process with batch 4 == 2 ranks with batch 2 only for the rank-independent terms: KoLeo is per rank (as in
# DINOv2), and iBOT masks and SSL / reconstruction subsets are drawn per rank
EXACT = ["task.params.ssl_batch=0", "task.params.rec_batch=0", "losses.terms.ibot.weight=0"]
EXACT += ["losses.terms.koleo.weight=0"]
# every objective (SigLIP with its 0-d logit bias, DINO, iBOT, KoLeo, L1 on a subset): DDP and FSDP2 make the same
# per-rank draws
FULL = ["task.params.ssl_batch=0", "task.params.rec_batch=1", "task.params.contrastive=siglip"]
FULL += ["model.overrides.init_logit_bias=-10.0"]


def _run(run_dir, *extra, info=None):
    torch.manual_seed(0)
    return build_run(load_run_config(RECIPE, [*BASE, f"run_dir={run_dir}", *extra]), info)


def _weights(trainer) -> dict[str, dict[str, torch.Tensor]]:
    """Full tensors of the trainable modules, the teacher and the exported EMA model (collective under FSDP)."""
    sd = trainer.state_dict()
    teacher = {k: v for k, v in sd["task_rest"].items() if k.startswith("teacher.")}
    return {"trainable": sd["trainable"], "teacher": teacher, "ema": trainer.export_state_dict()}


def _worker(rank, world_size, init_file, out):
    init_gloo(rank, world_size, init_file)
    from torch.distributed.fsdp import FSDPModule

    from unitok.engine.distributed import DistInfo

    info = DistInfo(rank=rank, world_size=world_size)
    results = {}
    for name, strategy, extra in [("exact", "fsdp", EXACT), ("ddp", "ddp", FULL)]:
        trainer, task = _run(f"{out}/{name}", "train.batch_size=2", f"train.strategy={strategy}", *extra, info=info)
        if strategy == "fsdp":
            assert isinstance(task.student, FSDPModule) and isinstance(task.teacher, FSDPModule)
            scale = task.student.model.logit_scale
            assert type(scale) is torch.nn.Parameter and scale.ndim == 0 and scale.requires_grad
        trainer.fit()
        results[name] = _weights(trainer)
        scale = task.student.model.logit_scale.detach().clone()
        gathered = [torch.empty_like(scale) for _ in range(world_size)]
        torch.distributed.all_gather(gathered, scale)
        assert torch.equal(gathered[0], gathered[1]), "the logit scale drifted apart between ranks"
    model = task.student.model
    assert model.logit_bias is not None and model.logit_bias.ndim == 0 and model.logit_bias.requires_grad
    # every objective under FSDP2, killed after step 1 and resumed from its checkpoint
    for until in (1, None):
        trainer, _ = _run(f"{out}/fsdp", "train.batch_size=2", "train.strategy=fsdp", "train.ckpt_every=1", *FULL,
                          info=info)  # fmt: skip
        trainer.fit(until=until)
    results["fsdp"] = _weights(trainer)
    if rank == 0:
        torch.save(results, f"{out}/results.pt")


def _close(got: dict, want: dict, what: str, atol: float = 1e-5) -> None:
    for part, ref in want.items():
        assert ref.keys() == got[part].keys() and ref, (what, part)
        for k, v in ref.items():
            assert got[part][k].shape == v.shape and torch.allclose(got[part][k], v, atol=atol), (what, part, k)


def test_ddp_and_fsdp2_match_one_process_with_a_trainable_0d_logit_scale(tmp_path):
    run_distributed(_worker, 2, str(tmp_path), timeout_s=120)
    got = torch.load(tmp_path / "results.pt", weights_only=False)
    trainer, _ = _run(tmp_path / "single", "train.batch_size=4", *EXACT)
    trainer.fit()
    single = _weights(trainer)
    scale = "student.model.logit_scale"
    assert single["trainable"][scale].ndim == 0 and single["ema"]["logit_scale"].ndim == 0  # official layout
    assert abs(single["trainable"][scale].item() - math.log(1 / 0.07)) > 1e-4  # it trained
    _close(got["exact"], single, "fsdp vs one process")
    want = read_metrics(tmp_path / "single" / "metrics.jsonl")[-1]
    have = read_metrics(tmp_path / "exact" / "metrics.jsonl")[-1]
    for key in ("loss", "clip_loss", "dino_loss", "rec_l1_loss", "grad_norm"):  # grad norm: clipping is active
        assert have[key] == pytest.approx(want[key], rel=1e-5), key
    _close(got["fsdp"], got["ddp"], "fsdp, resumed after step 1, vs ddp, every objective")
    bias = got["fsdp"]["trainable"]["student.model.logit_bias"]
    assert bias.ndim == 0 and bias != -10.0 and got["fsdp"]["ema"]["logit_bias"].ndim == 0
    rows = read_metrics(tmp_path / "fsdp" / "metrics.jsonl")
    assert any("resumed from step_00000001" in str(r.get("event", "")) for r in rows)
    assert all(f"{k}_loss" in rows[-1] for k in ("clip", "dino", "ibot", "koleo", "rec_l1"))
