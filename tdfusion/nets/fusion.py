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

from .blocks import (ConvProjection, RestormerBlock, apply_mixing, channels_last_view, embed_and_encode,
                     from_channels_last, mixing_from_stats, pixel_gram, pixel_products, pointwise)
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
        out = self.forward_cl(channels_last_view(xa), channels_last_view(xb))
        return from_channels_last(out)

    def forward_cl(self, xa: torch.Tensor, xb: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, C) x2 -> (B, H, W, 2C)``."""
        c = xa.shape[-1]
        qk_a, va = self.qkv_a.forward_cl(xa).split([2 * c, c], dim=-1)
        qk_b, vb = self.qkv_b.forward_cl(xb).split([2 * c, c], dim=-1)
        qa, ka = qk_a.split(c, dim=-1)
        qb, kb = qk_b.split(c, dim=-1)
        # Cross attention folded with its 1x1 projection (see blocks.mixing_from_stats);
        # squared norms from each branch's own Gram matrix, cross products q_b.k_a, q_a.k_b.
        sq_a = pixel_gram(qk_a).diagonal(dim1=1, dim2=2)  # |qa|^2, |ka|^2
        sq_b = pixel_gram(qk_b).diagonal(dim1=1, dim2=2)  # |qb|^2, |kb|^2
        cross_ba = pixel_products(qb, ka)
        cross_ab = pixel_products(qa, kb)
        mix_a = mixing_from_stats(cross_ba, sq_b[:, :c], sq_a[:, c:], self.temperature_a, self.cross_a.weight,
                                  self.heads)
        mix_b = mixing_from_stats(cross_ab, sq_a[:, :c], sq_b[:, c:], self.temperature_b, self.cross_b.weight,
                                  self.heads)
        xa = apply_mixing(xa, va, mix_a)
        xb = apply_mixing(xb, vb, mix_b)
        joint = torch.cat([xa, xb], dim=-1)
        wide = self.expand_a.point.weight.shape[0]
        # Each gate computed on its own so that GELU runs on contiguous memory.
        ga = F.gelu(self.gate.forward_cl(joint, slice(0, wide))) * self.expand_a.forward_cl(xa)
        gb = F.gelu(self.gate.forward_cl(joint, slice(wide, 2 * wide))) * self.expand_b.forward_cl(xb)
        return joint + pointwise(ga, self.proj_a.weight) + pointwise(gb, self.proj_b.weight)


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
        # Channels-last throughout (see tdfusion.nets.blocks); (B, 1, H, W) views at both ends.
        xa = embed_and_encode(a, self.embed_a, self.encoder_a)
        xb = embed_and_encode(b, self.embed_b, self.encoder_b)
        x = self.afm.forward_cl(xa, xb)
        for blk in self.decoder:
            x = blk.forward_cl(x)
        return torch.sigmoid(self.head(from_channels_last(x)))
