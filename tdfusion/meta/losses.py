"""Learnable fusion losses (pure functions).

Notation: ``F`` fused, ``A``/``B`` sources, all ``(B, 1, H, W)``; Sobel derivatives
``gx``, ``gy`` (:func:`tdfusion.ops.sobel`); means are over all pixels and images.

* TDFusion (CVPR 2025, Eq. 2-4)::

      L_f = mean(w_a (F - A)^2 + w_b (F - B)^2)
            + alpha * (mean|gx(F) - maxabs(gx(A), gx(B))| + mean|gy(F) - maxabs(gy(A), gy(B))|)

  where ``maxabs`` keeps, per pixel, the source derivative of larger magnitude (sign kept;
  ties go to A).

* ReFusion (IJCV 2024, Eq. 1-3)::

      L_f = mean(w_a (F - A)^2 + w_b (F - B)^2)
            + alpha * sum_{d in x,y} mean(v_a |g_d(F) - g_d(A)| + v_b |g_d(F) - g_d(B)|)

* TDFusion with G's weights in the gradient term too (``gradient_target``; extensions of
  tdfusion's, not in either paper: docs/fidelity.md). The target of ``g_d(F)`` is

  - ``"max"`` (the paper): the source derivative of larger magnitude;
  - ``"blend"``: the derivative of G's blend, ``g_d(w_a A + w_b B)``: both terms are then
    minimised by one image, ``F = w_a A + w_b B``;
  - ``"weighted_max"``: the source derivative of larger *weighted* magnitude,
    ``w_a |g_d(A)|`` against ``w_b |g_d(B)|``: the paper's target where G is undecided
    (w = 1/2), the source G prefers where it leans.

``intensity="reference"`` reproduces the released code, which weights the *residual*
(``mse(w * (A - F), 0)``) and so squares the weights; the papers' equation (default,
``"paper"``) does not.
"""
from __future__ import annotations

import torch

from ..ops import sobel

__all__ = ["FUSION_LOSSES", "GRADIENT_TARGETS", "blend_gradient_loss", "fusion_loss", "intensity_loss",
           "max_gradient_loss", "refusion_loss", "tdfusion_loss", "weighted_gradient_loss", "weighted_max_gradient_loss"]



def intensity_loss(fused: torch.Tensor, a: torch.Tensor, b: torch.Tensor, wa: torch.Tensor,
                   wb: torch.Tensor, form: str = "paper") -> torch.Tensor:
    """Per-pixel weighted squared error to each source.

    Args:
        fused, a, b, wa, wb: ``(B, 1, H, W)``.
        form: ``"paper"`` (weights) or ``"reference"`` (squared weights).
    Returns:
        scalar.
    """
    if form == "reference":
        wa, wb = wa * wa, wb * wb
    elif form != "paper":
        raise ValueError(f"intensity form must be 'paper' or 'reference', got {form!r}")
    return (wa * (fused - a) ** 2 + wb * (fused - b) ** 2).mean()


