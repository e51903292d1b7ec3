"""Stage 2 (GAN fine-tuning of the pixel decoder): recipes end to end, phase isolation, frozen encoder, resume,
DDP / FSDP2 with the discriminator wrapped."""

from pathlib import Path

import pytest
import torch

import unitok
from unitok.engine.logging import read_metrics
from unitok.testing import init_gloo, run_distributed
from unitok.train import build_run, load_run_config, main

RECIPES = Path(__file__).resolve().parents[3] / "recipes" / "debug"
TINY = ["model.overrides.vision_depth=1", "model.overrides.decoder_depth=1", "model.overrides.text_depth=1"]
TINY += ["data.params.num_samples=16", "train.batch_size=4", "train.progress=false", "train.log_every=1"]
STAGE1 = [*TINY, "train.steps=2", "task.params.ssl_batch=2", "task.params.rec_batch=2"]


@pytest.fixture(scope="module")
def stage1(tmp_path_factory) -> Path:
    """A stage-1 run directory: two steps of recipes/debug/image_tiny.yaml through unitok-train."""
    run_dir = tmp_path_factory.mktemp("stage1")
    main([str(RECIPES / "image_tiny.yaml"), f"run_dir={run_dir}", *STAGE1])
    return run_dir


def _overrides(init_from, run_dir, *extra) -> list[str]:
    return [*TINY, f"task.params.init_from={init_from}", f"run_dir={run_dir}", *extra]


def _run(init_from, run_dir, *extra):
    torch.manual_seed(0)
    return build_run(load_run_config(RECIPES / "image_tiny_gan.yaml", _overrides(init_from, run_dir, *extra)))


DECODER = ("decoder_embed", "decoder.", "decoder_head")


def _frozen(sd):
    return {k: v for k, v in sd.items() if not k.startswith(tuple(f"autoencoder.{n}" for n in DECODER))}


def test_stage2_recipe_runs_from_a_stage1_run_and_only_moves_the_pixel_decoder(stage1, tmp_path):
    out = tmp_path / "gan"
    main([str(RECIPES / "image_tiny_gan.yaml"), *_overrides(stage1, out, "train.steps=2",
                                                            "task.params.adversarial.disc_start=1")])  # fmt: skip
    before = unitok.load_pretrained(stage1 / "model").state_dict()
    after = unitok.load_pretrained(out / "model").state_dict()
    assert before.keys() == after.keys()
    for k, v in _frozen(before).items():
        assert torch.equal(v, after[k]), f"{k} moved although frozen"
    assert not torch.equal(before["autoencoder.decoder_head.weight"], after["autoencoder.decoder_head.weight"])
    rows = [r for r in read_metrics(out / "metrics.jsonl") if "loss" in r]
    assert "disc_loss" not in rows[0] and "gan_loss" not in rows[0]  # step 0 < disc_start
    assert all(k in rows[-1] for k in ("disc_loss", "gan_loss", "gan_weight", "aux_grad_norm"))


def test_init_from_accepts_a_checkpoint_and_names_a_missing_path(stage1, tmp_path):
    _, from_dir = _run(stage1 / "model", tmp_path / "a")
    _, from_ckpt = _run(stage1 / "checkpoints" / "step_00000002.pt", tmp_path / "b")
    a, b = from_dir.export_model().state_dict(), from_ckpt.export_model().state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        _run(tmp_path / "nowhere", tmp_path / "c")
    with pytest.raises(ValueError, match="different architecture.*decoder_depth"):
        _run(stage1, tmp_path / "d", "model.overrides.decoder_depth=2")


def _same(before, params) -> bool:
    return all(torch.equal(a, p) for a, p in zip(before, params, strict=True))


def test_each_phase_moves_only_its_own_parameters(stage1, tmp_path):
    trainer, task = _run(stage1, tmp_path, "task.params.adversarial.disc_start=1", "train.steps=2")
    gen, disc = trainer.phases
    student, critic = [p for p in task.student.parameters() if p.requires_grad], list(task.discriminator.parameters())
    assert {id(p) for p in student} == {id(p) for p in gen.params()}
    assert {id(p) for p in critic} == {id(p) for p in disc.params()}
    encoder0 = {k: v.clone() for k, v in task.student.model.state_dict().items() if not k.startswith("autoencoder.d")}
    seen = {}

    def watch(phase, name, other):
        """Before ``phase``'s step: the other phase's grads and values; after it: whether they are unchanged."""

        def pre(*_):
            seen[name] = [p.detach().clone() for p in other]
            seen[f"{name}_other_grads"] = [p.grad for p in other]
            seen[f"{name}_own_grads"] = [p.grad is not None for p in phase.params()]

        phase.optimizer.register_step_pre_hook(pre)
        phase.optimizer.register_step_post_hook(lambda *_: seen.update({f"{name}_kept": _same(seen[name], other)}))

    watch(gen, "gen", critic)
    watch(disc, "disc", student)
    critic0 = [p.detach().clone() for p in critic]
    batches = trainer._batches()
    trainer.train_step(batches)  # step 0 < disc_start: the discriminator neither runs nor trains
    assert _same(critic0, critic) and not disc.optimizer.state and "disc" not in seen
    assert seen["gen_kept"] and all(g is None for g in seen["gen_other_grads"])
    seen.clear()
    report = trainer.train_step(batches)  # step 1: G step (D frozen, no D gradient), then D step (G untouched)
    assert "gan_loss" in report and "disc_loss" in report
    assert seen["gen_kept"] and all(g is None for g in seen["gen_other_grads"]) and any(seen["gen_own_grads"])
    assert seen["disc_kept"] and all(g is None for g in seen["disc_other_grads"]) and all(seen["disc_own_grads"])
    assert not _same(critic0, critic)
    assert all(p.requires_grad for p in gen.params() + disc.params()) and task._phase_modules is None
    for k, v in task.student.model.state_dict().items():
        if k in encoder0:
            assert torch.equal(v, encoder0[k]), f"{k} moved although frozen"


