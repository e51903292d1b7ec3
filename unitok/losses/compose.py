"""LossComposer: weights, groups (λ), start steps and warm-ups over named loss terms.

Loss modules return dicts; keys ending in ``_loss`` are optimised, the rest are reported. A term ``dino_loss``
is weighted by the entry whose name is the longest prefix of ``dino`` among the configured terms (so
``rec_l1_loss`` and ``rec_lpips_loss`` both match ``rec`` unless ``rec_l1`` is configured). Effective weight =
``weight · λ[group] · ramp(step)``, ramp = 0 before ``start_step``, then linear over ``warmup_steps``, then 1.
A term whose effective weight is 0 for the whole run is inactive: :meth:`LossComposer.active` lets a task skip
computing it (no forward of unused heads). A term configured non-zero but at weight 0 at this step (before its
``start_step``) joins the total as ``0 · value``, so its parameters still get a (zero) gradient, as DDP expects.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch


@dataclass
class TermWeight:
    """Attributes:
    weight: the term's weight inside its group.
    group: name of a λ in ``ComposerConfig.groups`` that multiplies the weight (None: no group).
    start_step: optimiser step from which the term counts.
    warmup_steps: linear ramp of the weight after ``start_step``.
    """

    weight: float = 1.0
    group: str | None = None
    start_step: int = 0
    warmup_steps: int = 0


@dataclass
class ComposerConfig:
    """Attributes:
    terms: term name (prefix of the ``*_loss`` keys) -> TermWeight.
    groups: group name -> λ.
    """

    terms: dict[str, TermWeight] = field(default_factory=dict)
    groups: dict[str, float] = field(default_factory=dict)


class LossComposer:
    """Weights and sums loss terms; see the module docstring."""

    def __init__(self, cfg: ComposerConfig | Mapping):
        if isinstance(cfg, Mapping):
            terms = {k: v if isinstance(v, TermWeight) else TermWeight(**v) for k, v in cfg.get("terms", {}).items()}
            cfg = ComposerConfig(terms=terms, groups=dict(cfg.get("groups", {})))
        for name, tw in cfg.terms.items():
            if tw.group is not None and tw.group not in cfg.groups:
                raise ValueError(f"loss term {name!r} names group {tw.group!r}, not one of {sorted(cfg.groups)}")
            if tw.start_step < 0 or tw.warmup_steps < 0:
                raise ValueError(f"loss term {name!r}: start_step and warmup_steps must be >= 0")
        self.cfg = cfg

    def _entry(self, term: str) -> tuple[str, TermWeight]:
        matches = [n for n in self.cfg.terms if term == n or term.startswith(n + "_")]
        if not matches:
            raise KeyError(f"loss term {term!r} has no weight; configured: {sorted(self.cfg.terms)}")
        name = max(matches, key=len)
        return name, self.cfg.terms[name]

    def base_weight(self, term: str) -> float:
        """Weight · λ of a term, without the step ramp."""
        _, tw = self._entry(term)
        return tw.weight * (self.cfg.groups[tw.group] if tw.group is not None else 1.0)

    def weight(self, term: str, step: int) -> float:
        """The effective weight of ``term`` at optimiser step ``step``."""
        _, tw = self._entry(term)
        if step < tw.start_step:
            return 0.0
        ramp = 1.0 if tw.warmup_steps == 0 else min(1.0, (step - tw.start_step + 1) / tw.warmup_steps)
        return self.base_weight(term) * ramp

    def active(self, term: str, step: int | None = None) -> bool:
        """Whether ``term`` contributes (at ``step``, or at all when None): skip computing it otherwise."""
        try:
            base = self.base_weight(term)
        except KeyError:
            return False
        if base == 0:
            return False
        return step is None or self.weight(term, step) > 0

    def any_active(self, prefix: str) -> bool:
        """Whether any configured term named ``prefix`` or ``prefix_*`` has a non-zero weight (e.g. 'rec')."""
        names = [n for n in self.cfg.terms if n == prefix or n.startswith(prefix + "_")]
        return any(self.base_weight(n) != 0 for n in names) or self.active(prefix)

    def __call__(self, terms: Mapping[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """Weighted sum of the ``*_loss`` terms (fp32) and a report of every value (unweighted) and weight."""
        total, counted = None, False
        report: dict[str, float] = {}
        for key, value in terms.items():
            report[key] = float(value.detach()) if torch.is_tensor(value) else float(value)
            if not key.endswith("_loss"):
                continue
            w = self.weight(key[: -len("_loss")], step)
            report[f"weight/{key}"] = w
            if w == 0 and (self.base_weight(key[: -len("_loss")]) == 0 or not torch.is_tensor(value)):
                continue  # off for the whole run (or a constant): no graph to keep
            counted = counted or w != 0
            term = w * value.float()  # w == 0 before start_step: a zero gradient path for the term's parameters
            total = term if total is None else total + term
        if not counted:
            raise ValueError(f"no active loss term at step {step} among {sorted(terms)}")
        report["loss"] = float(total.detach())
        return total, report
