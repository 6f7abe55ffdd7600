"""The meta-gradient of G without differentiating through a gradient (same value, less work).

The straightforward meta iteration (:func:`tdfusion.meta.objectives.meta_gradient_second_order`) builds the
inner gradient ``g = dL_f/dtheta_F`` with ``create_graph=True`` and backpropagates the
outer task loss through it: a second-order pass through the whole fusion network that
keeps every intermediate of the forward AND of the backward pass alive.

The same number follows from the chain rule in three first-order pieces. With
``theta_F' = theta_F - eta * g(theta_G)`` and ``u = dL_outer/dtheta_F'`` (ordinary
backward at ``theta_F'``)::

    dL_outer/dtheta_G = -eta * (dg/dtheta_G)^T u = -eta * d/dtheta_G [ u . g(theta_G) ]

and, because L_f depends on theta_F only through the fused crop ``F = Fnet(theta_F)``
and on theta_G only through G's weight maps ``w = G(theta_G)``::

    u . g = u . dL_f/dtheta_F = <dL_f/dF (F, w), Fdot>,    Fdot = (dF/dtheta_F) u

``Fdot`` is one forward-mode derivative (``torch.func.jvp``) of the fusion network along
``u``: an image, computed without storing a graph. What remains is a scalar function of
``w`` only: its gradient needs a second-order pass through the *loss formula*
(a few Sobel filters and products on images), not through the network, then an ordinary
backward pass through G. Nothing is approximated: tests/test_speed_equivalence.py checks
the result against the straightforward formulation in float64.

This module knows nothing about a particular task: the task enters through
``task.loss`` exactly as in the engine.
"""
from __future__ import annotations

import warnings
from typing import Any, Mapping

import torch
from torch import nn
from torch.func import functional_call, jvp

from .objectives import (LossSettings, Params, TaskStep, loss_weights, meta_logs, task_inner_update,
                     task_objective, trainable)

with warnings.catch_warnings():
    # torch builds its forward-mode decompositions with torch.jit.script when the module is
    # first imported (by the first jvp), and torch itself warns that this is deprecated:
    # a FutureWarning in every training run that no user can act on. Import it quietly.
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated", category=FutureWarning)
    try:
        import torch._decomp.decompositions_for_jvp  # noqa: F401
    except ImportError:  # a torch without it builds nothing at import time
        pass

__all__ = ["meta_gradient_jvp"]


def meta_gradient_jvp(fusion_net: nn.Module, f_params: Mapping[str, torch.Tensor], lossgen: nn.Module,
                      g_params: Mapping[str, torch.Tensor], task, task_net: nn.Module,
                      t_params: Mapping[str, torch.Tensor], train_batch: Mapping[str, Any],
                      test_batch: Mapping[str, Any], inner_lr: float, task_inner_lr: "float | TaskStep",
                      settings: LossSettings, reduce_grads=None,
                      timings: dict[str, float] | None = None) -> tuple[Params, dict[str, float]]:
    """Drop-in for :func:`tdfusion.meta.objectives.meta_gradient_second_order`: same arguments, same result.

    ``reduce_grads`` (optional) averages gradient lists across data-parallel processes; it
    is applied to the inner gradient of F and T, to ``u`` and to the result, which gives
    the meta-gradient of the global batch. ``timings``: if a dict is given, the wall time
    of each phase (``inner``, ``task_inner``, ``outer``, ``jvp``, ``lossgen``) is stored in it.
    """
    clock = _Clock(timings)
    a, b = train_batch["crop_a"], train_batch["crop_b"]
    f_names = list(trainable(f_params))
    frozen_f = {k: v.detach() for k, v in f_params.items()}

    # 1. inner gradient of F, first order; G's weights are constants here. G's graph is
    # kept for step 5 (cheaper than running G twice; it is a first-order graph).
    g_names = list(trainable(g_params))
    weights = loss_weights(lossgen, g_params, a, b, settings, grad=bool(g_names))
    leaves = {n: frozen_f[n].clone().requires_grad_(True) for n in f_names}
    fused = functional_call(fusion_net, {**frozen_f, **leaves}, (a, b))
    inner = settings.loss(fused, a, b, weights.detach())
    g = list(torch.autograd.grad(inner["loss"], [leaves[n] for n in f_names]))
    if reduce_grads is not None:
        g = reduce_grads(g)
    stepped = dict(frozen_f)
    for n, gn in zip(f_names, g):
        stepped[n] = frozen_f[n] - inner_lr * gn
    del leaves, fused, g
    clock("inner")

    # 2. the task network's ordinary step, exactly as in the engine.
    with torch.no_grad():
        fused_train = functional_call(fusion_net, frozen_f, (train_batch["a"], train_batch["b"]))
    t_stepped, task_train_loss = task_inner_update(task, task_net, t_params, fused_train, train_batch,
                                                   task_inner_lr, reduce_grads)
    clock("task_inner")

    # 3. u = dL_outer/dtheta_F' (first order).
    leaves = {n: stepped[n].requires_grad_(True) for n in f_names}
    fused_test = functional_call(fusion_net, stepped, (test_batch["a"], test_batch["b"]))
    outer = task_objective(task, task_net, t_stepped, fused_test, test_batch, copy_buffers=True)
    u = list(torch.autograd.grad(outer, [leaves[n] for n in f_names], allow_unused=True))
    u = [x if x is not None else torch.zeros_like(leaves[n]) for n, x in zip(f_names, u)]
    if reduce_grads is not None:
        u = reduce_grads(u)
    del leaves, fused_test
    clock("outer")

    # 4. Fdot = (dF/dtheta_F) u on the meta-train crops, forward mode.
    def fuse(trainable_params):
        return functional_call(fusion_net, {**frozen_f, **trainable_params}, (a, b))

    fused, fused_dot = jvp(fuse, ({n: frozen_f[n] for n in f_names},),
                           ({n: x.detach() for n, x in zip(f_names, u)},))
    clock("jvp")

    # 5. d/dtheta_G of -eta <dL_f/dF (F, w(theta_G)), Fdot>.
    if weights.requires_grad and g_names:
        fused = fused.detach().requires_grad_(True)
        loss = settings.loss(fused, a, b, weights)["loss"]
        (dloss_dfused,) = torch.autograd.grad(loss, fused, create_graph=True)
        directional = (dloss_dfused * fused_dot.detach()).sum()
        grads = torch.autograd.grad(-inner_lr * directional, [g_params[n] for n in g_names], allow_unused=True)
    else:
        grads = [None] * len(g_names)
    grads = [x if x is not None else torch.zeros_like(g_params[n]) for n, x in zip(g_names, grads)]
    if reduce_grads is not None:
        grads = reduce_grads(grads)
    clock("lossgen")

    return dict(zip(g_names, grads)), meta_logs(inner, task_train_loss, outer)


class _Clock:
    """Accumulates wall time per phase into a dict (no-op without one)."""

    def __init__(self, out: dict[str, float] | None):
        import time

        self._now = time.perf_counter
        self.out, self.t = out, self._now()

    def __call__(self, phase: str) -> None:
        if self.out is not None:
            now = self._now()
            self.out[phase] = self.out.get(phase, 0.0) + now - self.t
            self.t = now