def test_stage2_resumes_to_the_same_weights_and_optimiser_states(stage1, tmp_path):
    """2 + 1 steps == 3 steps, both optimisers included; an optimiser that never stepped is saved as None."""
    extra = ["train.steps=3", "train.ckpt_every=1", "train.keep_last=0", "task.params.adversarial.disc_start=1"]
    straight, _ = _run(stage1, tmp_path / "a", *extra)
    straight.fit()
    for until in (2, None):
        resumed, _ = _run(stage1, tmp_path / "b", *extra)
        resumed.fit(until=until)
    a, b = straight.state_dict(), resumed.state_dict()
    assert all(torch.equal(v, b["trainable"][k]) for k, v in a["trainable"].items())
    for key in ("optimizer", "aux_optimizer"):
        sa, sb = a[key]["state"], b[key]["state"]
        assert sa.keys() == sb.keys() and sa
        assert all(torch.equal(sa[p][s], sb[p][s]) for p in sa for s in sa[p]), key
    first = torch.load(tmp_path / "b" / "checkpoints" / "step_00000001.pt", weights_only=False)
    assert first["aux_optimizer"] is None and first["optimizer"] is not None  # step 0 < disc_start
    old = {k: v for k, v in first.items() if k != "aux_optimizer"}  # written before there was a second optimiser
    straight.phases[1].optimizer.state.clear()
    straight.load_state_dict(old)
    assert straight.state.step == 1 and not straight.phases[1].optimizer.state and straight.optimizer.state


def _dist_worker(rank, world_size, init_file, init_from, out_dir):
    init_gloo(rank, world_size, init_file)
    from torch.distributed.fsdp import FSDPModule
    from torch.nn.parallel import DistributedDataParallel as DDP

    from unitok.engine.distributed import DistInfo

    info = DistInfo(rank=rank, world_size=world_size)
    for strategy in ("ddp", "fsdp"):
        torch.manual_seed(0)
        cfg = load_run_config(RECIPES / "image_tiny_gan.yaml", _overrides(init_from, f"{out_dir}/{strategy}", *DIST,
                              "train.batch_size=2", f"train.strategy={strategy}"))  # fmt: skip
        trainer, task = build_run(cfg, info)
        kind = DDP if strategy == "ddp" else FSDPModule
        wrapped = task._wrapped if strategy == "ddp" else {n: getattr(task, n) for n in task.trainable}
        assert all(isinstance(wrapped[n], kind) for n in ("student", "discriminator")), strategy
        trainer.fit()
        sd = trainer.state_dict()  # collective: every rank takes part
        if rank == 0:
            torch.save(sd["trainable"], f"{out_dir}/{strategy}.pt")


# eps 1e-6 (as the FSDP test of stage 1): with 1e-8, Adam's first steps turn fp32 summation-order noise of near-zero
# gradients (different for fused / per-tensor / sharded AdamW) into differences of ~1e-5
DIST = ["train.steps=2", "task.params.adversarial.disc_start=1", "train.ckpt_every=100", "optim.eps=1e-6",
        "task.params.disc_optim.eps=1e-6"]  # fmt: skip


def test_ddp_and_fsdp2_wrap_the_discriminator_and_match_one_process(stage1, tmp_path):
    """2 gloo processes with batch 2 each = 1 process with batch 4 (the adaptive weight uses rank-averaged grads)."""
    run_distributed(_dist_worker, 2, str(stage1), str(tmp_path), timeout_s=120)
    single, _ = _run(stage1, tmp_path / "single", *DIST, "train.batch_size=4")
    single.fit()
    ref = single.state_dict()["trainable"]
    assert any(k.startswith("discriminator.") for k in ref)
    for strategy in ("ddp", "fsdp"):
        got = torch.load(tmp_path / f"{strategy}.pt", weights_only=False)
        for k, v in ref.items():  # Adam's first steps amplify fp32 summation-order noise on near-zero gradients:
            # 5e-5 is a quarter of one step's lr (2e-4), the size of a wrong update; measured worst 1.5e-5
            assert torch.allclose(got[k], v, atol=5e-5), (strategy, k, (got[k] - v).abs().max().item())
        want, have = (
            read_metrics(tmp_path / "single" / "metrics.jsonl")[-1],
            read_metrics(tmp_path / strategy / "metrics.jsonl")[-1],
        )
        for key in ("loss", "gan_weight", "gan_g", "disc_loss"):  # step 2 sees step 1's noise (measured 8.5e-5);
            # a gradient left un-averaged over ranks changes the adaptive weight by ~sqrt(2)
            assert have[key] == pytest.approx(want[key], rel=3e-4), (strategy, key)
