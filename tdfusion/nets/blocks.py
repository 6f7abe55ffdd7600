"""Restormer building blocks shared by the fusion network and the loss generator.

Every block is a plain ``nn.Module`` whose learnable state lives in registered
parameters only, so ``torch.func.functional_call`` can run it with any parameter
dict (the meta-learning engine relies on this). Modules take and return
``(B, C, H, W)`` tensors; inside, they compute on the channels-last view
``(B, H, W, C)`` of the same memory, where

* a 1x1 convolution is one matrix product (:func:`pointwise`),
* LayerNorm over channels is torch's fused kernel on the last axis (no transposed copy),
* depthwise 3x3 convolutions hit oneDNN's channels-last kernels (2-3x faster than NCHW
  on the project's CPU, see docs/performance.md),
* channel attention and its output projection fold into one ``C x C`` matrix per image
  (:func:`mixing_from_stats`), applied in a single batched matrix product.

The mathematics is that of the reference formulations kept here
(:func:`channel_layer_norm`, :func:`transposed_attention`); tests compare the two.
Tensors passed between blocks are ``(B, C, H, W)`` in channels-last memory format, so
the permutations below are free views.

References: Zamir et al., "Restormer: Efficient Transformer for High-Resolution
Image Restoration", CVPR 2022 (MDTA attention, gated-dconv FFN); the channel
sizes follow ReFusion (Bai et al., IJCV 2024).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

__all__ = [
    "apply_mixing",
    "attention_mixing",
    "channel_layer_norm",
    "channels_last_view",
    "conv3x3",
    "depthwise3x3",
    "embed_and_encode",
    "from_channels_last",
    "mixing_from_stats",
    "pixel_gram",
    "pixel_products",
    "pointwise",
    "transposed_attention",
    "ChannelLayerNorm",
    "ConvProjection",
    "TransposedAttention",
    "GatedFeedForward",
    "RestormerBlock",
]

_NORM_EPS = 1e-12  # F.normalize's default, used by the reference attention


# ---------------------------------------------------------------------------------------
# Layout helpers: (B, C, H, W) <-> (B, H, W, C) views of the same memory
# ---------------------------------------------------------------------------------------

def channels_last_view(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W) -> (B, H, W, C)``; a view (contiguous when ``x`` is channels-last)."""
    return rearrange(x, "b c h w -> b h w c")


def from_channels_last(x: torch.Tensor) -> torch.Tensor:
    """``(B, H, W, C) -> (B, C, H, W)`` view, channels-last memory format when ``x`` is contiguous."""
    return rearrange(x, "b h w c -> b c h w")


# ---------------------------------------------------------------------------------------
# Pure functions on channels-last tensors (B, H, W, C)
# ---------------------------------------------------------------------------------------

