"""The meta-learning objectives and updates: Algorithm 1 of TDFusion and ReFusion, task-agnostic.

Everything here is a pure function of parameter dicts, run through
:func:`torch.func.functional_call`; no module is mutated during the meta phase and
nothing touches the disk. The downstream task enters only through a
:class:`tdfusion.tasks.TaskHead` (its ``loss``), so the same code serves segmentation,
detection and reconstruction.

One meta iteration (learning of G):

1. inner update, meta-train batch::

       theta_F' = theta_F - eta * dL_f(F(crop), G(crop)) / dtheta_F     (graph kept: theta_F'(theta_G))
       theta_T' = theta_T - eta_T * dL_t(T(F(task view).detach())) / dtheta_T

2. outer update, meta-test batch: ``L_t(T'(F'(task view)))``, differentiated w.r.t.
   theta_G through theta_F' (second order). theta_F and theta_T are not changed.

Learning of F and T (N steps): F by L_f with G frozen (weights detached); T by L_t on
the detached fused image. The task loss never reaches F directly.

Batches are dicts from :mod:`tdfusion.data.views` (``crop_a``/``crop_b`` for L_f,
``a``/``b`` and targets for L_t).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
from torch import nn
from torch.func import functional_call

from .losses import FUSION_LOSSES, fusion_loss

__all__ = [
    "LossSettings", "Params", "TaskStep", "adam_task_step", "fixed_weights", "fusion_objective",
    "fusion_phase_task_loss", "inner_update", "loss_weights", "meta_gradient_second_order", "meta_objective",
    "params_of", "task_inner_update", "task_objective", "trainable",
]

Params = dict[str, torch.Tensor]
#: Maps a list of gradients to the list to use instead (e.g. averaged across processes).
GradReducer = Callable[[list[torch.Tensor]], list[torch.Tensor]]
#: T's inner step: ``(names, params, grads) -> {name: stepped tensor}`` for the named
#: trainable parameters (a gradient may be None: unused parameter, left as it is).
TaskStep = Callable[[list[str], Mapping[str, torch.Tensor], list], Params]


def adam_task_step(optimizer: torch.optim.Adam) -> TaskStep:
    """T's inner step as the released TDFusion code takes it: one step of T's own Adam.

    The code calls its Adam's ``step()``, evaluates the outer loss, then reloads T's
    weights from disk; the optimiser's moments and step count are not restored. So here
    the step is returned as new tensors (T's weights stay untouched, which is what the
    reload amounts to) while the optimiser's state advances in place and is kept.
    Hyper-parameters (lr, betas, eps, weight decay) are the optimiser's current ones.
    """
    group = optimizer.param_groups[0]
    if group.get("amsgrad") or group.get("maximize"):
        raise ValueError("adam_task_step supports plain Adam only")

    @torch.no_grad()
    def step(names: list[str], params: Mapping[str, torch.Tensor], grads: list) -> Params:
        lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        out = {}
        for n, g in zip(names, grads):
            p = params[n]
            if g is None:
                continue
            state = optimizer.state[p]
            if not state:
                state.update(step=torch.tensor(0.0), exp_avg=torch.zeros_like(p),
                             exp_avg_sq=torch.zeros_like(p))
            g = g + wd * p if wd else g
            state["step"] += 1
            t = float(state["step"])
            state["exp_avg"].mul_(b1).add_(g, alpha=1 - b1)
            state["exp_avg_sq"].mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = (state["exp_avg_sq"] / (1 - b2 ** t)).sqrt_().add_(eps)
            out[n] = p - lr / (1 - b1 ** t) * state["exp_avg"] / denom
        return out

    return step


@dataclass(frozen=True)
class LossSettings:
    """How L_f is formed: ``form`` ("tdfusion" | "refusion"), ``alpha``, ``intensity``
    ("paper" | "reference"), ``fixed`` (ablation: w = v = 1/2, G unused) and
    ``gradient_target`` (tdfusion form: "max", the paper's, | "blend" | "weighted_max",
    :mod:`tdfusion.meta.losses`)."""

    form: str = "tdfusion"
    alpha: float = 1.0
    intensity: str = "paper"
    fixed: bool = False
    gradient_target: str = "max"

    def loss(self, fused: torch.Tensor, a: torch.Tensor, b: torch.Tensor, weights: torch.Tensor) -> dict[str, torch.Tensor]:
        """L_f of ``fused`` under ``weights`` in this form: ``{"loss", "int", "grad"}``."""
        return fusion_loss(self.form, fused, a, b, weights, self.alpha, self.intensity, self.gradient_target)


def params_of(net: nn.Module) -> Params:
    """The module's own parameters (trainable or not) by name."""
    return dict(net.named_parameters())


