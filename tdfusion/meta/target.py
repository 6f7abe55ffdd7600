"""G trained in target space: the task loss of the image G's loss asks for (an extension).

The papers train G by the one-step meta objective (TDFusion Eq. 11, :mod:`.objectives`):
"if F took one gradient step on G's loss, how well would T do?". That objective credits a
pixel's weight through F's shared parameters, and one step of a shared network moves the
whole image, so on small scenes its credit is dominated by the many background pixels
(docs/results.md, "Why the order differs"). ``meta.objective: target`` asks G a question
that has no inner step:

    "if F reached the optimum of the loss G proposes, how well would T do?"

The per-pixel optimum of the intensity term ``w_a (F - A)^2 + w_b (F - B)^2`` is the blend
``F* = w_a A + w_b B`` (with ``loss.gradient_target: blend`` the gradient term has the
same optimum). So G is trained by

    L_target(theta_G) = L_t(T(w_a A + w_b B)),   (w_a, w_b) = G_theta(A, B),

with the current task network T (its parameters held), first order: one backward pass
through T into the blend and on into G. For ReFusion's form G proposes two pairs: the
intensity pair ``w`` (optimum: its blend) and the gradient pair ``v``, whose weighted L1
optimum picks, per pixel, the derivative of the source with the larger ``v``; its smooth
stand-in is the ``v`` blend. The objective is then the mean of the task loss of the two
blends, so ``v`` learns too. With no inner step there is no meta-train batch to take it
on: the iteration's meta-test batch is the data (G runs at the task's input size, so one
batch per iteration keeps the iteration about as costly as a one-step one). F and T are
not touched.

Pure functions over parameter dicts, like the rest of :mod:`tdfusion.meta`; the task
enters only through ``task.loss``.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn
from torch.func import functional_call

from .objectives import LossSettings, Params, task_objective, trainable

__all__ = ["meta_gradient_target", "target_blends", "target_objective"]


def target_blends(weights: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> list[torch.Tensor]:
    """The image each of G's weight pairs asks for.

    Args:
        weights: ``(B, 2 * pairs, H, W)`` laid out ``[w_a, w_b(, v_a, v_b)]``.
        a, b: ``(B, 1, H, W)``.
    Returns:
        one ``(B, 1, H, W)`` blend ``w_a * a + w_b * b`` per pair.
    """
    return [weights[:, 2 * k:2 * k + 1] * a + weights[:, 2 * k + 1:2 * k + 2] * b
            for k in range(weights.shape[1] // 2)]


def target_objective(lossgen: nn.Module, g_params: Mapping[str, torch.Tensor], task, task_net: nn.Module,
                     t_params: Mapping[str, torch.Tensor], batch: Mapping[str, Any]) -> torch.Tensor:
    """``mean over G's pairs of L_t(T(blend))`` on a batch's task view (``a``, ``b`` and
    targets); differentiable in ``g_params`` only (T's parameters are detached)."""
    weights = functional_call(lossgen, dict(g_params), (batch["a"], batch["b"]))
    frozen_t = {k: v.detach() for k, v in t_params.items()}
    losses = [task_objective(task, task_net, frozen_t, blend, batch, copy_buffers=True)
              for blend in target_blends(weights, batch["a"], batch["b"])]
    return torch.stack(losses).mean()


def meta_gradient_target(fusion_net: nn.Module, f_params: Mapping[str, torch.Tensor], lossgen: nn.Module,
                         g_params: Mapping[str, torch.Tensor], task, task_net: nn.Module,
                         t_params: Mapping[str, torch.Tensor], train_batch: Mapping[str, Any],
                         test_batch: Mapping[str, Any], inner_lr: float, task_inner_lr: Any,
                         settings: LossSettings, reduce_grads=None) -> tuple[Params, dict[str, float]]:
    """d L_target / d theta_G on the meta-test batch: a drop-in for
    :func:`tdfusion.meta.jvp.meta_gradient_jvp` (same arguments; F, the meta-train batch,
    the inner learning rates and the loss settings are not used: there is no inner step).

    Returns ``(gradients by G parameter name, {"loss_t_outer": the objective})``.
    """
    names = list(trainable(g_params))
    objective = target_objective(lossgen, g_params, task, task_net, t_params, test_batch)
    grads = torch.autograd.grad(objective, [g_params[n] for n in names], allow_unused=True)
    grads = [g if g is not None else torch.zeros_like(g_params[n]) for n, g in zip(names, grads)]
    if reduce_grads is not None:
        grads = reduce_grads(grads)
    return dict(zip(names, grads)), {"loss_t_outer": float(objective.detach())}
