"""The per-band arithmetic of :mod:`tdfusion.nets.banded`, as pure functions.

Each function computes one band of one stage from the band's rows (with their halo) and
the stage's weights, and returns new tensors; the executor in :mod:`~tdfusion.nets.banded`
owns the loops over bands, the attention statistics and the in-place writes.

Band tensors are ``(rows, W, C)``: channels-last without the batch axis. Integer
arguments say where the band sits: ``pt``/``pb`` are the zero-padding rows of a 3x3
convolution at the image's top and bottom edge (:func:`conv3x3_band`); the other offsets
select rows of the band's halo.
"""
from __future__ import annotations


import torch
import torch.nn.functional as F
from einops import rearrange

from .blocks import _sums_in_float16, pixel_products, pointwise

__all__ = ["conv3x3_band", "fold_norm", "fusion_apply", "fusion_stats", "head", "normalize_channels",
           "restormer_apply", "restormer_stats"]

Rows = tuple[int, int, int, int]  # (first, last, pad_top, pad_bottom)


def conv3x3_band(x: torch.Tensor, weight: torch.Tensor, groups: int, pad_top: int, pad_bottom: int
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


Sums = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (q^T k, |q|^2, |k|^2) per channel, float64


def column_squares(x: torch.Tensor) -> torch.Tensor:
    """``(h, W, m) -> (m,)`` float64 sums of squares of each channel over the band."""
    return torch.square(rearrange(x, "h w c -> (h w) c")).sum(0).double()


def summable(x: torch.Tensor) -> torch.Tensor:
    """``x`` in a type whose sums over a band stay finite: float16 becomes float32 (a
    band's sums leave float16's range; the rule of :func:`~tdfusion.nets.blocks.pixel_products`).
    Converted once per band, before q and k are sliced from it."""
    return x.float() if _sums_in_float16(x) else x


def normalize_channels(x: torch.Tensor, eps: float) -> torch.Tensor:
    """LayerNorm over the last axis without its affine part: ``(..., C) -> (N, C)``.

    torch's kernel normalises row by row; with 16-32 channels a row is one or two
    vectors and the per-row overhead dominates: the mean and variance as products with
    a ``(C, 1)`` vector over the whole band take 0.3-0.6 of its time
    (BENCHMARKS.md, "Band kernels"). Two passes (centre, then the variance of the centred
    values) as torch's kernel does, so no precision is lost to cancellation.
    """
    c = x.shape[-1]
    m = x.reshape(-1, c)
    if m.dtype == torch.float16:  # the squares below would leave float16's range at |x - mean| > 256
        return F.layer_norm(m, (c,), eps=eps)
    mean_of = m.new_full((c, 1), 1.0 / c)
    d = m - m @ mean_of
    return d.mul_(torch.square(d).mm(mean_of).add_(eps).rsqrt_())


def fold_norm(norm_w: torch.Tensor, norm_b: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A LayerNorm's affine part folded into the 1x1 convolution after it:
    ``pointwise(LN(x), W) == bias + normalize_channels(x) @ W'^T``; returns ``(W', bias)``."""
    w = weight.flatten(1)
    return w * norm_w, w @ norm_b


def restormer_stats(xh: torch.Tensor, eps: float, w_qk: torch.Tensor, b_qk: torch.Tensor, w_qk_dw: torch.Tensor,
                    pt: int, pb: int) -> Sums:
    """A band with one row of halo -> what it adds to the block's attention: ``q^T k``
    ``(C, C)`` and the squared norms of q's and k's channels, in float64; ``(w_qk, b_qk)``
    is the projection with the block's first LayerNorm folded in.

    Only the ``C x C`` products are computed: the full Gram matrix of ``[q, k]`` (which
    holds the norms on its diagonal) costs four times the arithmetic, and in the band pass
    its product was the slower (BENCHMARKS.md, "Band kernels").
    """
    c = xh.shape[-1]
    qk = torch.addmm(b_qk, normalize_channels(xh, eps), w_qk.t()).view(*xh.shape[:-1], 2 * c)
    qk = summable(conv3x3_band(qk, w_qk_dw, 2 * c, pt, pb))
    squares = column_squares(qk)
    return pixel_products(qk[None, ..., :c], qk[None, ..., c:])[0].double(), squares[:c], squares[c:]


def restormer_apply(xb: torch.Tensor, eps1: float, w_v: torch.Tensor, b_v: torch.Tensor, w_v_dw: torch.Tensor,
                    mix: torch.Tensor, eps2: float, w_exp: torch.Tensor, b_exp: torch.Tensor,
                    w_exp_dw: torch.Tensor, w_out: torch.Tensor, v_rows: Rows, f_rows: Rows) -> torch.Tensor:
    """A Restormer block's output on one band, from the band with two rows of halo.

    The LayerNorms are folded into the projections after them (:func:`fold_norm`).
    ``v_rows``: the rows of ``xb`` where ``y = x + M v`` is computed, and the padding of
    v's depthwise convolution; ``f_rows``: the band's own rows within ``y``, and the
    padding of the feed-forward convolutions.
    """
    h, w, c = xb.shape
    ya, yb, pt, pb = v_rows
    v = torch.addmm(b_v, normalize_channels(xb, eps1), w_v.t()).view(h, w, c)
    v = conv3x3_band(v, w_v_dw, c, pt, pb)
    y = torch.addmm(xb[ya:yb].reshape(-1, c), v.reshape(-1, c), mix.t())
    t = normalize_channels(y, eps2)
    y = rearrange(y, "(h w) c -> h w c", h=yb - ya)
    r0, r1, pt, pb = f_rows
    hidden = w_out.shape[1]
    # Gate and value as separate contiguous tensors: GELU on a strided channel slice
    # runs a non-vectorised loop (3x slower, measured).
    gate = torch.addmm(b_exp[:hidden], t, w_exp[:hidden].t()).view(yb - ya, w, hidden)
    value = torch.addmm(b_exp[hidden:], t, w_exp[hidden:].t()).view(yb - ya, w, hidden)
    g = F.gelu(conv3x3_band(gate, w_exp_dw[:hidden], hidden, pt, pb))
    g = g.mul_(conv3x3_band(value, w_exp_dw[hidden:], hidden, pt, pb))
    out = y[r0:r1]  # y is this function's own tensor: the residual add goes in place
    out.view(-1, c).addmm_(g.view(-1, hidden), w_out.t())
    return out


def fusion_stats(xa: torch.Tensor, xb: torch.Tensor, wa_qk: torch.Tensor, wa_qk_dw: torch.Tensor,
                 wb_qk: torch.Tensor, wb_qk_dw: torch.Tensor, pt: int, pb: int) -> tuple[Sums, Sums]:
    """The AFM's attention sums (as :func:`restormer_stats`) on one band of both branches
    (one row of halo): for branch a's attention (queries of b, keys of a), then for branch
    b's (queries of a, keys of b)."""
    c = xa.shape[-1]
    qka = summable(conv3x3_band(pointwise(xa, wa_qk), wa_qk_dw, 2 * c, pt, pb))
    qkb = summable(conv3x3_band(pointwise(xb, wb_qk), wb_qk_dw, 2 * c, pt, pb))
    sq_a, sq_b = column_squares(qka), column_squares(qkb)  # |qa|^2 |ka|^2, |qb|^2 |kb|^2
    for_a = pixel_products(qkb[None, ..., :c], qka[None, ..., c:])[0].double(), sq_b[:c], sq_a[c:]
    for_b = pixel_products(qka[None, ..., :c], qkb[None, ..., c:])[0].double(), sq_a[:c], sq_b[c:]
    return for_a, for_b


def fusion_apply(jb: torch.Tensor, wa_v: torch.Tensor, wa_v_dw: torch.Tensor, wb_v: torch.Tensor,
                 wb_v_dw: torch.Tensor, mix_a: torch.Tensor, mix_b: torch.Tensor,
                 w_gate: torch.Tensor, w_gate_dw: torch.Tensor, w_ea: torch.Tensor, w_ea_dw: torch.Tensor,
                 w_eb: torch.Tensor, w_eb_dw: torch.Tensor, w_pa: torch.Tensor, w_pb: torch.Tensor,
                 v_rows: Rows, f_rows: Rows) -> torch.Tensor:
    """The AFM's output on one band of ``[xa, xb]`` (two rows of halo); rows as in
    :func:`restormer_apply`."""
    c = jb.shape[-1] // 2
    ya, yb, pt, pb = v_rows
    va = conv3x3_band(pointwise(jb[..., :c], wa_v), wa_v_dw, c, pt, pb)
    vb = conv3x3_band(pointwise(jb[..., c:], wb_v), wb_v_dw, c, pt, pb)
    core = jb[ya:yb]
    # y = [xa + M_a va, xb + M_b vb]
    y = torch.cat([torch.addmm(core[..., :c].reshape(-1, c), va.reshape(-1, c), mix_a.t()),
                   torch.addmm(core[..., c:].reshape(-1, c), vb.reshape(-1, c), mix_b.t())], dim=1)
    y = rearrange(y, "(h w) c -> h w c", h=yb - ya)
    r0, r1, pt, pb = f_rows
    wide = w_ea.shape[0]
    # each gate computed on its own so that GELU runs on contiguous data
    gate_a = conv3x3_band(pointwise(y, w_gate[:wide]), w_gate_dw[:wide], wide, pt, pb)
    gate_b = conv3x3_band(pointwise(y, w_gate[wide:]), w_gate_dw[wide:], wide, pt, pb)
    ea = conv3x3_band(pointwise(y[..., :c], w_ea), w_ea_dw, wide, pt, pb)
    eb = conv3x3_band(pointwise(y[..., c:], w_eb), w_eb_dw, wide, pt, pb)
    ga = F.gelu(gate_a).mul_(ea).reshape(-1, wide)
    gb = F.gelu(gate_b).mul_(eb).reshape(-1, wide)
    out = y[r0:r1]  # y is this function's own tensor: the residual adds go in place
    out.view(-1, 2 * c).addmm_(ga, w_pa.t()).addmm_(gb, w_pb.t())
    return out


def head(jh: torch.Tensor, w1: torch.Tensor, slope: float, w2: torch.Tensor, pads1: tuple[int, int],
         pads2: tuple[int, int]) -> torch.Tensor:
    """3x3 conv -> LeakyReLU -> 3x3 conv -> sigmoid on one band (two rows of halo) -> ``(rows, W)``."""
    h = F.leaky_relu(conv3x3_band(jh, w1, 1, *pads1), slope)
    return torch.sigmoid(conv3x3_band(h, w2, 1, *pads2)[..., 0])
