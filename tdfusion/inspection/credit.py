"""Which source does the one-step meta objective reward, where? A finite-difference probe.

For a task whose best fusion is known -- the fused image should equal the first source
(infrared) on some classes (people and cars of the synthetic scenes) and the second one
elsewhere, the task network an identity -- this measures, by finite differences of the meta
objective itself (no meta-gradient code involved), how the outer task loss changes when G's
weight for the first source is raised on the pixels of one class of the meta-train image:

    dL_outer = L_t(F'(w + d * class_mask)(meta-test)) - L_t(F'(w)(meta-test)),
    F'(w) = F - eta * dL_f(F, w)/dtheta_F  on the meta-train image (one inner step, Eq. 4).

A negative value means the objective rewards more infrared weight on that class, a positive
one more visible weight. Two settings: the meta-test image is the meta-train image itself,
or another image (the papers' disjoint meta-train and meta-test sets). docs/results.md
reports what it shows; ``scripts/meta_credit.py`` is its command line.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch.func import functional_call

from ..meta.losses import fusion_loss

__all__ = ["credit_table", "known_mix_loss", "one_step_outer_loss"]


def known_mix_loss(fused: torch.Tensor, batch: dict, ir_classes: Sequence[int]) -> torch.Tensor:
    """Distance of the fused image ``(B, 1, H, W)`` to the first source on ``ir_classes``
    (``batch["mask"]``), the second elsewhere."""
    m = batch["mask"].unsqueeze(1)
    target = torch.where(torch.isin(m, torch.as_tensor(list(ir_classes), device=m.device)), batch["a"], batch["b"])
    return ((fused - target) ** 2).mean()


def one_step_outer_loss(net, params: dict, train: dict, test: dict, w_a: torch.Tensor, eta: float, form: str,
                        ir_classes: Sequence[int]) -> float:
    """The known-mix loss on ``test`` after one SGD step of F on L_f(train) under weights ``w_a``."""
    names = [k for k, p in params.items() if p.requires_grad]
    leaves = {k: params[k].detach().clone().requires_grad_(True) for k in names}
    frozen = {k: v.detach() for k, v in params.items()}
    weights = torch.cat([w_a, 1 - w_a], 1)
    out = fusion_loss(form, functional_call(net, {**frozen, **leaves}, (train["a"], train["b"])),
                      train["a"], train["b"], weights, 1.0, "paper")
    grads = torch.autograd.grad(out["loss"], [leaves[k] for k in names])
    stepped = {**frozen, **{k: frozen[k] - eta * g for k, g in zip(names, grads)}}
    with torch.no_grad():
        return float(known_mix_loss(functional_call(net, stepped, (test["a"], test["b"])), test, ir_classes))


def credit_table(net, views: Sequence[tuple[dict, dict]], classes: Sequence[str], ir_classes: Sequence[int],
                 eta: float = 1e-3, delta: float = 0.2, min_pixels: int = 10) -> dict:
    """Per setting ("same image", "other image") and class: the mean change of the outer loss
    per raised pixel and in how many images it rewards the first source.

    ``views``: ``(meta-train batch, another batch)`` pairs of one image each (``a``, ``b``,
    ``mask``), in the dtype of ``net`` (float64 for differences of ~1e-7 in losses of ~1e-2).
    """
    params = dict(net.named_parameters())
    table = {setting: {c: [] for c in classes} for setting in ("same image", "other image")}
    for train, other in views:
        mask = train["mask"].unsqueeze(1)
        base = torch.full_like(train["a"], 0.5)
        for setting, test in (("same image", train), ("other image", other)):
            ref = one_step_outer_loss(net, params, train, test, base, eta, "tdfusion", ir_classes)
            for k, c in enumerate(classes):
                sel = (mask == k).to(base.dtype)
                if sel.sum() >= min_pixels:
                    raised = one_step_outer_loss(net, params, train, test, base + delta * sel, eta, "tdfusion",
                                                 ir_classes)
                    table[setting][c].append((raised - ref) / float(sel.sum()))
    return {s: {c: {"mean_per_pixel": float(np.mean(v)), "rewards_ir": int(np.sum(np.array(v) < 0)), "of": len(v)}
                for c, v in row.items() if v} for s, row in table.items()}
