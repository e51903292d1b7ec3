"""Contrastive, reconstruction and perceptual loss terms, and the composer, against direct formulas."""

import math

import pytest
import torch
import torch.nn.functional as F

from unitok.losses.compose import LossComposer
from unitok.losses.contrastive import ContrastiveLoss, clamp_logit_scale_
from unitok.losses.perceptual import LPIPS, resolve_vgg_weights
from unitok.losses.reconstruction import ReconstructionLoss
from unitok.testing import init_gloo, run_distributed


def _features(n=8, e=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, e, generator=g), dim=-1), F.normalize(torch.randn(n, e, generator=g), dim=-1)


def test_clip_loss_is_the_symmetric_cross_entropy():
    img, txt = _features()
    scale = torch.tensor(math.log(1 / 0.07))
    out = ContrastiveLoss("clip")(img, txt, scale)
    logits = scale.exp() * img @ txt.T
    labels = torch.arange(8)
    want = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    assert torch.allclose(out["clip_loss"], want, atol=1e-6)
    assert out["clip_logit_scale"].item() == pytest.approx(1 / 0.07, rel=1e-5)


def test_siglip_loss_is_the_pairwise_sigmoid():
    img, txt = _features()
    scale, bias = torch.tensor(math.log(10.0)), torch.tensor(-10.0)
    out = ContrastiveLoss("siglip", name="siglip")(img, txt, scale, bias)
    logits = 10.0 * img @ txt.T - 10.0
    labels = 2 * torch.eye(8) - 1
    want = -F.logsigmoid(labels * logits).sum() / 8
    assert torch.allclose(out["siglip_loss"], want, atol=1e-5)
    with pytest.raises(ValueError, match="logit_bias"):
        ContrastiveLoss("siglip")(img, txt, scale)


def test_logit_scale_clamp():
    p = torch.nn.Parameter(torch.tensor(7.0))
    clamp_logit_scale_(p)
    assert p.item() == pytest.approx(math.log(100))
    p.data.fill_(-1.0)
    clamp_logit_scale_(p)
    assert p.item() == 0.0


def _contrastive_grad(kind, x, y, w, rows=slice(None)):
    """Gradient of w through a tiny 'model' (features = normalize(x @ w)) for the rows this process holds."""
    w = torch.nn.Parameter(w.clone())
    img, txt = F.normalize(x[rows] @ w, dim=-1), F.normalize(y[rows] @ w, dim=-1)
    bias = torch.tensor(-2.0) if kind == "siglip" else None
    ContrastiveLoss(kind)(img, txt, torch.tensor(2.0), bias)["clip_loss"].backward()
    return w.grad


def _inputs():
    g = torch.Generator().manual_seed(0)
    return torch.randn(8, 6, generator=g), torch.randn(8, 6, generator=g), torch.randn(6, 16, generator=g)


def _ddp_contrastive_grads(rank, world_size, init_file, out_dir):
    init_gloo(rank, world_size, init_file)
    import torch.distributed as dist

    x, y, w = _inputs()
    for kind in ("clip", "siglip"):
        grad = _contrastive_grad(kind, x, y, w, rows=slice(rank * 4, rank * 4 + 4))
        dist.all_reduce(grad)  # DDP averages gradients over ranks
        torch.save(grad / world_size, f"{out_dir}/{kind}{rank}.pt")
    dist.destroy_process_group()


def test_distributed_loss_gives_the_single_process_gradient(tmp_path):
    """Gather with grad + local loss: the DDP-averaged gradient equals the full-batch one (spec 2.1, 2.3)."""
    run_distributed(_ddp_contrastive_grads, 2, str(tmp_path))
    x, y, w = _inputs()
    for kind in ("clip", "siglip"):
        want = _contrastive_grad(kind, x, y, w)
        if kind == "siglip":  # SigLIP divides by the local batch (4 per rank, 8 here) and DDP averages 2 ranks
            want = want * (8 / 4) / 2
        for rank in range(2):
            got = torch.load(tmp_path / f"{kind}{rank}.pt")
            assert torch.allclose(got, want, atol=1e-6), (kind, rank, (got - want).abs().max())


def test_reconstruction_terms():
    pred, tgt = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    out = ReconstructionLoss(denormalize=lambda x: x * 0.5 + 0.5)(pred, tgt)
    assert set(out) == {"rec_l1_loss"}
    assert torch.allclose(out["rec_l1_loss"], ((pred - tgt) * 0.5).abs().mean())
    with pytest.raises(ValueError, match="differ"):
        ReconstructionLoss()(pred, tgt[:, :, :8])


def test_lpips_term_uses_the_perceptual_net_and_stays_frozen():
    net = LPIPS(random_trunk=True)
    assert not any(p.requires_grad for p in net.parameters())
    loss = ReconstructionLoss(perceptual=net, perceptual_weight=2.0)
    pred = torch.rand(2, 3, 32, 32, requires_grad=True)
    out = loss(pred, pred.detach())
    assert out["rec_lpips_loss"].item() == pytest.approx(0.0, abs=1e-6)
    out = loss(pred, torch.rand(2, 3, 32, 32))
    assert out["rec_lpips_loss"] > 0
    out["rec_lpips_loss"].backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    net.train()
    assert not net.net.training  # dropout of the heads never turns on


