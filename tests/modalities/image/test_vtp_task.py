"""The VTP objective: switches without cost, the paper's batch sampling, EMA teacher, frozen prototypes, resume."""

from pathlib import Path

import pytest
import torch

from unitok.train import build_run, load_run_config

RECIPE = Path(__file__).resolve().parents[3] / "recipes" / "debug" / "image_tiny.yaml"
SMALL = ["train.steps=4", "train.batch_size=8", "train.progress=false", "train.ckpt_every=2", "train.log_every=1"]
SMALL += ["task.params.ssl_batch=4", "task.params.rec_batch=3", "data.params.num_samples=64"]
SMALL += ["model.overrides.vision_depth=1", "model.overrides.decoder_depth=1", "model.overrides.text_depth=1"]
WEIGHTS = {  # the paper's scaling-study tokenizers as weight settings
    "ae": ["losses.groups.clip=0", "losses.groups.ssl=0"],
    "clip_ae": ["losses.groups.ssl=0"],
    "ssl_ae": ["losses.groups.clip=0"],
    "clip_ssl_ae": [],
}


def _run(tmp_path, *overrides):
    torch.manual_seed(0)
    return build_run(load_run_config(RECIPE, [*SMALL, f"run_dir={tmp_path}", *overrides]))


def _count_calls(module) -> list[int]:
    calls = [0]
    module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.mark.parametrize("variant", list(WEIGHTS))
def test_objectives_switch_off_without_cost(variant, tmp_path):
    trainer, task = _run(tmp_path, *WEIGHTS[variant], "train.steps=1")
    model = task.student.model
    text = _count_calls(model.text)
    decoder = _count_calls(model.autoencoder.decoder)
    head = _count_calls(task.student.head) if task.student.head is not None else [0]
    report = trainer.fit()
    uses_clip, uses_ssl = "clip" in variant, "ssl" in variant
    assert (text[0] > 0) == uses_clip and (head[0] > 0) == uses_ssl and decoder[0] > 0
    assert (task.teacher is not None) == uses_ssl
    assert ("clip_loss" in report) == uses_clip and ("dino_loss" in report) == uses_ssl and "rec_l1_loss" in report
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_batch_sampling_uses_all_pairs_for_clip_and_subsets_for_ssl_and_rec(tmp_path):
    _, task = _run(tmp_path)
    seen = {}
    task.student.register_forward_pre_hook(lambda m, args: seen.update({k: v.shape for k, v in args[0].items()}))
    batch = next(iter(torch.utils.data.DataLoader(_toy_multicrop(), batch_size=8, collate_fn=_collate())))
    loss, report = task.training_forward(batch, step=0)
    assert seen["clip_images"][0] == 8 and seen["text"] == (8, 32)
    assert seen["rec_index"] == (3,) and "rec_images" not in seen  # reconstruction reuses the CLIP encoder pass
    assert seen["ssl_global"][0] == 2 * 4 and seen["ssl_local"][0] == 2 * 4 and seen["ibot_masks"] == (8, 16)
    assert torch.isfinite(loss) and report["loss"] == pytest.approx(loss.item())


def test_crops_made_for_the_first_samples_are_the_ssl_subset(tmp_path):
    from unitok.modalities.image.builders import build_toy_dataset

    _, task = _run(tmp_path)
    seen = {}
    task.student.register_forward_pre_hook(lambda m, args: seen.update({k: v for k, v in args[0].items()}))
    params = {"size": 64, "num_samples": 16, "multicrop": {"local_size": 32, "n_local": 2, "crops_per_batch": 4}}
    dataset, collate = build_toy_dataset(params)
    batch = collate([dataset[i] for i in range(8)])
    task.training_forward(batch, step=0)
    assert seen["clip_images"].shape[0] == 8 and seen["ssl_global"].shape[0] == 2 * 4
    assert torch.equal(seen["ssl_global"], torch.cat(batch["global_crops"]))  # no second sub-sampling
    task.cfg.ssl_batch = 2
    with pytest.raises(ValueError, match="crops_per_batch"):
        task.training_forward(batch, step=0)


def _toy_multicrop():
    from unitok.modalities.image.builders import build_toy_dataset

    return build_toy_dataset({"size": 64, "num_samples": 16, "multicrop": {"local_size": 32, "n_local": 2}})[0]


def _collate():
    from unitok.modalities.image.augment import collate_multicrop

    return collate_multicrop


def test_reconstruction_from_the_clip_pass_equals_a_separate_pass(tmp_path):
    _, task = _run(tmp_path)
    student = task.student.eval()
    images, idx = torch.randn(5, 3, 64, 64), torch.tensor([4, 1])
    text = torch.zeros(5, 32, dtype=torch.long)
    with torch.no_grad():
        shared = student({"clip_images": images, "text": text, "rec_index": idx})["recon"]
        separate = student({"rec_images": images[idx]})["recon"]
    assert torch.allclose(shared, separate, atol=1e-5)


def test_teacher_is_an_ema_of_the_student_and_prototypes_start_frozen(tmp_path):
    _, task = _run(tmp_path, "task.params.freeze_last_layer_steps=2")
    kept = list(task.teacher.state_dict())
    assert not any(k.startswith(("model.text", "model.visual_proj")) or "decoder" in k for k in kept)
    assert not any(p.requires_grad for p in task.teacher.parameters())
    name = "model.autoencoder.encoder.blocks.0.attn.qkv.weight"
    t0 = dict(task.teacher.named_parameters())[name].clone()
    s = dict(task.student.named_parameters())[name]
    with torch.no_grad():
        s.add_(1.0)
    m = task.momentum_at(0)
    task.after_step(0)
    assert torch.allclose(dict(task.teacher.named_parameters())[name], m * t0 + (1 - m) * s, atol=1e-6)
    for p in task.student.head.parameters():
        p.grad = torch.ones_like(p)
    task.before_optimizer_step(1)
    assert all(p.grad is None for p in task.student.head.last_layer_parameters())
    task.before_optimizer_step(2)  # after the freeze, gradients are left alone
    assert all(p.grad is not None for p in task.student.head.mlp.parameters())


def test_logit_scale_is_clamped_after_each_step(tmp_path):
    _, task = _run(tmp_path)
    task.student.model.logit_scale.data.fill_(9.0)
    task.after_step(0)
    assert task.student.model.logit_scale.item() == pytest.approx(4.6052, abs=1e-4)


def test_resumed_run_reaches_the_same_weights(tmp_path):
    """Teacher, centers, masks and subsets all resume exactly (2 + 2 steps == 4 steps), and so do the prototypes
    that were still frozen at the checkpoint (no optimiser state there: their first step must count as the first)."""
    frozen = "task.params.freeze_last_layer_steps=2"
    straight, _ = _run(tmp_path / "a", frozen)
    straight.fit()
    first, _ = _run(tmp_path / "b", frozen)
    first.fit(until=2)
    second, task = _run(tmp_path / "b", frozen)  # same run_dir: resumes from step 2
    second.fit()
    a = straight.task.state_dict()
    b = task.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_lpips_without_weights_stops_at_start_up(tmp_path, monkeypatch):
    monkeypatch.delenv("UNITOK_LPIPS_VGG16", raising=False)
    with pytest.raises(FileNotFoundError, match="vgg16-397923af.pth"):
        _run(tmp_path, "losses.terms.rec_lpips.weight=1.0")
