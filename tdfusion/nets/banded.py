"""Exact banded inference of the fusion network, for speed and for images of any size.

The fusion network's attention is global: every MDTA / AFM head mixes channels with a
``(C/heads) x (C/heads)`` matrix computed from sums over ALL pixels (the products
``q^T k`` and the L2 norms of each channel of ``q`` and ``k``). Tiling the image
therefore changes the result. Everything else in the network is local (1x1 and 3x3
convolutions, LayerNorm over channels, GELU gates), so each attention stage can be
computed exactly in two passes over horizontal bands of rows:

1. *statistics*: per band, compute ``q`` and ``k`` (LayerNorm -> 1x1 -> depthwise 3x3,
   one row of halo) and add the band's products ``q^T k`` and squared norms to float64
   accumulators. After the last band, the attention map is known exactly and, folded
   with the output projection, becomes one ``C x C`` matrix ``M = P @ blockdiag(A)``.
2. *apply*: per band, compute ``v`` and the block's output ``x + M v`` followed by the
   local feed-forward part (two rows of halo in all), and write the band back.

Only the block inputs/outputs are kept at full resolution, in ONE channels-last buffer
of ``2 * dim`` channels: the two encoder branches live in its two channel halves, the
adaptive fusion module turns them into the joint features in place, and the decoder
works in place on it. Bands are written back in place; the two original rows the next
band needs as halo are kept aside before they are overwritten. Peak memory is therefore
``2 * dim * H * W`` floats plus a workspace proportional to ``band_rows * W``.

The same code is the fast CPU path for ordinary sizes: with bands of a few dozen rows,
the wide intermediate tensors (up to ``8 * dim`` channels) stay in cache instead of
streaming through memory, and the layout is channels-last throughout, the layout the
oneDNN depthwise and pointwise kernels are fastest in (see docs/performance.md).

Mathematically this is the network's forward pass; numerically it differs only by the
order of floating-point sums (verified to 1e-5 against the module and the published
reference outputs in tests/test_speed_equivalence.py).

The band height and the memory it needs are planned in :mod:`tdfusion.nets.band_plan`;
the arithmetic of one band of each stage is in :mod:`tdfusion.nets.band_kernels`.
"""
from __future__ import annotations

from typing import Iterator

import torch

from ..device import exact_float32
from . import band_kernels as bk
from .band_plan import keep_freed_memory, plan_bands
from .blocks import RestormerBlock, mixing_from_stats
from .fusion import AdaptiveFusion, FusionNet

__all__ = ["fuse_banded"]


# ---------------------------------------------------------------------------------------
# Bands and their attention statistics. Band tensors are (rows, W, C): channels-last
# without batch (the per-band arithmetic is in band_kernels).
# ---------------------------------------------------------------------------------------

def _bands(height: int, rows: int) -> Iterator[tuple[int, int]]:
    for r0 in range(0, height, rows):
        yield r0, min(r0 + rows, height)


