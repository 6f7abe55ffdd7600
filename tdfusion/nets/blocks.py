"""Restormer building blocks shared by the fusion network and the loss generator.

Every block is a plain ``nn.Module`` whose learnable state lives in registered
parameters only, so ``torch.func.functional_call`` can run it with any parameter
dict (the meta-learning engine relies on this).

References: Zamir et al., "Restormer: Efficient Transformer for High-Resolution
Image Restoration", CVPR 2022 (MDTA attention, gated-dconv FFN); the channel
sizes follow ReFusion (Bai et al., IJCV 2024).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "channel_layer_norm",
    "transposed_attention",
    "ChannelLayerNorm",
    "ConvProjection",
    "TransposedAttention",
    "GatedFeedForward",
    "RestormerBlock",
]


def channel_layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                       eps: float = 1e-5) -> torch.Tensor:
    """LayerNorm over the channel axis of an image tensor.

    Args:
        x: ``(B, C, H, W)``.
        weight, bias: ``(C,)``.
    Returns:
        ``(B, C, H, W)``, each pixel's channel vector normalised with the biased variance.
    """
    # F.layer_norm on a channels-last view is one fused kernel; computing mean/var by
    # hand on a (B, HW, C) copy is what made the reference slow.
    y = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), weight, bias, eps)
    return y.permute(0, 3, 1, 2)


def transposed_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                         temperature: torch.Tensor, heads: int) -> torch.Tensor:
    """Channel ("transposed") attention of Restormer's MDTA.

    The attention map is ``(C/heads) x (C/heads)`` per head, computed over all pixels,
    so its cost is linear in the number of pixels but global over the image.

    Args:
        q, k, v: ``(B, C, H, W)``.
        temperature: ``(heads, 1, 1)`` learnable scale of each head's logits.
        heads: number of heads; ``C`` must be divisible by it.
    Returns:
        ``(B, C, H, W)``.
    """
    b, c, h, w = q.shape
    shape = (b, heads, c // heads, h * w)
    q = F.normalize(q.reshape(shape), dim=-1)
    k = F.normalize(k.reshape(shape), dim=-1)
    attn = (q @ k.transpose(-2, -1)) * temperature
    out = attn.softmax(dim=-1) @ v.reshape(shape)
    return out.reshape(b, c, h, w)


class ChannelLayerNorm(nn.Module):
    """LayerNorm with weight and bias over channels of a ``(B, C, H, W)`` tensor."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_layer_norm(x, self.weight, self.bias, self.eps)


class ConvProjection(nn.Module):
    """Bias-free 1x1 projection followed by a 3x3 depthwise convolution.

    ``(B, C_in, H, W) -> (B, C_out, H, W)``; Restormer's way of mixing channels, then
    gathering a little local context per channel.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.point = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.depth = nn.Conv2d(out_channels, out_channels, 3, padding=1,
                               groups=out_channels, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.depth(self.point(x))


class TransposedAttention(nn.Module):
    """Multi-Dconv head transposed attention (MDTA): ``(B, C, H, W) -> (B, C, H, W)``."""

    def __init__(self, channels: int, heads: int):
        super().__init__()
        if channels % heads:
            raise ValueError(f"channels ({channels}) must be divisible by heads ({heads})")
        self.heads = heads
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.qkv = ConvProjection(channels, channels * 3)
        self.proj = nn.Conv2d(channels, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=1)
        return self.proj(transposed_attention(q, k, v, self.temperature, self.heads))


class GatedFeedForward(nn.Module):
    """Gated-dconv feed-forward network (GDFN): ``(B, C, H, W) -> (B, C, H, W)``.

    ``out = proj_out(gelu(x1) * x2)`` where ``x1, x2`` are the two halves of a
    1x1 + depthwise 3x3 expansion to ``2 * expansion * C`` channels.
    """

    def __init__(self, channels: int, expansion: float):
        super().__init__()
        hidden = int(channels * expansion)
        self.expand = ConvProjection(channels, hidden * 2)
        self.proj = nn.Conv2d(hidden, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = self.expand(x).chunk(2, dim=1)
        return self.proj(F.gelu(gate) * value)


class RestormerBlock(nn.Module):
    """Pre-norm transformer block: ``x + MDTA(LN(x))``, then ``x + GDFN(LN(x))``.

    ``(B, C, H, W) -> (B, C, H, W)``.
    """

    def __init__(self, channels: int, heads: int = 8, ffn_expansion: float = 2.0):
        super().__init__()
        self.norm1 = ChannelLayerNorm(channels)
        self.attn = TransposedAttention(channels, heads)
        self.norm2 = ChannelLayerNorm(channels)
        self.ffn = GatedFeedForward(channels, ffn_expansion)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))
