"""Plain formulations of the networks: NCHW, the papers' equations, no optimisation.

What the modules computed before issue 7 (``F.normalize`` on q and k, attention then a
separate 1x1 projection, NCHW convolutions, one GELU on a strided half): kept as the
baseline of ``tdfusion bench --plain`` and as the reference the optimised modules are
tested against (tests/test_speed_equivalence.py). Each function takes the module's
parameter dict (``dict(net.named_parameters())``), so it runs the same weights.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..ops import sobel_magnitude
from .blocks import channel_layer_norm, transposed_attention

__all__ = ["plain_fusion", "plain_lossgen"]


def _conv_projection(x, p, name):
    out = F.conv2d(x, p[f"{name}.point.weight"])
    return F.conv2d(out, p[f"{name}.depth.weight"], padding=1, groups=out.shape[1])


def _restormer(x, p, name, heads):
    y = channel_layer_norm(x, p[f"{name}.norm1.weight"], p[f"{name}.norm1.bias"])
    q, k, v = _conv_projection(y, p, f"{name}.attn.qkv").chunk(3, dim=1)
    att = transposed_attention(q, k, v, p[f"{name}.attn.temperature"], heads)
    x = x + F.conv2d(att, p[f"{name}.attn.proj.weight"])
    y = channel_layer_norm(x, p[f"{name}.norm2.weight"], p[f"{name}.norm2.bias"])
    gate, value = _conv_projection(y, p, f"{name}.ffn.expand").chunk(2, dim=1)
    return x + F.conv2d(F.gelu(gate) * value, p[f"{name}.ffn.proj.weight"])


def _encoder(x, p, embed, encoder, blocks, heads):
    x = F.conv2d(x, p[f"{embed}.weight"], padding=1)
    for i in range(blocks):
        x = _restormer(x, p, f"{encoder}.{i}", heads)
    return x


def plain_fusion(p: dict, a: torch.Tensor, b: torch.Tensor, blocks: int, heads: int) -> torch.Tensor:
    """Fusion network F: ``(B, 1, H, W) x2 -> (B, 1, H, W)``, NCHW, as its equations are written."""
    xa = _encoder(a, p, "embed_a", "encoder_a", blocks, heads)
    xb = _encoder(b, p, "embed_b", "encoder_b", blocks, heads)
    qa, ka, va = _conv_projection(xa, p, "afm.qkv_a").chunk(3, dim=1)
    qb, kb, vb = _conv_projection(xb, p, "afm.qkv_b").chunk(3, dim=1)
    xa = xa + F.conv2d(transposed_attention(qb, ka, va, p["afm.temperature_a"], heads), p["afm.cross_a.weight"])
    xb = xb + F.conv2d(transposed_attention(qa, kb, vb, p["afm.temperature_b"], heads), p["afm.cross_b.weight"])
    joint = torch.cat([xa, xb], dim=1)
    gate_a, gate_b = _conv_projection(joint, p, "afm.gate").chunk(2, dim=1)
    x = (joint + F.conv2d(F.gelu(gate_a) * _conv_projection(xa, p, "afm.expand_a"), p["afm.proj_a.weight"])
         + F.conv2d(F.gelu(gate_b) * _conv_projection(xb, p, "afm.expand_b"), p["afm.proj_b.weight"]))
    for i in range(blocks):
        x = _restormer(x, p, f"decoder.{i}", heads)
    x = F.leaky_relu(F.conv2d(x, p["head.0.weight"], padding=1), 0.01)
    return torch.sigmoid(F.conv2d(x, p["head.2.weight"], padding=1))


def plain_lossgen(p: dict, a: torch.Tensor, b: torch.Tensor, blocks: int, heads: int, pairs: int,
                  with_gradients: bool) -> torch.Tensor:
    """Loss generator G: ``(B, 1, H, W) x2 -> (B, 2 * pairs, H, W)``."""
    def inputs(x):
        return torch.cat([x, sobel_magnitude(x)], dim=1) if with_gradients else x

    xa = _encoder(inputs(a), p, "embed_a", "encoder_a", blocks, heads)
    xb = _encoder(inputs(b), p, "embed_b", "encoder_b", blocks, heads)
    x = torch.cat([xa, xb], dim=1)
    for i in range(blocks):
        x = _restormer(x, p, f"joint.{i}", heads)
    x = F.prelu(F.conv2d(x, p["head.0.weight"], padding=1), p["head.1.weight"])
    logits = F.conv2d(x, p["head.2.weight"], padding=1)
    out = [logits[:, 2 * i:2 * i + 2].softmax(dim=1) for i in range(pairs)]
    return torch.cat(out, dim=1)
