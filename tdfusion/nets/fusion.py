"""The fusion network F (ReFusion architecture, Bai et al., IJCV 2024, Sec. 3.4 / Fig. 3).

Two sources -> one fused luminance image in (0, 1):

    per source: 3x3 conv embedding, ``num_blocks`` Restormer blocks at ``dim`` channels
    adaptive fusion module (cross attention between the branches, then a gate)
    ``num_blocks`` Restormer blocks at ``2 * dim``
    3x3 conv -> LeakyReLU -> 3x3 conv -> sigmoid

At the default size (dim 16, 2 blocks, 8 heads, FFN expansion 2) it has 59,856
parameters and loads the published ReFusion checkpoints
(see :mod:`tdfusion.checkpoint`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import ConvProjection, RestormerBlock, transposed_attention
from .registry import register_model

__all__ = ["AdaptiveFusion", "FusionNet"]


class AdaptiveFusion(nn.Module):
    """Adaptive fusion module (AFM): ``(B, C, H, W) x2 -> (B, 2C, H, W)``.

    1. Cross attention: branch a's values are re-weighted by attention between b's
       queries and a's keys, and vice versa; each result is added to its branch.
    2. Gate: from the concatenated branches, a 1x1+depthwise expansion produces two
       gates; each branch (expanded 4x) is multiplied by GELU of its gate and projected
       back to 2C. The output is the concatenation plus both gated projections.
    """

    def __init__(self, channels: int, heads: int):
        super().__init__()
        self.heads = heads
        self.temperature_a = nn.Parameter(torch.ones(heads, 1, 1))
        self.temperature_b = nn.Parameter(torch.ones(heads, 1, 1))
        self.qkv_a = ConvProjection(channels, channels * 3)
        self.qkv_b = ConvProjection(channels, channels * 3)
        self.cross_a = nn.Conv2d(channels, channels, 1, bias=False)
        self.cross_b = nn.Conv2d(channels, channels, 1, bias=False)
        self.gate = ConvProjection(channels * 2, channels * 8)
        self.expand_a = ConvProjection(channels, channels * 4)
        self.expand_b = ConvProjection(channels, channels * 4)
        self.proj_a = nn.Conv2d(channels * 4, channels * 2, 1, bias=False)
        self.proj_b = nn.Conv2d(channels * 4, channels * 2, 1, bias=False)

    def forward(self, xa: torch.Tensor, xb: torch.Tensor) -> torch.Tensor:
        qa, ka, va = self.qkv_a(xa).chunk(3, dim=1)
        qb, kb, vb = self.qkv_b(xb).chunk(3, dim=1)
        xa = xa + self.cross_a(transposed_attention(qb, ka, va, self.temperature_a, self.heads))
        xb = xb + self.cross_b(transposed_attention(qa, kb, vb, self.temperature_b, self.heads))
        joint = torch.cat([xa, xb], dim=1)
        gate_a, gate_b = self.gate(joint).chunk(2, dim=1)
        ga = F.gelu(gate_a) * self.expand_a(xa)
        gb = F.gelu(gate_b) * self.expand_b(xb)
        return joint + self.proj_a(ga) + self.proj_b(gb)


@register_model("fusion")
class FusionNet(nn.Module):
    """Fusion network F: ``(B, 1, H, W), (B, 1, H, W) -> (B, 1, H, W)`` in (0, 1).

    Args:
        dim: feature channels of each source branch (the decoder runs at ``2 * dim``).
        num_blocks: Restormer blocks per encoder branch and in the decoder.
        heads: attention heads (must divide ``dim``).
        ffn_expansion: hidden-width factor of the gated feed-forward networks.
    """

    def __init__(self, dim: int = 16, num_blocks: int = 2, heads: int = 8,
                 ffn_expansion: float = 2.0):
        super().__init__()
        self.config = dict(dim=dim, num_blocks=num_blocks, heads=heads, ffn_expansion=ffn_expansion)
        self.embed_a = nn.Conv2d(1, dim, 3, padding=1, bias=False)
        self.embed_b = nn.Conv2d(1, dim, 3, padding=1, bias=False)
        self.encoder_a = nn.Sequential(*[RestormerBlock(dim, heads, ffn_expansion) for _ in range(num_blocks)])
        self.encoder_b = nn.Sequential(*[RestormerBlock(dim, heads, ffn_expansion) for _ in range(num_blocks)])
        self.afm = AdaptiveFusion(dim, heads)
        self.decoder = nn.Sequential(*[RestormerBlock(2 * dim, heads, ffn_expansion) for _ in range(num_blocks)])
        self.head = nn.Sequential(
            nn.Conv2d(2 * dim, dim, 3, padding=1, bias=False),
            nn.LeakyReLU(0.01),
            nn.Conv2d(dim, 1, 3, padding=1, bias=False),
        )

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        xa = self.encoder_a(self.embed_a(a))
        xb = self.encoder_b(self.embed_b(b))
        return torch.sigmoid(self.head(self.decoder(self.afm(xa, xb))))
