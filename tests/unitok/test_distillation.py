"""DINO / iBOT / KoLeo losses and teacher targets against direct formulas, in one process and on 2 gloo ranks."""

import pytest
import torch
import torch.nn.functional as F

from unitok.losses.distillation import DINOLoss, KoLeoLoss, iBOTPatchLoss, teacher_temperature_schedule
from unitok.testing import init_gloo, run_distributed

K = 10


def _ce(t, s, temp=0.1):
    return -(t * F.log_softmax(s / temp, dim=-1)).sum(-1).mean()


def _dino_inputs(n_local=8, b=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    s_glob = torch.randn(2, b, K, generator=g)
    s_loc = torch.randn(n_local, b, K, generator=g)
    t = torch.softmax(torch.randn(2, b, K, generator=g) / 0.5, dim=-1)
    return s_glob, s_loc, t


def _naive_sinkhorn(logits, temp, n_iter=3):
    """The textbook algorithm, in float64, without any stabilisation."""
    q = torch.exp(logits.double() / temp).t()
    k, b = q.shape
    q = q / q.sum()
    for _ in range(n_iter):
        q = q / q.sum(dim=1, keepdim=True) / k
        q = q / q.sum(dim=0, keepdim=True) / b
    return (q * b).t()


# --------------------------------------------------------------------------------------------------- DINO
def test_dino_loss_is_the_mean_over_cross_view_pairs():
    s_glob, s_loc, t = _dino_inputs(n_local=8)
    total, pairs = 0.0, 0
    for i, s in enumerate(list(s_glob) + list(s_loc)):
        for j in range(2):
            if i < 2 and i == j:  # same global view: skipped
                continue
            total, pairs = total + _ce(t[j], s), pairs + 1
    assert pairs == 18
    loss = DINOLoss(K)(s_glob, s_loc, t)
    assert torch.allclose(loss, total / 18, atol=1e-6)
    as_lists = DINOLoss(K)(list(s_glob), list(s_loc), list(t))
    assert torch.allclose(as_lists, loss, atol=1e-6)
    no_local = DINOLoss(K)(s_glob, None, t)
    assert torch.allclose(no_local, (_ce(t[1], s_glob[0]) + _ce(t[0], s_glob[1])) / 2, atol=1e-6)


def test_student_global_view_is_matched_with_the_other_teacher_view():
    s_glob, s_loc, t = _dino_inputs(n_local=0)

    def grads(targets):
        s = s_glob.clone().requires_grad_(True)
        DINOLoss(K)(s, None, targets).backward()
        return s.grad

    t_changed = t.clone()
    t_changed[0] = torch.softmax(torch.randn(4, K), dim=-1)
    g_ref, g_new = grads(t), grads(t_changed)
    assert torch.allclose(g_ref[0], g_new[0])  # student view 0 never sees teacher view 0
    assert not torch.allclose(g_ref[1], g_new[1])


def test_dino_loss_is_fp32_under_bf16_autocast_and_teacher_is_detached():
    s_glob, s_loc, t = _dino_inputs()
    want = DINOLoss(K)(s_glob.bfloat16().float(), s_loc.bfloat16().float(), t)
    t_req = t.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = DINOLoss(K)(s_glob.bfloat16(), s_loc.bfloat16(), t_req)
    assert got.dtype == torch.float32
    assert torch.allclose(got, want, atol=1e-5)
    s = s_glob.clone().requires_grad_(True)
    DINOLoss(K)(s, s_loc, t_req).backward()
    assert s.grad is not None and t_req.grad is None


def test_dino_loss_rejects_bad_views():
    s_glob, s_loc, t = _dino_inputs()
    with pytest.raises(ValueError, match="teacher views"):
        DINOLoss(K)(s_glob, s_loc, t[:1])
    with pytest.raises(ValueError, match="no \\(student, teacher\\) pair"):
        DINOLoss(K)(s_glob[:1], None, t[:1])
    with pytest.raises(ValueError, match="shape"):
        DINOLoss(K)(s_glob, s_loc[:, :2], t)


def test_dino_terms_only_the_loss_ends_in_loss():
    s_glob, s_loc, t = _dino_inputs()
    out = DINOLoss(K).terms(s_glob, s_loc, t)
    assert [k for k in out if k.endswith("_loss")] == ["dino_loss"]
    assert torch.allclose(out["dino_loss"], DINOLoss(K)(s_glob, s_loc, t))
    want_global = (_ce(t[1], s_glob[0]) + _ce(t[0], s_glob[1])) / 2
    assert torch.allclose(out["dino_global_ce"], want_global, atol=1e-6)
    assert torch.allclose(out["dino_teacher_entropy"], -(t * t.log()).sum(-1).mean(), atol=1e-6)
    assert out["dino_center_norm"].item() == 0.0


def test_centering_is_an_ema_of_batch_means():
    loss = DINOLoss(K, center_momentum=0.9)
    t1, t2 = torch.randn(2, 3, K), torch.randn(6, K) + 1.0
    loss.update_center(t1)  # (G, B, K) is flattened over crops
    loss.update_center(t2)
    c1 = 0.1 * t1.reshape(-1, K).mean(0)
    c2 = 0.9 * c1 + 0.1 * t2.mean(0)
    assert loss.center.shape == (1, K)
    assert torch.allclose(loss.center[0], c2, atol=1e-6)
    x = torch.randn(2, 5, K)
    probs = loss.softmax_center_teacher(x, 0.05)
    assert probs.shape == x.shape and probs.dtype == torch.float32
    assert torch.allclose(probs, torch.softmax((x - c2) / 0.05, dim=-1), atol=1e-6)
    assert "center" in loss.state_dict()


def test_ibot_centering_averages_per_rank_patch_means():
    loss = iBOTPatchLoss(K)
    t1, t2 = torch.randn(7, K), torch.randn(3, K)
    loss.update_center(t1)
    loss.update_center(t2)
    loss.update_center(torch.zeros(0, K))  # no masked patch: the center is kept
    c2 = 0.9 * (0.1 * t1.mean(0)) + 0.1 * t2.mean(0)
    assert loss.center.shape == (1, 1, K)
    assert torch.allclose(loss.center.reshape(-1), c2, atol=1e-6)
    x = torch.randn(5, K)
    probs = loss.softmax_center_teacher(x, 0.07)
    assert probs.shape == (5, K)  # the (1, 1, K) center must not add dims
    assert torch.allclose(probs, torch.softmax((x - c2) / 0.07, dim=-1), atol=1e-6)


# (1, 0): ordinary logits; (3, 5): a plain fp32 exp() overflows and whole samples would underflow to 0
@pytest.mark.parametrize(("scale", "offset"), [(1.0, 0.0), (3.0, 5.0)])
def test_sinkhorn_knopp_equals_the_textbook_algorithm(scale, offset):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(6, K, generator=g) * scale + offset
    q = DINOLoss(K).sinkhorn_knopp_teacher(logits, 0.04)
    assert q.shape == (6, K) and q.dtype == torch.float32 and torch.isfinite(q).all()
    assert torch.allclose(q.sum(dim=1), torch.ones(6), atol=1e-5)  # every sample gets a distribution
    ref = _naive_sinkhorn(logits.double() - logits.max(), 0.04)  # a global shift is an exact invariance
    assert torch.allclose(q.double(), ref, atol=1e-5)
    stacked = DINOLoss(K).sinkhorn_knopp_teacher(logits.reshape(2, 3, K), 0.04)
    assert torch.allclose(stacked.reshape(6, K), q)
    assert torch.allclose(iBOTPatchLoss(K).sinkhorn_knopp_teacher(logits, 0.04), q)


def test_sinkhorn_knopp_converges_to_equal_prototype_mass():
    logits = torch.randn(6, K)
    few = DINOLoss(K).sinkhorn_knopp_teacher(logits, 0.5, n_iterations=3)
    many = DINOLoss(K).sinkhorn_knopp_teacher(logits, 0.5, n_iterations=100)
    err_few, err_many = ((q.sum(dim=0) - 6 / K).abs().max() for q in (few, many))
    assert err_many < 1e-5 < err_few  # rows -> B/K only up to the iteration tolerance
    assert err_few < 0.2
    assert torch.allclose(many.sum(dim=1), torch.ones(6), atol=1e-5)


def test_teacher_temperature_schedule():
    assert teacher_temperature_schedule(0, 31) == pytest.approx(0.04)
    assert teacher_temperature_schedule(15, 31) == pytest.approx(0.055)
    assert teacher_temperature_schedule(30, 31) == pytest.approx(0.07)
    assert teacher_temperature_schedule(10_000, 31) == pytest.approx(0.07)
    assert teacher_temperature_schedule(0, 0) == pytest.approx(0.07)
    with pytest.raises(ValueError):
        teacher_temperature_schedule(-1, 10)


# --------------------------------------------------------------------------------------------------- iBOT
def _ibot_inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(4, 6, dtype=torch.bool)
    masks[0, [0, 2]] = True
    masks[2, [1, 3, 4, 5]] = True
    masks[3, [5]] = True  # image 1 unmasked
    s_full = torch.randn(4, 6, K, generator=g)
    t_full = torch.softmax(torch.randn(4, 6, K, generator=g), dim=-1)
    return masks, s_full, t_full


def test_ibot_loss_weights_patches_per_image_and_divides_by_all_images():
    masks, s_full, t_full = _ibot_inputs()
    want = 0.0
    for b in range(4):
        idx = masks[b].nonzero().flatten()
        if len(idx):
            want = want + torch.stack([_ce(t_full[b, i], s_full[b, i]) for i in idx]).mean()
    want = want / 4  # the unmasked image counts in the denominator
    loss = iBOTPatchLoss(K)
    got = loss.forward_masked(s_full[masks], t_full[masks], masks)
    assert torch.allclose(got, want, atol=1e-6)
    pad_s = torch.cat([s_full[masks], torch.randn(3, K)])
    pad_t = torch.cat([t_full[masks], torch.rand(3, K)])
    padded = loss.forward_masked(pad_s, pad_t, masks, n_masked_patches=int(masks.sum()))
    assert torch.allclose(padded, want, atol=1e-6)
    uniform = loss.forward_masked(s_full[masks], t_full[masks], masks, masks_weight=torch.ones(7))
    direct = sum(_ce(t_full[masks][m], s_full[masks][m]) for m in range(7)) / 4
    assert torch.allclose(uniform, direct, atol=1e-6)
    with pytest.raises(ValueError, match="patch weights"):
        loss.forward_masked(pad_s, pad_t, masks)
    terms = loss.terms(s_full[masks], t_full[masks], masks)
    assert [k for k in terms if k.endswith("_loss")] == ["ibot_loss"]
    assert torch.allclose(terms["ibot_loss"], want, atol=1e-6)
    assert terms["ibot_masked_fraction"].item() == pytest.approx(7 / 24)


# --------------------------------------------------------------------------------------------------- KoLeo
def _koleo_brute_force(x):
    xn = x.float() / x.float().norm(dim=-1, keepdim=True)
    d = torch.cdist(xn.double(), xn.double())
    d.fill_diagonal_(float("inf"))
    return -torch.log(d.min(dim=1).values + 1e-8).mean()


def test_koleo_matches_brute_force_nearest_neighbours():
    x = torch.randn(7, 5)
    got = KoLeoLoss()(x)
    assert torch.allclose(got.double(), _koleo_brute_force(x), atol=1e-5)
    assert torch.allclose(KoLeoLoss()(3.0 * x), got, atol=1e-6)  # computed on the sphere
    crops = torch.randn(2, 7, 5)
    terms = KoLeoLoss().terms(crops)
    assert list(terms) == ["koleo_loss"]
    want = _koleo_brute_force(crops[0]) + _koleo_brute_force(crops[1])  # crops are never compared
    assert torch.allclose(terms["koleo_loss"].double(), want, atol=1e-5)


def test_koleo_ignores_bf16_autocast_for_the_neighbour_search():
    x = torch.zeros(3, 8)
    x[:, 0] = 1.0
    x[1, 1], x[2, 2] = 0.0012, 0.001  # in bf16 all dot products round to 1 and the neighbour of row 0 flips
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = KoLeoLoss()(x)
    assert got.dtype == torch.float32
    assert torch.allclose(got.double(), _koleo_brute_force(x), atol=1e-4)


def test_koleo_edge_cases():
    with pytest.raises(ValueError, match="at least 2 samples"):
        KoLeoLoss()(torch.randn(1, 4))
    x = torch.randn(4, 3)
    x[1] = x[0]  # duplicates: distance 0, finite loss and gradient thanks to eps
    x.requires_grad_(True)
    loss = KoLeoLoss()(x)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()


# --------------------------------------------------------------------------------------------------- 2 ranks
def _make_dist_data():
    g = torch.Generator().manual_seed(3)
    ibot = torch.randn(14, K, generator=g) * 3
    ibot[5:] += 4.0  # rank 1 holds the larger logits: a per-rank max would change the SK result
    return {"dino1": torch.randn(8, K, generator=g), "dino2": torch.randn(8, K, generator=g) * 2, "ibot": ibot}


def _dist_worker(rank, world_size, init_file, out_dir):
    init_gloo(rank, world_size, init_file)
    import torch.distributed as dist

    data = _make_dist_data()
    half = slice(4 * rank, 4 * rank + 4)
    dino = DINOLoss(K)
    dino.update_center(data["dino1"][half])
    dino.update_center(data["dino2"][half])
    rows = slice(0, 5) if rank == 0 else slice(5, 14)  # unequal masked-patch counts
    ibot = iBOTPatchLoss(K)
    ibot.update_center(data["ibot"][rows])
    out = {
        "center": dino.center.clone(),
        "sk": dino.sinkhorn_knopp_teacher(data["dino1"][half], 0.05),
        "ibot_sk": ibot.sinkhorn_knopp_teacher(data["ibot"][rows], 0.07),
        "ibot_center": ibot.center.clone(),
    }
    torch.save(out, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


def test_two_ranks_equal_one_process_on_the_full_batch(tmp_path):
    run_distributed(_dist_worker, 2, str(tmp_path))
    data = _make_dist_data()
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    dino = DINOLoss(K)
    dino.update_center(data["dino1"])
    dino.update_center(data["dino2"])
    assert torch.allclose(r0["center"], dino.center, atol=1e-6) and torch.equal(r0["center"], r1["center"])
    sk = dino.sinkhorn_knopp_teacher(data["dino1"], 0.05)
    assert torch.allclose(torch.cat([r0["sk"], r1["sk"]]), sk, atol=1e-6)
    ibot_sk = iBOTPatchLoss(K).sinkhorn_knopp_teacher(data["ibot"], 0.07)
    assert torch.allclose(torch.cat([r0["ibot_sk"], r1["ibot_sk"]]), ibot_sk, atol=1e-6)
    want_center = 0.1 * (data["ibot"][:5].mean(0) + data["ibot"][5:].mean(0)) / 2  # mean of per-rank means
    assert torch.allclose(r1["ibot_center"].reshape(-1), want_center, atol=1e-6)
