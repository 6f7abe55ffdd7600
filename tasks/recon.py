"""Reconstruction task (ReFusion): recover both sources from the fused image.

The task network R maps the fused image to ``(A_hat, B_hat)``; a fusion loss that makes
both reconstructable keeps the information of both sources (ReFusion, IJCV 2024,
Sec. 3.2-3.3). The loss (ReFusion Eq. 4) uses a pixel-wise *max* over the two
sources rather than a sum, so neither source can be reconstructed at the other's
expense (the paper's ablation IV)::

    L_r = mean_ij max_k (A_hat_k - A_k)^2 + alpha * mean_ij max_k (|gx(A_hat_k) - gx(A_k)| + |gy(A_hat_k) - gy(A_k)|)

R's architecture is not published; ours mirrors the fusion network's building blocks:
a 3x3 conv embedding and ``num_blocks`` shared Restormer blocks, then two branches of
``num_blocks`` blocks each, each ending in 3x3 conv -> LeakyReLU -> 3x3 conv -> sigmoid.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

import torch
from torch import nn

from tdfusion.errors import TDFusionError
from tdfusion.nets.blocks import RestormerBlock
from tdfusion.ops import sobel

from . import register_task
from .base import Evaluator, TaskHead

__all__ = ["ReconstructionNet", "ReconstructionTask", "reconstruction_loss"]


def reconstruction_loss(recon_a: torch.Tensor, recon_b: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                        alpha: float = 1.0) -> torch.Tensor:
    """Pixel-wise-max reconstruction loss: ``(B, 1, H, W) x4 -> scalar``."""
    sq = torch.maximum((recon_a - a) ** 2, (recon_b - b) ** 2).mean()

    def grad_l1(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        (gx1, gy1), (gx2, gy2) = sobel(x), sobel(y)
        return (gx1 - gx2).abs() + (gy1 - gy2).abs()

    grad = torch.maximum(grad_l1(recon_a, a), grad_l1(recon_b, b)).mean()
    return sq + alpha * grad


class ReconstructionNet(nn.Module):
    """``(B, 1, H, W) -> (B, 2, H, W)``: channel 0 reconstructs A, channel 1 reconstructs B."""

    def __init__(self, dim: int = 16, num_blocks: int = 2, heads: int = 8, ffn_expansion: float = 2.0):
        super().__init__()
        self.embed = nn.Conv2d(1, dim, 3, padding=1, bias=False)
        self.shared = nn.Sequential(*[RestormerBlock(dim, heads, ffn_expansion) for _ in range(num_blocks)])

        def branch() -> nn.Sequential:
            return nn.Sequential(
                *[RestormerBlock(dim, heads, ffn_expansion) for _ in range(num_blocks)],
                nn.Conv2d(dim, dim, 3, padding=1, bias=False), nn.LeakyReLU(0.01),
                nn.Conv2d(dim, 1, 3, padding=1, bias=False), nn.Sigmoid())

        self.branch_a = branch()
        self.branch_b = branch()

    def forward(self, fused: torch.Tensor) -> torch.Tensor:
        x = self.shared(self.embed(fused))
        return torch.cat([self.branch_a(x), self.branch_b(x)], dim=1)


class _ReconEvaluator(Evaluator):
    """Mean reconstruction loss and PSNR of each reconstructed source."""

    def __init__(self, alpha: float):
        self.alpha = alpha
        self.n = 0
        self.sums = {"loss": 0.0, "psnr_a": 0.0, "psnr_b": 0.0}

    def update(self, predictions: torch.Tensor, batch: Mapping[str, Any]) -> None:
        a, b = batch["a"].to(predictions), batch["b"].to(predictions)
        for i in range(predictions.shape[0]):
            ra, rb = predictions[i:i + 1, 0:1], predictions[i:i + 1, 1:2]
            self.sums["loss"] += float(reconstruction_loss(ra, rb, a[i:i + 1], b[i:i + 1], self.alpha))
            for key, r, s in (("psnr_a", ra, a[i:i + 1]), ("psnr_b", rb, b[i:i + 1])):
                mse = float(((r - s) ** 2).mean().clamp_min(1e-12))
                self.sums[key] += 10.0 * torch.log10(torch.tensor(1.0 / mse)).item()
            self.n += 1

    def compute(self) -> dict[str, Any]:
        return {k: v / max(self.n, 1) for k, v in self.sums.items()}


@register_task
class ReconstructionTask(TaskHead):
    """``recon``: ReFusion's source-reconstruction objective as a task head."""

    name = "recon"
    target_kind = "none"
    honours_trust_weights = True
    defaults = {"dim": 16, "num_blocks": 2, "heads": 8, "ffn_expansion": 2.0, "alpha": 1.0,
                "weights": None}

    def build_network(self) -> nn.Module:
        c = self.config
        net = ReconstructionNet(c["dim"], c["num_blocks"], c["heads"], c["ffn_expansion"])
        if c["weights"]:
            from tdfusion.checkpoint import load_weights_file

            path = str(c["weights"])
            if not os.path.isfile(path):
                raise TDFusionError(f"{path}: no such task weights file")
            # Weights only, unless --trust-weights lets the file be unpickled (a pickled module).
            state = load_weights_file(path, "weights file", bool(c["trust_weights"]))
            if isinstance(state, dict) and isinstance(state.get("state_dict"), (dict, nn.Module)):
                state = state["state_dict"]
            if isinstance(state, nn.Module):
                state = state.state_dict()
            if not isinstance(state, dict):
                raise TDFusionError(f"{path}: not a state_dict (expected a mapping of names to tensors)")
            try:
                net.load_state_dict(state)
            except RuntimeError as exc:
                detail = " ".join(line.strip() for line in str(exc).strip().splitlines()[:2])
                raise TDFusionError(f"{path}: recon weights do not match this network ({detail})") from None
        return net

    def loss(self, net, params, fused, batch) -> torch.Tensor:
        out = self.forward(net, params, fused)
        return reconstruction_loss(out[:, 0:1], out[:, 1:2], batch["a"], batch["b"], self.config["alpha"])

    @torch.no_grad()
    def predict(self, net: nn.Module, fused: torch.Tensor) -> torch.Tensor:
        return net(self.adapt_input(fused))

    def fitness(self, metrics: Mapping[str, Any]) -> float | None:
        """Mean reconstruction PSNR of the two sources (dB)."""
        values = [metrics.get(k) for k in ("psnr_a", "psnr_b")]
        return None if any(v is None for v in values) else float(sum(values)) / 2

    def evaluator(self) -> Evaluator:
        return _ReconEvaluator(self.config["alpha"])
