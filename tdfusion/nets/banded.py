"""Exact banded inference of the fusion network, for speed and for images of any size.

The fusion network's attention is global: every MDTA / AFM head mixes channels with a
``(C/heads) x (C/heads)`` matrix computed from sums over ALL pixels (the Gram matrix
``q k^T`` and the L2 norms of each channel of ``q`` and ``k``). Tiling the image
therefore changes the result. Everything else in the network is local (1x1 and 3x3
convolutions, LayerNorm over channels, GELU gates), so each attention stage can be
computed exactly in two passes over horizontal bands of rows:

1. *statistics*: per band, compute ``q`` and ``k`` (LayerNorm -> 1x1 -> depthwise 3x3,
   one row of halo) and add the band's Gram matrix and squared norms to float64
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

The band height and the memory it needs are planned in :mod:`tdfusion.nets.band_plan`.
"""
from __future__ import annotations

from typing import Iterator

import torch
import torch.nn.functional as F
from einops import rearrange

from ..device import exact_float32
from .band_plan import keep_freed_memory, plan_bands
from .blocks import RestormerBlock, mixing_from_stats, pointwise
from .fusion import AdaptiveFusion, FusionNet

__all__ = ["fuse_banded"]


# ---------------------------------------------------------------------------------------
# Band-level operators. Band tensors are (rows, W, C), i.e. channels-last without batch.
# ---------------------------------------------------------------------------------------

def _bands(height: int, rows: int) -> Iterator[tuple[int, int]]:
    for r0 in range(0, height, rows):
        yield r0, min(r0 + rows, height)


def _conv3x3(x: torch.Tensor, weight: torch.Tensor, groups: int, pad_top: int, pad_bottom: int
             ) -> torch.Tensor:
    """3x3 convolution of a band whose halo rows are included.

    ``x`` holds image rows ``[lo, hi)``; rows outside the image are the convolution's
    zero padding, added here (``pad_top``/``pad_bottom`` rows). Width is zero-padded
    as in the network. Returns ``(h - 2 + pad_top + pad_bottom, W, Cout)``.
    """
    # Border bands: let the convolution pad both sides and drop the output row that is
    # not wanted, instead of copying the band into a zero-padded tensor (F.pad).
    pad = 1 if (pad_top or pad_bottom) else 0
    # (h, W, C) contiguous is exactly a channels-last (1, C, h, W) tensor: no copy. Not
    # einops' "h w c -> 1 c h w": its batch axis gets a stride that conv2d reads as NCHW
    # memory, and the convolution copies and runs 10x slower (measured).
    y = F.conv2d(x.unsqueeze(0).permute(0, 3, 1, 2), weight, padding=(pad, 1), groups=groups)
    y = y[0].permute(1, 2, 0)  # contiguous when oneDNN kept channels-last
    if pad and not pad_top:
        y = y[1:]
    elif pad and not pad_bottom:
        y = y[:-1]
    return y.contiguous()


def _gram(x: torch.Tensor) -> torch.Tensor:
    """``(h, W, m) -> (m, m)`` float64 Gram matrix of the channels over the band's pixels.

    One matrix product gives the ``q.k`` products AND the squared norms (its diagonal);
    at these sizes it is 2-6x faster than a per-head batched product plus a strided
    norm reduction (measured), although it also computes unused cross-head entries.
    """
    m = rearrange(x, "h w m -> (h w) m")
    if m.dtype == torch.float16:  # a band's sums leave float16's range (see blocks.pixel_products)
        m = m.float()
    return (m.t() @ m).double()


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

    def add(self, gram: torch.Tensor, q: slice, k: slice) -> None:
        """Add a band's contribution, given the Gram matrix ``X^T X`` of the band's
        channels ``X`` (see :func:`_gram`) and where ``q`` and ``k`` sit among them."""
        self.qk += gram[q, k]
        diag = gram.diagonal()
        self.q2 += diag[q]
        self.k2 += diag[k]

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
        out[r0:r1] = _conv3x3(src[lo:hi], weight, 1, lo - (r0 - 1), (r1 + 1) - hi)


