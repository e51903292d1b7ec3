"""Self-distillation losses of the DINOv2 recipe: DINO (CLS), iBOT (masked patches), KoLeo, teacher targets.

Teacher targets come either from EMA centering (``softmax_center_teacher`` + ``update_center``) or from
Sinkhorn-Knopp (``sinkhorn_knopp_teacher``). Both work in one process and under ``torch.distributed``: the
reductions are all-reduced only when a process group is initialised. All loss arithmetic is done in fp32 (inputs
are cast), so the modules are safe under bf16/fp16 autocast.

Typical step (centering mode; call ``update_center`` *after* computing the targets so that, like upstream's
lazily applied asynchronous update, the center used at step k holds statistics up to step k-1)::

    t = dino.softmax_center_teacher(teacher_cls_logits, temp)   # (2, B, K)
    dino.update_center(teacher_cls_logits)
    loss = dino(student_global_logits, student_local_logits, t)  # pairs exclude same-view global pairs

Shape legend:
    G: global crops (2), L: local crops, B: images per crop (local batch), K: prototypes,
    N: patches per crop, M: masked patches (rows of the masked-patch tensors), D: feature dim
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

Views = torch.Tensor | Sequence[torch.Tensor]


def _dist_ready() -> bool:
    return dist.is_available() and dist.is_initialized()


def _world_size() -> int:
    return dist.get_world_size() if _dist_ready() else 1


def _all_reduce_(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place all-reduce ("sum" or "max") when a process group exists; a no-op in a single process."""
    if _dist_ready():
        dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return t


def teacher_temperature_schedule(step: int, warmup_steps: int, start: float = 0.04, end: float = 0.07) -> float:
    """Teacher temperature: linear ``start -> end`` over ``warmup_steps``, then constant ``end``.

    Like DINOv2's scheduler the warm-up is an inclusive linspace: step 0 gives ``start`` and step
    ``warmup_steps - 1`` already gives ``end`` (guess kept from upstream; the spec only says "linear").
    """
    if step < 0 or warmup_steps < 0:
        raise ValueError(f"step and warmup_steps must be >= 0, got step={step}, warmup_steps={warmup_steps}")
    if step >= warmup_steps:
        return end
    if warmup_steps == 1:
        return start
    return start + (end - start) * step / (warmup_steps - 1)