def trainable(params: Mapping[str, torch.Tensor]) -> Params:
    return {k: p for k, p in params.items() if p.requires_grad}


def _with_buffers(net: nn.Module, params: Mapping[str, torch.Tensor], copy_buffers: bool) -> Params:
    # Under functional_call a BatchNorm in train mode updates the running statistics it
    # is given in place; handing it copies keeps the module untouched in the meta phase.
    buffers = {k: (b.clone() if copy_buffers else b) for k, b in net.named_buffers()}
    return {**buffers, **params}


def fixed_weights(a: torch.Tensor, pairs: int) -> torch.Tensor:
    """Constant 1/2 weights ``(B, 2 * pairs, H, W)`` for the fixed-weight ablation."""
    return torch.full((a.shape[0], 2 * pairs, *a.shape[2:]), 0.5, dtype=a.dtype, device=a.device)


def loss_weights(lossgen: nn.Module | None, g_params: Mapping[str, torch.Tensor] | None, a: torch.Tensor,
                 b: torch.Tensor, settings: LossSettings, grad: bool = True) -> torch.Tensor:
    """G's per-pixel weights for crops ``a``, ``b`` ``(B, 1, h, w)``, or the fixed 1/2 ones of
    the ablation (or without G); ``grad=False`` computes them without a graph."""
    if settings.fixed or lossgen is None:
        return fixed_weights(a, FUSION_LOSSES[settings.form][1])
    with torch.set_grad_enabled(grad):
        return functional_call(lossgen, dict(g_params), (a, b))


def fusion_objective(fusion_net: nn.Module, f_params: Mapping[str, torch.Tensor],
                     lossgen: nn.Module | None, g_params: Mapping[str, torch.Tensor] | None,
                     a: torch.Tensor, b: torch.Tensor, settings: LossSettings,
                     detach_weights: bool = False) -> dict[str, torch.Tensor]:
    """L_f of ``F(a, b)`` under G's weights; returns ``{"loss", "int", "grad", "fused", "weights"}``.

    Args:
        a, b: ``(B, 1, h, w)`` fusion-loss crops.
        detach_weights: G frozen (the fusion phase); otherwise the loss is differentiable
            in ``g_params`` (the inner update).
    """
    fused = functional_call(fusion_net, dict(f_params), (a, b))
    weights = loss_weights(lossgen, g_params, a, b, settings, grad=not detach_weights)
    out = settings.loss(fused, a, b, weights)
    return {**out, "fused": fused, "weights": weights}


def inner_update(fusion_net: nn.Module, f_params: Mapping[str, torch.Tensor], lossgen: nn.Module,
                 g_params: Mapping[str, torch.Tensor], batch: Mapping[str, Any], lr: float,
                 settings: LossSettings, reduce_grads: GradReducer | None = None) -> tuple[Params, dict[str, torch.Tensor]]:
    """One differentiable SGD step of F on L_f (meta-train crops).

    Returns ``(theta_F', losses)``; ``theta_F'`` is a function of ``g_params`` (the graph is
    kept, ``create_graph=True``), ready for the outer update. ``reduce_grads`` (optional)
    maps the list of gradients to the list actually stepped with, and must keep them
    differentiable (data parallelism averages them across processes).
    """
    out = fusion_objective(fusion_net, f_params, lossgen, g_params, batch["crop_a"], batch["crop_b"], settings)
    names = list(trainable(f_params))
    grads = torch.autograd.grad(out["loss"], [f_params[n] for n in names], create_graph=True)
    if reduce_grads is not None:
        grads = reduce_grads(list(grads))
    stepped = dict(f_params)
    for n, g in zip(names, grads):
        stepped[n] = f_params[n] - lr * g
    return stepped, out


def task_objective(task, task_net: nn.Module, t_params: Mapping[str, torch.Tensor], fused: torch.Tensor,
                   batch: Mapping[str, Any], copy_buffers: bool = False) -> torch.Tensor:
    """L_t of the task network under ``t_params`` on a fused batch."""
    return task.loss(task_net, _with_buffers(task_net, t_params, copy_buffers), fused, batch)


def fusion_phase_task_loss(fusion_net: nn.Module, task, task_net: nn.Module, batch: Mapping[str, Any]) -> torch.Tensor:
    """L_t of T (its own parameters) on F's fused task view, F held fixed: what the fusion
    phase trains T on after F's step."""
    with torch.no_grad():
        fused = fusion_net(batch["a"], batch["b"])
    return task_objective(task, task_net, params_of(task_net), fused, batch)