def _halo_rows(x: torch.Tensor, r0: int, r1: int, carry: torch.Tensor | None) -> tuple[torch.Tensor, int]:
    """Original rows ``[r0 - 2, r1 + 2)`` (clipped) of ``x``, whose rows above ``r0`` may
    already be overwritten: those come from ``carry``. Returns ``(rows, first row index)``."""
    height = x.shape[0]
    lo, hi = max(r0 - 2, 0), min(r1 + 2, height)
    if carry is None or lo == r0:
        return x[lo:hi].contiguous(), lo
    return torch.cat([carry, x[r0:hi]]), lo


def _restormer(x: torch.Tensor, blk: RestormerBlock, rows: int) -> None:
    """One Restormer block, in place on ``x`` ``(H, W, C)``."""
    height, _, c = x.shape
    att = blk.attn
    w_qkv, w_dw = att.qkv.point.weight, att.qkv.depth.weight
    stats = _AttentionStats(c, att.heads, x.device)
    for r0, r1 in _bands(height, rows):  # pass 1: attention statistics
        lo, hi = max(r0 - 1, 0), min(r1 + 1, height)
        qk = pointwise(blk.norm1.forward_cl(x[lo:hi]), w_qkv[:2 * c])
        qk = _conv3x3(qk, w_dw[:2 * c], 2 * c, lo - (r0 - 1), (r1 + 1) - hi)
        stats.add(_gram(qk), slice(0, c), slice(c, 2 * c))
    mix = stats.mixing(att.temperature, att.proj.weight, x.dtype)

    ffn = blk.ffn
    hidden = ffn.proj.weight.shape[1]
    w_exp, w_exp_dw, w_out = ffn.expand.point.weight, ffn.expand.depth.weight, ffn.proj.weight.flatten(1)
    carry = None
    for r0, r1 in _bands(height, rows):  # pass 2: attention output, then the feed-forward part
        xb, lo = _halo_rows(x, r0, r1, carry)
        hi = lo + xb.shape[0]
        ya, yb = max(r0 - 1, 0), min(r1 + 1, height)
        v = pointwise(blk.norm1.forward_cl(xb), w_qkv[2 * c:])
        v = _conv3x3(v, w_dw[2 * c:], c, lo - (ya - 1), (yb + 1) - hi)           # rows [ya, yb)
        y = torch.addmm(xb[ya - lo:yb - lo].reshape(-1, c), v.reshape(-1, c), mix.t())
        y = rearrange(y, "(h w) c -> h w c", h=yb - ya)
        t = blk.norm2.forward_cl(y)
        pt, pb = ya - (r0 - 1), (r1 + 1) - yb
        # Gate and value as separate contiguous tensors: GELU on a strided channel slice
        # runs a non-vectorised loop (3x slower, measured).
        gate = _conv3x3(pointwise(t, w_exp[:hidden]), w_exp_dw[:hidden], hidden, pt, pb)  # rows [r0, r1)
        g = F.gelu(gate).mul_(_conv3x3(pointwise(t, w_exp[hidden:]), w_exp_dw[hidden:], hidden, pt, pb))
        out = torch.addmm(y[r0 - ya:r1 - ya].reshape(-1, c), g.reshape(-1, hidden), w_out.t())
        carry = xb[max(r1 - 2, 0) - lo:r1 - lo].clone()
        x[r0:r1] = rearrange(out, "(h w) c -> h w c", h=r1 - r0)


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
        pt, pb = lo - (r0 - 1), (r1 + 1) - hi
        qka = _conv3x3(pointwise(xa[lo:hi], wa[:2 * c]), wa_dw[:2 * c], 2 * c, pt, pb)
        qkb = _conv3x3(pointwise(xb[lo:hi], wb[:2 * c]), wb_dw[:2 * c], 2 * c, pt, pb)
        gram = _gram(torch.cat([qka, qkb], dim=-1))  # channels: qa, ka, qb, kb
        stats_a.add(gram, slice(2 * c, 3 * c), slice(c, 2 * c))
        stats_b.add(gram, slice(0, c), slice(3 * c, 4 * c))
    mix_a = stats_a.mixing(afm.temperature_a, afm.cross_a.weight, joint.dtype)
    mix_b = stats_b.mixing(afm.temperature_b, afm.cross_b.weight, joint.dtype)

    w_gate, w_gate_dw = afm.gate.point.weight, afm.gate.depth.weight
    w_ea, w_ea_dw = afm.expand_a.point.weight, afm.expand_a.depth.weight
    w_eb, w_eb_dw = afm.expand_b.point.weight, afm.expand_b.depth.weight
    w_pa, w_pb = afm.proj_a.weight.flatten(1), afm.proj_b.weight.flatten(1)
    wide = w_ea.shape[0]
    carry = None
    for r0, r1 in _bands(height, rows):
        jb, lo = _halo_rows(joint, r0, r1, carry)
        hi = lo + jb.shape[0]
        ya, yb = max(r0 - 1, 0), min(r1 + 1, height)
        pt, pb = lo - (ya - 1), (yb + 1) - hi
        va = _conv3x3(pointwise(jb[..., :c], wa[2 * c:]), wa_dw[2 * c:], c, pt, pb)
        vb = _conv3x3(pointwise(jb[..., c:], wb[2 * c:]), wb_dw[2 * c:], c, pt, pb)
        core = jb[ya - lo:yb - lo]
        # y = [xa + M_a va, xb + M_b vb], rows [ya, yb)
        y = torch.cat([torch.addmm(core[..., :c].reshape(-1, c), va.reshape(-1, c), mix_a.t()),
                       torch.addmm(core[..., c:].reshape(-1, c), vb.reshape(-1, c), mix_b.t())], dim=1)
        y = rearrange(y, "(h w) c -> h w c", h=yb - ya)
        pt, pb = ya - (r0 - 1), (r1 + 1) - yb
        # rows [r0, r1); each gate computed on its own so that GELU runs on contiguous data
        gate_a = _conv3x3(pointwise(y, w_gate[:wide]), w_gate_dw[:wide], wide, pt, pb)
        gate_b = _conv3x3(pointwise(y, w_gate[wide:]), w_gate_dw[wide:], wide, pt, pb)
        ea = _conv3x3(pointwise(y[..., :c], w_ea), w_ea_dw, wide, pt, pb)
        eb = _conv3x3(pointwise(y[..., c:], w_eb), w_eb_dw, wide, pt, pb)
        ga = F.gelu(gate_a).mul_(ea).reshape(-1, wide)
        gb = F.gelu(gate_b).mul_(eb).reshape(-1, wide)
        out = torch.addmm(y[r0 - ya:r1 - ya].reshape(-1, c2), ga, w_pa.t())
        out.addmm_(gb, w_pb.t())
        carry = jb[max(r1 - 2, 0) - lo:r1 - lo].clone()
        joint[r0:r1] = rearrange(out, "(h w) c -> h w c", h=r1 - r0)


def _head(joint: torch.Tensor, head: torch.nn.Sequential, out: torch.Tensor, rows: int) -> None:
    """3x3 conv -> LeakyReLU -> 3x3 conv -> sigmoid, ``(H, W, 2C) -> out (H, W)``."""
    height = joint.shape[0]
    conv1, act, conv2 = head[0], head[1], head[2]
    for r0, r1 in _bands(height, rows):
        lo, hi = max(r0 - 2, 0), min(r1 + 2, height)
        ya, yb = max(r0 - 1, 0), min(r1 + 1, height)
        h = _conv3x3(joint[lo:hi].contiguous(), conv1.weight, 1, lo - (ya - 1), (yb + 1) - hi)
        h = F.leaky_relu(h, act.negative_slope)
        o = _conv3x3(h, conv2.weight, 1, ya - (r0 - 1), (r1 + 1) - yb)
        out[r0:r1] = torch.sigmoid(o[..., 0])


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