class _AttentionStats:
    """Running sums, over bands, of what one transposed-attention map needs.

    The products ``sum_p q_i(p) k_j(p)`` and the squared norms ``sum_p q_i(p)^2``,
    ``sum_p k_j(p)^2``, in float64 so that summing many bands loses nothing against the
    single float32 reduction of the unchunked network; the map itself is
    :func:`~tdfusion.nets.blocks.mixing_from_stats`, as in the module.
    """

    def __init__(self, channels: int, heads: int, device: torch.device):
        self.heads = heads
        f64 = dict(dtype=torch.float64, device=device)
        self.qk = torch.zeros(channels, channels, **f64)
        self.q2 = torch.zeros(channels, **f64)
        self.k2 = torch.zeros(channels, **f64)

    def add(self, sums: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> None:
        """Add a band's ``(q^T k, |q|^2, |k|^2)`` (:func:`~tdfusion.nets.band_kernels.restormer_stats`)."""
        qk, q2, k2 = sums
        self.qk += qk
        self.q2 += q2
        self.k2 += k2

    def mixing(self, temperature: torch.Tensor, proj: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``M = P @ blockdiag(softmax_h(temperature_h * qhat_h khat_h^T))``: ``(C_out, C)``."""
        mix = mixing_from_stats(self.qk[None], self.q2[None], self.k2[None], temperature.double(),
                                proj.double(), self.heads)
        return mix[0].to(dtype)


# ---------------------------------------------------------------------------------------
# Network stages, each in two passes over bands
# ---------------------------------------------------------------------------------------

def _embed(src: torch.Tensor, weight: torch.Tensor, out: torch.Tensor, rows: int) -> None:
    """3x3 conv ``(H, W, 1) -> out (H, W, C)``."""
    height = src.shape[0]
    for r0, r1 in _bands(height, rows):
        lo, hi = max(r0 - 1, 0), min(r1 + 1, height)
        out[r0:r1] = bk.conv3x3_band(src[lo:hi], weight, 1, lo - (r0 - 1), (r1 + 1) - hi)


def _halo_rows(x: torch.Tensor, r0: int, r1: int, carry: torch.Tensor | None) -> tuple[torch.Tensor, int]:
    """Original rows ``[r0 - 2, r1 + 2)`` (clipped) of ``x``, whose rows above ``r0`` may
    already be overwritten: those come from ``carry``. Returns ``(rows, first row index)``."""
    height = x.shape[0]
    lo, hi = max(r0 - 2, 0), min(r1 + 2, height)
    if carry is None or lo == r0:
        return x[lo:hi].contiguous(), lo
    return torch.cat([carry, x[r0:hi]]), lo


def _apply_rows(r0: int, r1: int, lo: int, hi: int, height: int) -> tuple[bk.Rows, bk.Rows]:
    """Where an apply pass's band sits, for a band ``[r0, r1)`` whose halo rows ``[lo, hi)``
    were taken: the rows of ``y = x + M v`` (``[r0 - 1, r1 + 1)``, clipped) within the halo
    rows with the padding of v's convolution, then the band's rows within ``y`` with the
    padding of the feed-forward convolutions (see :func:`~tdfusion.nets.band_kernels.restormer_apply`)."""
    ya, yb = max(r0 - 1, 0), min(r1 + 1, height)
    return (ya - lo, yb - lo, lo - (ya - 1), (yb + 1) - hi), (r0 - ya, r1 - ya, ya - (r0 - 1), (r1 + 1) - yb)


def _restormer(x: torch.Tensor, blk: RestormerBlock, rows: int) -> None:
    """One Restormer block, in place on ``x`` ``(H, W, C)``."""
    height, _, c = x.shape
    att, ffn, n1, n2 = blk.attn, blk.ffn, blk.norm1, blk.norm2
    w_qkv, b_qkv = bk.fold_norm(n1.weight, n1.bias, att.qkv.point.weight)
    w_dw = att.qkv.depth.weight
    stats = _AttentionStats(c, att.heads, x.device)
    for r0, r1 in _bands(height, rows):  # pass 1: attention statistics
        lo, hi = max(r0 - 1, 0), min(r1 + 1, height)
        stats.add(bk.restormer_stats(x[lo:hi], n1.eps, w_qkv[:2 * c], b_qkv[:2 * c], w_dw[:2 * c],
                                    lo - (r0 - 1), (r1 + 1) - hi))
    mix = stats.mixing(att.temperature, att.proj.weight, x.dtype)

    w_exp, b_exp = bk.fold_norm(n2.weight, n2.bias, ffn.expand.point.weight)
    w_exp_dw, w_out = ffn.expand.depth.weight, ffn.proj.weight.flatten(1)
    carry = None
    for r0, r1 in _bands(height, rows):  # pass 2: attention output, then the feed-forward part
        xb, lo = _halo_rows(x, r0, r1, carry)
        hi = lo + xb.shape[0]
        out = bk.restormer_apply(xb, n1.eps, w_qkv[2 * c:], b_qkv[2 * c:], w_dw[2 * c:], mix,
                                n2.eps, w_exp, b_exp, w_exp_dw, w_out, *_apply_rows(r0, r1, lo, hi, height))
        carry = xb[max(r1 - 2, 0) - lo:r1 - lo].clone()
        x[r0:r1] = out


def _adaptive_fusion(joint: torch.Tensor, afm: AdaptiveFusion, rows: int) -> None:
    """The AFM, in place: ``joint`` ``(H, W, 2C)`` holds ``[xa, xb]`` and receives its output."""
    height, _, c2 = joint.shape
    c = c2 // 2
    xa, xb = joint[..., :c], joint[..., c:]
    wa, wa_dw = afm.qkv_a.point.weight, afm.qkv_a.depth.weight
    wb, wb_dw = afm.qkv_b.point.weight, afm.qkv_b.depth.weight
    stats_a = _AttentionStats(c, afm.heads, joint.device)  # queries of b, keys/values of a
    stats_b = _AttentionStats(c, afm.heads, joint.device)  # queries of a, keys/values of b
    for r0, r1 in _bands(height, rows):
        lo, hi = max(r0 - 1, 0), min(r1 + 1, height)
        for_a, for_b = bk.fusion_stats(xa[lo:hi], xb[lo:hi], wa[:2 * c], wa_dw[:2 * c], wb[:2 * c], wb_dw[:2 * c],
                                      lo - (r0 - 1), (r1 + 1) - hi)
        stats_a.add(for_a)
        stats_b.add(for_b)
    mix_a = stats_a.mixing(afm.temperature_a, afm.cross_a.weight, joint.dtype)
    mix_b = stats_b.mixing(afm.temperature_b, afm.cross_b.weight, joint.dtype)

    weights = (wa[2 * c:], wa_dw[2 * c:], wb[2 * c:], wb_dw[2 * c:], mix_a, mix_b,
               afm.gate.point.weight, afm.gate.depth.weight, afm.expand_a.point.weight, afm.expand_a.depth.weight,
               afm.expand_b.point.weight, afm.expand_b.depth.weight,
               afm.proj_a.weight.flatten(1), afm.proj_b.weight.flatten(1))
    carry = None
    for r0, r1 in _bands(height, rows):
        jb, lo = _halo_rows(joint, r0, r1, carry)
        hi = lo + jb.shape[0]
        out = bk.fusion_apply(jb, *weights, *_apply_rows(r0, r1, lo, hi, height))
        carry = jb[max(r1 - 2, 0) - lo:r1 - lo].clone()
        joint[r0:r1] = out


def _head(joint: torch.Tensor, head: torch.nn.Sequential, out: torch.Tensor, rows: int) -> None:
    """3x3 conv -> LeakyReLU -> 3x3 conv -> sigmoid, ``(H, W, 2C) -> out (H, W)``."""
    height = joint.shape[0]
    conv1, act, conv2 = head[0], head[1], head[2]
    for r0, r1 in _bands(height, rows):
        lo, hi = max(r0 - 2, 0), min(r1 + 2, height)
        ya, yb = max(r0 - 1, 0), min(r1 + 1, height)
        out[r0:r1] = bk.head(joint[lo:hi].contiguous(), conv1.weight, act.negative_slope, conv2.weight,
                            (lo - (ya - 1), (yb + 1) - hi), (ya - (r0 - 1), (r1 + 1) - yb))


@torch.inference_mode()
def fuse_banded(net: FusionNet, a: torch.Tensor, b: torch.Tensor, band_rows: int | None = None,
                max_memory: int | str | None = None) -> torch.Tensor:
    """Run :class:`FusionNet` on one pair, band by band, exactly.

    Args:
        net: the fusion network (its weights are read at call time; nothing is cached).
        a, b: ``(H, W)`` or ``(1, 1, H, W)`` luminance in [0, 1].
        band_rows: rows per band (see :func:`plan_bands`).
        max_memory: memory bound in bytes or as ``"4G"``; picks the band height.
    Returns:
        ``(H, W)`` fused luminance in (0, 1), on the network's device and dtype.
    """
    with exact_float32():
        return _fuse_banded(net, a, b, band_rows, max_memory)


def _fuse_banded(net: FusionNet, a: torch.Tensor, b: torch.Tensor, band_rows: int | None,
                 max_memory: int | str | None) -> torch.Tensor:
    if not isinstance(net, FusionNet):
        raise TypeError(f"banded inference runs FusionNet, not {type(net).__name__}")
    param = net.embed_a.weight
    a = a.reshape(a.shape[-2:]).to(param)
    b = b.reshape(b.shape[-2:]).to(param)
    if a.shape != b.shape:
        raise ValueError(f"source sizes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    height, width = a.shape
    plan = plan_bands(net, height, width, band_rows, max_memory, param.device, param.element_size())
    rows = plan.rows
    if param.device.type == "cpu":
        keep_freed_memory()
    dim = net.config["dim"]
    joint = torch.empty(height, width, 2 * dim, dtype=param.dtype, device=param.device)
    branches = ((a, net.embed_a, net.encoder_a, joint[..., :dim]),
                (b, net.embed_b, net.encoder_b, joint[..., dim:]))
    for src, embed, encoder, feats in branches:
        _embed(src.unsqueeze(-1), embed.weight, feats, rows)
        for blk in encoder:
            _restormer(feats, blk, rows)
    _adaptive_fusion(joint, net.afm, rows)
    for blk in net.decoder:
        _restormer(joint, blk, rows)
    out = torch.empty(height, width, dtype=param.dtype, device=param.device)
    _head(joint, net.head, out, rows)
    return out