def task_inner_update(task, task_net: nn.Module, t_params: Mapping[str, torch.Tensor], fused: torch.Tensor,
                      batch: Mapping[str, Any], lr: float | TaskStep,
                      reduce_grads: GradReducer | None = None) -> tuple[Params, torch.Tensor]:
    """One ordinary (first-order) step of T: SGD, ``theta_T' = theta_T - lr * dL_t/dtheta_T``
    (the papers' equation), or, when ``lr`` is a :data:`TaskStep` such as
    :func:`adam_task_step`, that step.

    ``fused`` should be detached (the task loss never reaches F here). Returns
    ``(theta_T' detached, loss)``.
    """
    loss = task_objective(task, task_net, t_params, fused, batch, copy_buffers=True)
    names = list(trainable(t_params))
    if (not callable(lr) and lr == 0.0) or not names:
        return {k: p.detach() for k, p in t_params.items()}, loss.detach()
    grads = torch.autograd.grad(loss, [t_params[n] for n in names], allow_unused=True)
    if reduce_grads is not None:  # unused parameters count as zero so every caller reduces one layout
        grads = reduce_grads([g if g is not None else torch.zeros_like(t_params[n]) for n, g in zip(names, grads)])
    stepped = {k: p.detach() for k, p in t_params.items()}
    if callable(lr):
        stepped.update({n: v.detach() for n, v in lr(names, t_params, list(grads)).items()})
        return stepped, loss.detach()
    for n, g in zip(names, grads):
        if g is not None:
            stepped[n] = (t_params[n] - lr * g).detach()
    return stepped, loss.detach()


def meta_objective(fusion_net: nn.Module, f_stepped: Mapping[str, torch.Tensor], task, task_net: nn.Module,
                   t_stepped: Mapping[str, torch.Tensor], batch: Mapping[str, Any]) -> torch.Tensor:
    """Outer objective: ``L_t(T'(F'(a, b)))`` on the meta-test batch's task view."""
    fused = functional_call(fusion_net, dict(f_stepped), (batch["a"], batch["b"]))
    return task_objective(task, task_net, t_stepped, fused, batch, copy_buffers=True)


def meta_gradient_second_order(fusion_net: nn.Module, f_params: Mapping[str, torch.Tensor], lossgen: nn.Module,
                  g_params: Mapping[str, torch.Tensor], task, task_net: nn.Module,
                  t_params: Mapping[str, torch.Tensor], train_batch: Mapping[str, Any],
                  test_batch: Mapping[str, Any], inner_lr: float, task_inner_lr: float | TaskStep,
                  settings: LossSettings, reduce_grads: GradReducer | None = None) -> tuple[Params, dict[str, float]]:
    """d L_t(T'(F'(meta-test))) / d theta_G for one meta iteration (inner + outer update).

    Returns ``(gradients by G parameter name, scalar logs)``. Nothing is mutated.
    ``reduce_grads`` (optional, differentiable) is applied to the inner-step gradients of
    F and T and to the returned meta-gradient: with an average across data-parallel
    processes, every process gets the meta-gradient of the global batch.
    """
    f_stepped, inner = inner_update(fusion_net, f_params, lossgen, g_params, train_batch, inner_lr, settings,
                                    reduce_grads)
    with torch.no_grad():
        fused_train = functional_call(fusion_net, dict(f_params), (train_batch["a"], train_batch["b"]))
    t_stepped, task_train_loss = task_inner_update(task, task_net, t_params, fused_train, train_batch, task_inner_lr,
                                                   reduce_grads)
    outer = meta_objective(fusion_net, f_stepped, task, task_net, t_stepped, test_batch)
    names = list(trainable(g_params))
    grads = torch.autograd.grad(outer, [g_params[n] for n in names], allow_unused=True)
    grads = [g if g is not None else torch.zeros_like(g_params[n]) for n, g in zip(names, grads)]
    if reduce_grads is not None:
        grads = reduce_grads(grads)
    grads_by_name = dict(zip(names, grads))
    return grads_by_name, meta_logs(inner, task_train_loss, outer)


def meta_logs(inner: Mapping[str, torch.Tensor], task_train_loss, outer: torch.Tensor) -> dict[str, float]:
    """The logged losses of one meta iteration (both meta-gradient formulations)."""
    return {"loss_f": inner["loss"].item(), "loss_int": inner["int"].item(), "loss_grad": inner["grad"].item(),
            "loss_t_inner": float(task_train_loss), "loss_t_outer": float(outer.detach())}