def test_lpips_distances_are_per_image_and_average_to_the_loss():
    net = LPIPS(random_trunk=True)
    a, b = torch.rand(3, 3, 32, 32) * 2 - 1, torch.rand(3, 3, 32, 32) * 2 - 1
    b[1] = a[1]
    d = net.distances(a, b)
    assert d.shape == (3,) and d[1].item() == 0.0 and (d[[0, 2]] > 0).all()
    assert torch.allclose(d, net.net(a, b).flatten())
    assert torch.allclose(d[2], net.distances(a[2:], b[2:])[0], rtol=1e-5)  # batch-independent
    assert net(a, b).item() == pytest.approx(d.mean().item(), rel=1e-6)


def test_lpips_reads_the_vgg_trunk_from_a_local_file(tmp_path):
    # a torchvision-layout VGG16 state dict ("features.{i}.*" + classifier) with random values
    trunk = LPIPS(random_trunk=True).net.net
    sd = {f"features.{k.split('.', 1)[1]}": torch.randn_like(v) for k, v in trunk.state_dict().items()}
    sd["classifier.0.weight"] = torch.zeros(2, 2)
    path = tmp_path / "vgg16-397923af.pth"
    torch.save(sd, path)
    net = LPIPS(vgg_weights=path)
    assert torch.equal(net.net.net.slice1[0].weight, sd["features.0.weight"])
    assert torch.equal(net.net.net.slice5._modules["28"].bias, sd["features.28.bias"])


def test_lpips_without_weights_says_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.delenv("UNITOK_LPIPS_VGG16", raising=False)
    with pytest.raises(FileNotFoundError, match=r"vgg16-397923af\.pth.*perceptual\.vgg_weights"):
        LPIPS()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_vgg_weights(tmp_path / "missing.pth")


def test_composer_weights_groups_and_ramps():
    comp = LossComposer(
        {
            "terms": {
                "clip": {"weight": 1.0},
                "dino": {"weight": 1.0, "group": "ssl"},
                "koleo": {"weight": 0.1, "group": "ssl"},
                "rec": {"weight": 1.0, "group": "rec", "start_step": 10, "warmup_steps": 4},
                "ibot": {"weight": 0.0},
            },
            "groups": {"ssl": 2.0, "rec": 0.1},
        }
    )
    names = ["clip_loss", "dino_loss", "koleo_loss", "rec_l1_loss", "rec_lpips_loss", "clip_logit_scale"]
    terms = {n: torch.tensor(v) for n, v in zip(names, [1.0, 2.0, 3.0, 4.0, 5.0, 14.0], strict=True)}
    total, report = comp(terms, step=0)
    assert total.item() == pytest.approx(1.0 + 2 * 2.0 + 0.2 * 3.0)
    assert report["clip_logit_scale"] == 14.0 and report["weight/rec_l1_loss"] == 0.0
    total, _ = comp(terms, step=11)  # second warm-up step: half of λ_rec
    assert total.item() == pytest.approx(1.0 + 4.0 + 0.6 + 0.1 * 0.5 * 9.0)
    assert comp.weight("rec_lpips", 100) == pytest.approx(0.1)
    assert not comp.active("ibot") and not comp.active("rec", step=3) and comp.active("rec", step=10)
    assert not comp.active("unknown")
    assert comp.any_active("rec") and not comp.any_active("ibot") and not comp.any_active("siglip")
    with pytest.raises(KeyError, match="no weight"):
        comp({"mystery_loss": torch.tensor(1.0)}, step=0)
    with pytest.raises(ValueError, match="no active"):
        comp({"ibot_loss": torch.tensor(1.0)}, step=0)
    with pytest.raises(ValueError, match="group"):
        LossComposer({"terms": {"a": {"group": "nope"}}})


def test_composer_keeps_a_term_before_its_start_step_in_the_graph():
    comp = LossComposer({"terms": {"rec": {"start_step": 5, "warmup_steps": 2}, "clip": {}, "ibot": {"weight": 0}}})
    rec_param, clip_param = torch.nn.Parameter(torch.tensor(3.0)), torch.nn.Parameter(torch.tensor(2.0))
    total, report = comp({"rec_loss": rec_param * 2, "clip_loss": clip_param**2}, step=0)
    assert total.item() == pytest.approx(4.0) and report["weight/rec_loss"] == 0.0
    total.backward()
    assert rec_param.grad is not None and rec_param.grad.item() == 0.0  # a zero gradient, not a missing one
    assert clip_param.grad.item() == pytest.approx(4.0)
    with pytest.raises(ValueError, match="no active"):  # a term off for the whole run or not yet started alone
        comp({"ibot_loss": torch.tensor(1.0), "rec_loss": torch.tensor(1.0, requires_grad=True)}, step=0)