def max_gradient_loss(fused: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """L1 distance of F's Sobel derivatives to the larger-magnitude source derivative.

    ``(B, 1, H, W) x3 -> scalar``; x and y terms are averaged separately and summed.
    """
    total = fused.new_zeros(())
    for gf, ga, gb in zip(sobel(fused), sobel(a), sobel(b)):
        target = torch.where(ga.abs() >= gb.abs(), ga, gb)
        total = total + (gf - target).abs().mean()
    return total


def blend_gradient_loss(fused: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                        wa: torch.Tensor, wb: torch.Tensor) -> torch.Tensor:
    """L1 distance of F's Sobel derivatives to those of the blend ``wa * a + wb * b``.

    ``(B, 1, H, W) x5 -> scalar``; x and y terms averaged separately and summed.
    Differentiable in the weights (G is credited through both terms in the meta step).
    """
    total = fused.new_zeros(())
    for gf, gt in zip(sobel(fused), sobel(wa * a + wb * b)):
        total = total + (gf - gt).abs().mean()
    return total


def weighted_max_gradient_loss(fused: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                               wa: torch.Tensor, wb: torch.Tensor) -> torch.Tensor:
    """L1 distance of F's Sobel derivatives to the source derivative of larger weighted
    magnitude (``wa |g(a)|`` against ``wb |g(b)|``, ties to A; sign kept).

    ``(B, 1, H, W) x5 -> scalar``; x and y terms averaged separately and summed. With
    ``wa = wb`` it equals :func:`max_gradient_loss`. The choice is a hard selection: no
    gradient reaches the weights through it.
    """
    total = fused.new_zeros(())
    for gf, ga, gb in zip(sobel(fused), sobel(a), sobel(b)):
        target = torch.where(wa * ga.abs() >= wb * gb.abs(), ga, gb)
        total = total + (gf - target).abs().mean()
    return total


def weighted_gradient_loss(fused: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                           va: torch.Tensor, vb: torch.Tensor) -> torch.Tensor:
    """ReFusion's gradient term: per-pixel weighted L1 to each source's derivatives.

    ``(B, 1, H, W) x5 -> scalar``; x and y terms averaged separately and summed.
    """
    total = fused.new_zeros(())
    for gf, ga, gb in zip(sobel(fused), sobel(a), sobel(b)):
        total = total + (va * (gf - ga).abs() + vb * (gf - gb).abs()).mean()
    return total


#: The tdfusion form's gradient terms by ``loss.gradient_target``, all ``(F, A, B, w_a, w_b)``.
_GRADIENT_TERMS = {
    "max": lambda fused, a, b, wa, wb: max_gradient_loss(fused, a, b),
    "blend": blend_gradient_loss,
    "weighted_max": weighted_max_gradient_loss,
}
GRADIENT_TARGETS = tuple(_GRADIENT_TERMS)


def tdfusion_loss(fused: torch.Tensor, a: torch.Tensor, b: torch.Tensor, weights: torch.Tensor,
                  alpha: float = 1.0, intensity: str = "paper", gradient_target: str = "max") -> dict[str, torch.Tensor]:
    """TDFusion learnable loss. ``weights``: ``(B, 2, H, W)`` = ``[w_a, w_b]``;
    ``gradient_target``: one of :data:`GRADIENT_TARGETS` (module doc).

    Returns ``{"loss", "int", "grad"}`` (scalars).
    """
    wa, wb = weights[:, 0:1], weights[:, 1:2]
    l_int = intensity_loss(fused, a, b, wa, wb, intensity)
    try:
        term = _GRADIENT_TERMS[gradient_target]
    except KeyError:
        raise ValueError(f"gradient_target must be one of {', '.join(GRADIENT_TARGETS)}, "
                         f"got {gradient_target!r}") from None
    l_grad = term(fused, a, b, wa, wb)
    return {"loss": l_int + alpha * l_grad, "int": l_int, "grad": l_grad}


def refusion_loss(fused: torch.Tensor, a: torch.Tensor, b: torch.Tensor, weights: torch.Tensor,
                  alpha: float = 1.0, intensity: str = "paper", gradient_target: str = "max") -> dict[str, torch.Tensor]:
    """ReFusion learnable loss. ``weights``: ``(B, 4, H, W)`` = ``[w_a, w_b, v_a, v_b]``.
    Its gradient term is G's already (``v``): a ``gradient_target`` other than ``"max"``
    (which here means "the form's own term") is refused.

    Returns ``{"loss", "int", "grad"}`` (scalars).
    """
    if gradient_target != "max":
        raise ValueError("gradient_target is a variant of the tdfusion form; ReFusion's gradient term is "
                         "weighed by G already")
    l_int = intensity_loss(fused, a, b, weights[:, 0:1], weights[:, 1:2], intensity)
    l_grad = weighted_gradient_loss(fused, a, b, weights[:, 2:3], weights[:, 3:4])
    return {"loss": l_int + alpha * l_grad, "int": l_int, "grad": l_grad}


#: loss form -> (function, number of weight pairs G must produce)
FUSION_LOSSES = {"tdfusion": (tdfusion_loss, 1), "refusion": (refusion_loss, 2)}


def fusion_loss(form: str, fused: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                weights: torch.Tensor, alpha: float = 1.0, intensity: str = "paper",
                gradient_target: str = "max") -> dict[str, torch.Tensor]:
    """Dispatch to :func:`tdfusion_loss` or :func:`refusion_loss` by ``form``."""
    try:
        fn, _ = FUSION_LOSSES[form]
    except KeyError:
        raise ValueError(f"unknown fusion loss form {form!r}; known: {', '.join(FUSION_LOSSES)}") from None
    return fn(fused, a, b, weights, alpha, intensity, gradient_target)