def pointwise(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Bias-free 1x1 convolution: ``(B, H, W, Cin)``, weight ``(Cout, Cin, 1, 1)`` -> ``(B, H, W, Cout)``."""
    return F.linear(x, weight.flatten(1))


def conv3x3(x: torch.Tensor, weight: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """3x3 convolution, zero padding 1: ``(B, H, W, Cin)`` -> ``(B, H, W, Cout)``.

    ``weight``: ``(Cout, Cin / groups, 3, 3)``; ``groups = Cin`` is a depthwise convolution.
    """
    y = F.conv2d(from_channels_last(x), weight, padding=1, groups=groups)
    return channels_last_view(y)


def depthwise3x3(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Depthwise 3x3 convolution: ``(B, H, W, C)``, weight ``(C, 1, 3, 3)`` -> ``(B, H, W, C)``."""
    return conv3x3(x, weight, groups=x.shape[-1])


def _sums_in_float16(x: torch.Tensor) -> bool:
    """Whether a product of ``x`` would run in float16: ``x`` is float16, or float16
    autocast is on for its device."""
    if x.dtype == torch.float16:
        return True
    kind = x.device.type
    return torch.is_autocast_enabled(kind) and torch.get_autocast_dtype(kind) == torch.float16


def pixel_products(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Sums over all pixels of ``x_i * y_j``: ``(B, H, W, m), (B, H, W, n) -> (B, m, n)``.

    Sums over a whole image leave float16's range (65504) as soon as features are of
    order one (256x256 pixels of magnitude 1 sum to 65536): in float16 (a ``.half()``
    network or fp16 autocast) they are taken in float32, which a float16 output would
    turn into inf and the attention into NaN (seen on an H200, ``tdfusion bench
    --precision float16``). bfloat16 has float32's range and keeps its speed.
    """
    mx = rearrange(x, "b h w m -> b (h w) m")
    my = rearrange(y, "b h w n -> b (h w) n")
    if _sums_in_float16(mx):
        with torch.autocast(mx.device.type, enabled=False):
            return mx.float().transpose(1, 2) @ my.float()
    return mx.transpose(1, 2) @ my


def pixel_gram(x: torch.Tensor) -> torch.Tensor:
    """Channel Gram matrix over all pixels of each image: ``(B, H, W, m) -> (B, m, m)``.

    Its diagonal holds each channel's squared L2 norm, so one batched product gives both
    ``q.k`` and the norms the attention needs. Measured forward+backward at 2x256x256:
    1.8x faster than ``q^T k`` plus ``vector_norm`` (a strided reduction), despite
    computing ``(2C)^2`` instead of ``C^2`` entries. Float32 in float16 (see
    :func:`pixel_products`).
    """
    return pixel_products(x, x)


def mixing_from_stats(qk: torch.Tensor, q_sq: torch.Tensor, k_sq: torch.Tensor, temperature: torch.Tensor,
                      proj: torch.Tensor, heads: int) -> torch.Tensor:
    """Channel attention of every head and the projection after it, as one matrix per image.

    With ``qhat``, ``khat`` the L2-normalised channels (over all pixels) and
    ``A_h = softmax(temperature_h * qhat_h khat_h^T)`` the ``(c, c)`` map of head ``h``
    (``c = C / heads``), the attention output followed by the 1x1 projection ``P`` is
    ``P @ blockdiag(A_1, ..., A_heads) @ v`` per pixel. This returns
    ``M = P @ blockdiag(A)``, so the caller applies attention and projection in one
    product and never materialises ``attn @ v``.

    The normalisation is applied to the ``C x C`` matrix of products instead of to
    ``q`` and ``k`` (``qhat.khat = q.k / (|q| |k|)``, with ``F.normalize``'s
    ``max(|.|, eps)``), which saves two full passes over the image. Products between
    channels of different heads are masked out.

    Args:
        qk: ``(B, C, C)`` sums over pixels of ``q_i k_j``.
        q_sq, k_sq: ``(B, C)`` sums over pixels of ``q_i^2`` and ``k_j^2``.
        temperature: ``(heads, 1, 1)``.
        proj: ``(C_out, C, 1, 1)`` or ``(C_out, C)``, the projection after the attention.
    Returns:
        ``(B, C_out, C)``.
    """
    c = qk.shape[-1]
    d = c // heads
    qn = q_sq.sqrt().clamp_min(_NORM_EPS)
    kn = k_sq.sqrt().clamp_min(_NORM_EPS)
    scale = repeat(temperature, "head 1 1 -> (head d) 1", d=d)
    logits = qk / (qn.unsqueeze(2) * kn.unsqueeze(1)) * scale
    head_of = torch.arange(c, device=qk.device) // d
    same_head = head_of.unsqueeze(1) == head_of.unsqueeze(0)
    attn = logits.masked_fill(~same_head, float("-inf")).softmax(dim=-1)  # block diagonal
    return proj.flatten(1).to(attn.dtype) @ attn


def attention_mixing(q: torch.Tensor, k: torch.Tensor, temperature: torch.Tensor,
                     proj: torch.Tensor, heads: int) -> torch.Tensor:
    """:func:`mixing_from_stats` for ``q``, ``k`` of shape ``(B, H, W, C)``; returns ``(B, C_out, C)``."""
    c = q.shape[-1]
    gram = pixel_gram(torch.cat([q, k], dim=-1))
    sq = gram.diagonal(dim1=1, dim2=2)
    return mixing_from_stats(gram[:, :c, c:], sq[:, :c], sq[:, c:], temperature, proj, heads)


def apply_mixing(x: torch.Tensor, v: torch.Tensor, mix: torch.Tensor) -> torch.Tensor:
    """``x + v @ mix^T`` per image: ``(B, H, W, C)``, ``(B, H, W, C)``, ``(B, C_out, C)`` -> ``(B, H, W, C_out)``."""
    pixels = "b h w c -> b (h w) c"
    # mix is float32 when the statistics were (float16, see pixel_products); values in [-|P|, |P|]
    out = torch.baddbmm(rearrange(x, pixels), rearrange(v, pixels), mix.transpose(1, 2).to(v.dtype))
    return rearrange(out, "b (h w) c -> b h w c", h=x.shape[1])


# ---------------------------------------------------------------------------------------
# Reference formulations (NCHW, as in the papers' code): kept for tests and readers
# ---------------------------------------------------------------------------------------

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
    y = F.layer_norm(channels_last_view(x), (x.shape[1],), weight, bias, eps)
    return from_channels_last(y)


def transposed_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                         temperature: torch.Tensor, heads: int) -> torch.Tensor:
    """Channel ("transposed") attention of Restormer's MDTA, plain formulation.

    The attention map is ``(C/heads) x (C/heads)`` per head, computed over all pixels,
    so its cost is linear in the number of pixels but global over the image. The
    modules use the equivalent :func:`attention_mixing`.

    Args:
        q, k, v: ``(B, C, H, W)``.
        temperature: ``(heads, 1, 1)`` learnable scale of each head's logits.
        heads: number of heads; ``C`` must be divisible by it.
    Returns:
        ``(B, C, H, W)``.
    """
    split = "b (head d) h w -> b head d (h w)"
    q = F.normalize(rearrange(q, split, head=heads), dim=-1)
    k = F.normalize(rearrange(k, split, head=heads), dim=-1)
    attn = (q @ k.transpose(-2, -1)) * temperature
    out = attn.softmax(dim=-1) @ rearrange(v, split, head=heads)
    return rearrange(out, "b head d (h w) -> b (head d) h w", h=v.shape[2])


# ---------------------------------------------------------------------------------------
# Modules: (B, C, H, W) in and out, parameters only
# ---------------------------------------------------------------------------------------

class ChannelLayerNorm(nn.Module):
    """LayerNorm with weight and bias over channels of a ``(B, C, H, W)`` tensor."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return from_channels_last(self.forward_cl(channels_last_view(x)))

    def forward_cl(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, C) -> (B, H, W, C)``."""
        return F.layer_norm(x, (x.shape[-1],), self.weight, self.bias, self.eps)


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
        return from_channels_last(self.forward_cl(channels_last_view(x)))

    def forward_cl(self, x: torch.Tensor, channels: slice | None = None) -> torch.Tensor:
        """``(B, H, W, C_in) -> (B, H, W, C_out)``; ``channels`` computes only those outputs."""
        point, depth = self.point.weight, self.depth.weight
        if channels is not None:
            point, depth = point[channels], depth[channels]
        return depthwise3x3(pointwise(x, point), depth)


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
        xl = channels_last_view(x)
        return from_channels_last(self.forward_cl(xl, torch.zeros_like(xl)))

    def forward_cl(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """``residual + MDTA(x)`` on ``(B, H, W, C)`` tensors (the add is fused in)."""
        c = x.shape[-1]
        # One split (its backward is one concatenation; two slices would each scatter
        # into a zero tensor of the full width, measured 2x slower).
        qk, v = self.qkv.forward_cl(x).split([2 * c, c], dim=-1)
        gram = pixel_gram(qk)  # q and k are adjacent: one product, no copy
        sq = gram.diagonal(dim1=1, dim2=2)
        mix = mixing_from_stats(gram[:, :c, c:], sq[:, :c], sq[:, c:], self.temperature, self.proj.weight,
                                self.heads)
        return apply_mixing(residual, v, mix)


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
        return from_channels_last(self.forward_cl(channels_last_view(x)))

    def forward_cl(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, C) -> (B, H, W, C)``."""
        hidden = self.proj.weight.shape[1]
        # Gate and value computed as two contiguous tensors: GELU on a strided channel
        # slice falls back to a scalar loop (about 3x slower, measured).
        gate = self.expand.forward_cl(x, slice(0, hidden))
        value = self.expand.forward_cl(x, slice(hidden, 2 * hidden))
        return pointwise(F.gelu(gate) * value, self.proj.weight)


class RestormerBlock(nn.Module):
    """Pre-norm transformer block: ``x + MDTA(LN(x))``, then ``x + GDFN(LN(x))``.

    ``(B, C, H, W) -> (B, C, H, W)`` (channels-last memory format).
    """

    def __init__(self, channels: int, heads: int = 8, ffn_expansion: float = 2.0):
        super().__init__()
        self.norm1 = ChannelLayerNorm(channels)
        self.attn = TransposedAttention(channels, heads)
        self.norm2 = ChannelLayerNorm(channels)
        self.ffn = GatedFeedForward(channels, ffn_expansion)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return from_channels_last(self.forward_cl(channels_last_view(x)))

    def forward_cl(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, C) -> (B, H, W, C)``."""
        x = self.attn.forward_cl(self.norm1.forward_cl(x), residual=x)
        return x + self.ffn.forward_cl(self.norm2.forward_cl(x))


def embed_and_encode(x: torch.Tensor, embed: nn.Conv2d, blocks: nn.Sequential) -> torch.Tensor:
    """A source branch: 3x3 embedding, then Restormer blocks, ``(B, C_in, H, W) -> (B, H, W, C)``."""
    x = conv3x3(channels_last_view(x).contiguous(), embed.weight)
    for blk in blocks:
        x = blk.forward_cl(x)
    return x
