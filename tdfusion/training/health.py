"""Signs that a run has gone wrong in a way its losses do not show (docs/results.md).

Two failures were seen in real runs, and both leave the logged losses looking calm:

* the fusion network F collapses: its sigmoid output sinks to a constant near 0, where the
  intensity term's pull vanishes (MSRS, ``optim.lr_fusion`` 1e-3);
* the loss generator G saturates: its weights sit at 0 or 1 on nearly every pixel, its
  meta-gradient vanishes and G stops learning (MSRS, ``optim.lr_fusion`` 1e-4).

:class:`HealthStats` gathers F's output and G's weights on the test-split diagnostic (in
the same pass as the task metrics); :func:`health_warnings` turns the figures into
warnings that name the setting to change.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import torch
from torch import nn

__all__ = ["AT_BOUNDS", "BOUND", "CONSTANT_STD", "HEALTH_KEYS", "HealthStats", "health_warnings"]

CONSTANT_STD = 1e-3  #: F's output std (over all test pixels) below which it counts as constant
BOUND = 1e-3         #: a G weight within this of 0 or 1 sits at a bound
AT_BOUNDS = 0.99     #: share of G's weights at a bound from which G counts as saturated
#: What :meth:`HealthStats.figures` adds to an evaluation's record, beside the task metrics.
HEALTH_KEYS = ("fused_mean", "fused_std", "lossgen_at_bounds")


class HealthStats:
    """Running mean/std of F's output and the share of G's weights at 0 or 1.

    ``lossgen``: the G whose weights to watch; None where none is used (the fixed-weight
    ablation), and then no G figure is reported.
    """

    def __init__(self, lossgen: nn.Module | None = None) -> None:
        self.lossgen = lossgen
        self.n = self.total = self.squares = 0.0
        self.weights = self.at_bounds = 0

    def observe(self, view: dict[str, Any], fused: torch.Tensor) -> None:
        """One evaluation view (``"a"``, ``"b"``: ``(B, 1, H, W)``) and F's output on it."""
        self.add_fused(fused)
        if self.lossgen is not None:
            self.add_weights(self.lossgen(view["a"], view["b"]))

    def add_fused(self, fused: torch.Tensor) -> None:
        """``fused``: ``(B, 1, H, W)`` F's output."""
        f = fused.detach().double()
        self.n += f.numel()
        self.total += f.sum().item()
        self.squares += f.square().sum().item()

    def add_weights(self, weights: torch.Tensor) -> None:
        """``weights``: G's ``(B, 2 * pairs, H, W)``; each pair sums to 1, so its first
        channel (``w_a``, ``v_a``) says all."""
        w = weights.detach()[:, 0::2]
        self.weights += w.numel()
        self.at_bounds += int(((w < BOUND) | (w > 1 - BOUND)).sum().item())

    def figures(self) -> dict[str, float]:
        """``fused_mean``, ``fused_std`` and, when G was seen, ``lossgen_at_bounds``."""
        out: dict[str, float] = {}
        if self.n:
            mean = self.total / self.n
            out["fused_mean"] = mean
            out["fused_std"] = math.sqrt(max(self.squares / self.n - mean * mean, 0.0))
        if self.weights:
            out["lossgen_at_bounds"] = self.at_bounds / self.weights
        return out


def health_warnings(figures: Mapping[str, Any], optim: Mapping[str, Any]) -> list[str]:
    """One line per sign of failure in ``figures`` (:meth:`HealthStats.figures`), naming
    the learning rate of ``optim`` (the run config's ``optim`` section) to lower."""
    out = []
    std = figures.get("fused_std")
    if std is not None and std < CONSTANT_STD:
        out.append(f"the fusion network's output on the test split is constant (mean {figures['fused_mean']:.3f}, "
                   f"std {std:.1e}): it has collapsed; a lower optim.lr_fusion (now {optim['lr_fusion']:g}) "
                   f"avoids it (both papers train at 1e-4; docs/results.md)")
    share = figures.get("lossgen_at_bounds")
    if share is not None and share >= AT_BOUNDS:
        out.append(f"the loss generator's weights sit at 0 or 1 on {share:.1%} of the test pixels: its "
                   f"meta-gradient vanishes and it stops learning; a lower optim.lr_lossgen (now "
                   f"{optim['lr_lossgen']:g}) may avoid it (docs/results.md)")
    return out
