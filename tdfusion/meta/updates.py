"""Optimisers, schedules, and the update rule of the loss generator G.

Why G needs its own rule (DESIGN §2.1): the meta-gradient reaching G passes through
the inner step ``theta_F' = theta_F - eta * grad``, so it carries a factor ``eta``
(~1e-4) and is tiny, around 1e-8..1e-6 per parameter. Adam's default ``eps = 1e-8``
then dominates the denominator and G barely moves.

Rules (``meta.lossgen_update``):
* ``normalized_adam`` (default): divide the whole gradient by its global L2 norm, then
  Adam. Adam's per-parameter scaling does the rest; the normalisation only lifts the
  gradient far above ``eps``, so the step no longer depends on ``eta``.
* ``maxnorm_sgd``: the reference code's rule: divide by the largest absolute entry,
  then a plain SGD step of size ``lr``.
* ``adam``: plain Adam, for comparison (shows the problem).
"""
from __future__ import annotations

from typing import Iterable, Mapping

import torch

__all__ = ["G_UPDATE_RULES", "apply_meta_gradient", "make_optimizer", "make_scheduler"]

G_UPDATE_RULES = ("normalized_adam", "maxnorm_sgd", "adam")


def make_optimizer(params: Iterable[torch.nn.Parameter], lr: float, rule: str = "adam") -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if rule == "maxnorm_sgd":
        return torch.optim.SGD(params, lr=lr)
    if rule in ("adam", "normalized_adam"):
        return torch.optim.Adam(params, lr=lr)
    raise ValueError(f"unknown G update rule {rule!r}; known: {', '.join(G_UPDATE_RULES)}")


def make_scheduler(optimizer: torch.optim.Optimizer, kind: str, epochs: int, step_size: int = 10,
                   gamma: float = 0.1) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-epoch schedule: ``step`` (x gamma every step_size epochs, the reference),
    ``cosine`` (to 0 over ``epochs``) or ``none``."""
    if kind == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=gamma)
    if kind == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs))
    if kind == "none":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    raise ValueError(f"unknown schedule {kind!r} (step, cosine, none)")


@torch.no_grad()
def apply_meta_gradient(optimizer: torch.optim.Optimizer, params: Mapping[str, torch.nn.Parameter],
                        grads: Mapping[str, torch.Tensor], rule: str) -> float:
    """Write the (rescaled) meta-gradient into ``.grad`` and take one optimiser step.

    Returns the scale that was divided out (global L2 norm, max magnitude, or 1).
    """
    if rule == "normalized_adam":
        scale = torch.sqrt(sum((g.double() ** 2).sum() for g in grads.values())).item()
    elif rule == "maxnorm_sgd":
        scale = max(g.abs().max().item() for g in grads.values())
    elif rule == "adam":
        scale = 1.0
    else:
        raise ValueError(f"unknown G update rule {rule!r}; known: {', '.join(G_UPDATE_RULES)}")
    if scale == 0.0:  # nothing to learn from this iteration
        return 0.0
    for name, g in grads.items():
        params[name].grad = (g / scale).to(params[name].dtype)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return scale