def _logsumexp_all(x: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """logsumexp over ``dim`` (None: all elements) and over all ranks (keepdim)."""
    dims = tuple(range(x.ndim)) if dim is None else (dim,)
    if x.numel():
        peak = x.amax(dim=dims, keepdim=True)
    else:
        peak = x.new_full([1 if d in dims else n for d, n in enumerate(x.shape)], float("-inf"))
    peak = _all_reduce_(peak, "max")
    peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
    return _all_reduce_(torch.exp(x - peak).sum(dim=dims, keepdim=True)).log() + peak


@torch.no_grad()
def sinkhorn_knopp(
    teacher_logits: torch.Tensor, teacher_temp: float, total_rows: int, n_iterations: int = 3
) -> torch.Tensor:
    """Sinkhorn-Knopp teacher targets (SwAV / DINOv2), sharded over ranks along the rows.

    ``Q = exp(logits / τ)ᵀ`` (K, M) is normalised to total mass 1, then ``n_iterations`` times every prototype row
    is scaled to mass 1/K (row sums all-reduced) and every sample column to mass 1/total_rows; the result is
    multiplied by ``total_rows`` so that each row of the output is a distribution over the K prototypes.

    Deviation from upstream (same result where upstream is finite): the normalisations are done in log space, so
    large logits / small temperatures neither overflow exp() nor underflow whole columns to 0 (-> NaN).

    Args:
        teacher_logits: (M, K) this rank's teacher logits.
        teacher_temp: teacher temperature τ.
        total_rows: number of rows over all ranks (the "B" of the algorithm).
        n_iterations: number of row/column normalisation rounds.

    Returns:
        (M, K) fp32 targets.
    """
    logits = teacher_logits.float()
    if logits.ndim != 2:
        raise ValueError(f"sinkhorn_knopp expects (M, K) logits, got shape {tuple(logits.shape)}")
    if total_rows == 0:
        return logits.new_zeros(logits.shape)
    log_q = logits.t() / teacher_temp  # (K, M)
    log_k, log_b = math.log(log_q.shape[0]), math.log(total_rows)
    log_q = log_q - _logsumexp_all(log_q)
    for _ in range(n_iterations):
        log_q = log_q - _logsumexp_all(log_q, dim=1) - log_k  # each prototype: mass 1/K over all ranks
        log_q = log_q - torch.logsumexp(log_q, dim=0, keepdim=True) - log_b  # each sample: mass 1/B
    return torch.exp(log_q + log_b).t()


def _as_views(x: Views | None, name: str) -> list[torch.Tensor]:
    """(V, B, K) tensor or a sequence of (B, K) tensors -> list of V views (None -> [])."""
    if x is None:
        return []
    if isinstance(x, torch.Tensor):
        if x.ndim < 3:
            raise ValueError(f"{name}: pass a (V, B, K) tensor or a sequence of (B, K) tensors, got {tuple(x.shape)}")
        return list(x.unbind(0))
    return list(x)


def _cross_entropy(target: torch.Tensor, student_log_probs: torch.Tensor) -> torch.Tensor:
    """H(t, s) = -Σ_k t_k log s_k per row, averaged over all rows."""
    return -(target * student_log_probs).sum(dim=-1).mean()


def _mean_entropy(probs: torch.Tensor) -> torch.Tensor:
    return -torch.special.xlogy(probs, probs).sum(dim=-1).mean()


class _CenteredTeacher(nn.Module):
    """Shared by the DINO and iBOT losses: prototypes K, student temperature, and the EMA center of teacher logits
    (buffer shape as DINOv2's: (1, K) for DINO, (1, 1, K) for iBOT) with its softmax-centering targets."""

    center: torch.Tensor

    def __init__(self, out_dim: int, student_temp: float, center_momentum: float, center_shape: tuple[int, ...]):
        super().__init__()
        self.out_dim, self.student_temp, self.center_momentum = out_dim, student_temp, center_momentum
        self.register_buffer("center", torch.zeros(*center_shape, out_dim))

    @torch.no_grad()
    def softmax_center_teacher(self, teacher_logits: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        """(..., K) teacher logits -> softmax((logits - center) / τ_t) in fp32, same shape."""
        return F.softmax((teacher_logits.float() - self.center.float().reshape(-1)) / teacher_temp, dim=-1)

    def _ema_center(self, batch_center: torch.Tensor) -> None:
        """center <- m · center + (1 - m) · batch_center, for a (K,) or center-shaped batch center."""
        m = self.center_momentum
        self.center.copy_(
            (self.center.float().reshape(-1) * m + batch_center.reshape(-1) * (1 - m)).view_as(self.center)
        )


class DINOLoss(_CenteredTeacher):
    """DINO CLS-token loss with its teacher targets (centering or Sinkhorn-Knopp).

    Args:
        out_dim: number of prototypes K.
        student_temp: student temperature τ_s.
        center_momentum: EMA momentum of the center.
    """

    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9):
        super().__init__(out_dim, student_temp, center_momentum, (1,))

    @torch.no_grad()
    def sinkhorn_knopp_teacher(
        self, teacher_logits: torch.Tensor, teacher_temp: float, n_iterations: int = 3
    ) -> torch.Tensor:
        """(G·B, K) or (G, B, K) teacher logits of this rank -> Sinkhorn-Knopp targets, same shape, fp32.

        All crops of all ranks form one assignment problem with B_total = local rows × world size (ranks are
        assumed to hold equal batches, as in DINOv2).
        """
        flat = teacher_logits.reshape(-1, teacher_logits.shape[-1])
        q = sinkhorn_knopp(flat, teacher_temp, flat.shape[0] * _world_size(), n_iterations)
        return q.reshape(teacher_logits.shape)

    @torch.no_grad()
    def update_center(self, teacher_logits: torch.Tensor) -> None:
        """EMA of the mean teacher logit over all rows of all ranks: all-reduced sum / (local rows × world size)."""
        flat = teacher_logits.float().reshape(-1, teacher_logits.shape[-1])
        self._ema_center(_all_reduce_(flat.sum(dim=0, keepdim=True)) / (flat.shape[0] * _world_size()))

    def _pair_sums(
        self, student_global: Views, student_local: Views | None, teacher_probs: Views
    ) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        """Sum of per-pair cross-entropies for the global and local terms, and their pair counts."""
        s_glob = _as_views(student_global, "student_global")
        s_loc = _as_views(student_local, "student_local")
        targets = [t.detach().float() for t in _as_views(teacher_probs, "teacher_probs")]
        if len(targets) != len(s_glob):
            raise ValueError(f"{len(s_glob)} student global views but {len(targets)} teacher views")
        n_global, n_local = len(s_glob) * (len(s_glob) - 1), len(s_loc) * len(targets)
        if n_global + n_local == 0:
            raise ValueError("DINO loss has no (student, teacher) pair: pass >= 2 global views or some local views")
        for name, v in [("student_global", s) for s in s_glob] + [("student_local", s) for s in s_loc]:
            if v.shape[-1] != self.out_dim or v.shape != targets[0].shape:
                raise ValueError(f"{name} view of shape {tuple(v.shape)}; teacher views are {tuple(targets[0].shape)}")
        lsm = [F.log_softmax(s.float() / self.student_temp, dim=-1) for s in s_glob + s_loc]
        zero = lsm[0].new_zeros(())
        # Global: student view i against every teacher view j != i (for G = 2 the swapped crop).
        g = len(s_glob)
        glob = sum((_cross_entropy(targets[j], lsm[i]) for i in range(g) for j in range(g) if j != i), zero)
        # Local: Σ_j H(t_j, s) = H(Σ_j t_j, s), so one product per local view.
        t_sum = torch.stack(targets).sum(0) if s_loc else None
        loc = sum((_cross_entropy(t_sum, s) for s in lsm[g:]), zero)
        return glob, loc, n_global, n_local

    def forward(self, student_global: Views, student_local: Views | None, teacher_probs: Views) -> torch.Tensor:
        """Mean cross-entropy over all (student view, teacher view) pairs except same-view global pairs.

        Args:
            student_global: G student global-crop logits, (G, B, K) or a list of (B, K).
            student_local: L student local-crop logits, (L, B, K), a list of (B, K), or None.
            teacher_probs: G teacher targets, (G, B, K) or a list of (B, K). ``teacher_probs[j]`` must come from
                the *same* global crop j as ``student_global[j]`` (do NOT swap them: the loss skips the pair
                (j, j) itself, which for G = 2 pairs student crop A with teacher crop B).

        Returns:
            Scalar: (Σ_global pairs H + Σ_local pairs H) / (G(G-1) + L·G); e.g. / 18 for G = 2, L = 8.
        """
        glob, loc, n_global, n_local = self._pair_sums(student_global, student_local, teacher_probs)
        return (glob + loc) / (n_global + n_local)

    def terms(
        self, student_global: Views, student_local: Views | None, teacher_probs: Views
    ) -> dict[str, torch.Tensor]:
        """``{"dino_loss"}`` plus report scalars: per-pair global/local CE, teacher entropy, center norm."""
        glob, loc, n_global, n_local = self._pair_sums(student_global, student_local, teacher_probs)
        targets = [t.detach().float() for t in _as_views(teacher_probs, "teacher_probs")]
        out = {"dino_loss": (glob + loc) / (n_global + n_local)}
        if n_global:
            out["dino_global_ce"] = (glob / n_global).detach()
        if n_local:
            out["dino_local_ce"] = (loc / n_local).detach()
        out["dino_teacher_entropy"] = torch.stack([_mean_entropy(t) for t in targets]).mean()
        out["dino_center_norm"] = self.center.float().norm()
        return out


class iBOTPatchLoss(_CenteredTeacher):
    """iBOT masked-patch loss with its teacher targets (centering or Sinkhorn-Knopp).

    Args:
        patch_out_dim: number of patch prototypes K.
        student_temp: student temperature τ_s.
        center_momentum: EMA momentum of the center.
    """

    def __init__(self, patch_out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9):
        super().__init__(patch_out_dim, student_temp, center_momentum, (1, 1))

    @torch.no_grad()
    def sinkhorn_knopp_teacher(
        self, teacher_patch_logits: torch.Tensor, teacher_temp: float, n_iterations: int = 3
    ) -> torch.Tensor:
        """(M, K) teacher logits at this rank's masked patches -> SK targets (M, K); ranks may hold different M.

        B_total is the all-reduced masked-patch count.
        """
        count = teacher_patch_logits.new_tensor(float(teacher_patch_logits.shape[0]), dtype=torch.float32)
        total = int(_all_reduce_(count).item())
        return sinkhorn_knopp(teacher_patch_logits, teacher_temp, total, n_iterations)

    @torch.no_grad()
    def update_center(self, teacher_patch_logits: torch.Tensor) -> None:
        """EMA of the per-rank mean over masked-patch teacher logits (..., K), averaged over ranks.

        Guess (spec silent): a rank without masked patches contributes the current center, so the update stays a
        collective call on every rank and does not produce NaN.
        """
        flat = teacher_patch_logits.float().reshape(-1, self.out_dim)
        local = flat.mean(dim=0) if flat.shape[0] else self.center.float().reshape(-1)
        self._ema_center(_all_reduce_(local.clone()) / _world_size())

    def forward_masked(
        self,
        student_patch_logits_masked: torch.Tensor,
        teacher_probs_masked: torch.Tensor,
        student_masks_flat: torch.Tensor,
        n_masked_patches: int | None = None,
        masks_weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Weighted cross-entropy over masked patches, normalised by the number of images (masked or not).

        Rows of the (M, K) inputs are the masked patches in row-major order of ``student_masks_flat``
        (i.e. ``x.flatten(0, 1)[student_masks_flat.flatten()]``). Each patch is weighted by
        1 / (masked patches of its image); the weighted sum is divided by B, unmasked images included.

        Args:
            student_patch_logits_masked: (M, K) student logits at masked positions.
            teacher_probs_masked: (M, K) teacher targets at the same positions (from the unmasked teacher view).
            student_masks_flat: (B, N) bool masks of the student global crops.
            n_masked_patches: if given, only the first rows are real (the rest is padding) and are used.
            masks_weight: (n_masked,) per-patch weights; default 1 / (masked patches of the patch's image).

        Returns:
            Scalar loss.
        """
        masks = student_masks_flat.bool()
        if masks.ndim != 2:
            raise ValueError(f"student_masks_flat must be (B, N), got shape {tuple(masks.shape)}")
        lsm = F.log_softmax(student_patch_logits_masked.float() / self.student_temp, dim=-1)
        ce = -(teacher_probs_masked.detach().float() * lsm).sum(dim=-1)  # (M,)
        if n_masked_patches is not None:
            ce = ce[: int(n_masked_patches)]
        if masks_weight is None:
            masks_weight = (1.0 / masks.sum(-1, keepdim=True).clamp_min(1)).expand_as(masks)[masks]
        if masks_weight.shape != ce.shape:
            raise ValueError(
                f"{ce.shape[0]} masked-patch rows but {masks_weight.shape[0]} patch weights "
                f"({int(masks.sum())} masked positions in student_masks_flat)"
            )
        return (ce * masks_weight.float()).sum() / masks.shape[0]

    def terms(
        self,
        student_patch_logits_masked: torch.Tensor,
        teacher_probs_masked: torch.Tensor,
        student_masks_flat: torch.Tensor,
        n_masked_patches: int | None = None,
        masks_weight: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """``{"ibot_loss"}`` plus report scalars: teacher entropy, center norm, masked fraction."""
        loss = self.forward_masked(
            student_patch_logits_masked, teacher_probs_masked, student_masks_flat, n_masked_patches, masks_weight
        )
        t = teacher_probs_masked.detach().float()
        t = t[: int(n_masked_patches)] if n_masked_patches is not None else t
        return {
            "ibot_loss": loss,
            "ibot_teacher_entropy": _mean_entropy(t) if t.shape[0] else t.new_zeros(()),
            "ibot_center_norm": self.center.float().norm(),
            "ibot_masked_fraction": student_masks_flat.float().mean(),
        }


class KoLeoLoss(nn.Module):
    """Kozachenko-Leonenko entropy regulariser on one crop's features of the local batch.

    Features are L2-normalised in fp32 with autocast off; each sample's nearest neighbour is the other sample
    with the largest dot product; loss = -mean log(||x - x_nn|| + eps).

    Args:
        eps: added to the distance inside the log (and used as the normalisation eps).
    """

    def __init__(self, eps: float = 1e-8):
        super().__init__()
        self.eps = eps

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, D) features (e.g. the backbone CLS of one global crop) -> scalar loss. Needs B >= 2."""
        if features.ndim != 2:
            raise ValueError(f"KoLeoLoss expects (B, D) features, got shape {tuple(features.shape)}")
        if features.shape[0] < 2:
            raise ValueError(
                f"KoLeoLoss needs at least 2 samples per local batch to find a nearest neighbour, got "
                f"{features.shape[0]}; increase the per-device batch size or disable the KoLeo term"
            )
        with torch.autocast(device_type=features.device.type, enabled=False):
            x = F.normalize(features.float(), p=2, dim=-1, eps=self.eps)
            with torch.no_grad():
                dots = x @ x.t()
                # Deviation from upstream's -1 fill: -inf can never tie with a real neighbour (antipodal pairs).
                dots.fill_diagonal_(float("-inf"))
                nn_idx = dots.argmax(dim=1)
            # Spec form log(||x - x_nn|| + eps); upstream's PairwiseDistance adds eps inside the norm instead.
            dist_nn = (x - x[nn_idx]).norm(dim=-1)
            return -torch.log(dist_nn + self.eps).mean()

    def terms(self, crops: torch.Tensor | Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{"koleo_loss"}``: the sum of the loss over crops, each crop on its own (crops are never compared).

        Args:
            crops: (B, D) features of one crop, (G, B, D), or a list of (B, D) tensors.
        """
        views = [crops] if isinstance(crops, torch.Tensor) and crops.ndim == 2 else _as_views(crops, "crops")
        return {"koleo_loss": torch.stack([self(v) for v in views]).sum()}
