"""The loss generation module G (TDFusion) / loss proposal module P (ReFusion).

G looks at the two sources and proposes, per pixel, how much the fusion loss should
pull the fused image toward each of them. Its output is one or two softmax pairs:

* ``pairs=1`` (TDFusion): ``(w_a, w_b)``, intensity preferences.
* ``pairs=2`` (ReFusion): ``(w_a, w_b, v_a, v_b)``, intensity and gradient preferences;
  ReFusion's P also sees the sources' gradients, so ``with_gradients=True`` adds each
  source's Sobel magnitude ``|gx| + |gy|`` as a second input channel of its branch
  (the paper writes P(I_a, I_b, grad I_a, grad I_b); its training code is unreleased,
  so this input encoding is our choice).

Architecture (TDFusion Fig. 1 / the released LPN): per source a 3x3 conv embedding and
``num_blocks`` Restormer blocks, concatenation, ``num_blocks`` blocks at ``2 * dim``,
3x3 conv -> PReLU -> 3x3 conv to ``2 * pairs`` channels, softmax over the source axis.
"""
from __future__ import annotations

import torch
from torch import nn

from ..ops import sobel_magnitude
from .blocks import RestormerBlock, channels_last_view, embed_and_encode, from_channels_last
from .registry import register_model

__all__ = ["LossGenerator"]


@register_model("lossgen")
class LossGenerator(nn.Module):
    """``(B, 1, H, W), (B, 1, H, W) -> (B, 2 * pairs, H, W)``.

    Output channels are ``[w_a, w_b]`` or ``[w_a, w_b, v_a, v_b]``; each pair sums to 1
    at every pixel.
    """

    def __init__(self, dim: int = 16, num_blocks: int = 2, heads: int = 8,
                 ffn_expansion: float = 2.0, pairs: int = 1, with_gradients: bool = False):
        super().__init__()
        if pairs not in (1, 2):
            raise ValueError(f"pairs must be 1 (w) or 2 (w and v), got {pairs}")
        self.config = dict(dim=dim, num_blocks=num_blocks, heads=heads, ffn_expansion=ffn_expansion,
                           pairs=pairs, with_gradients=with_gradients)
        self.pairs = pairs
        self.with_gradients = with_gradients
        in_ch = 2 if with_gradients else 1
        self.embed_a = nn.Conv2d(in_ch, dim, 3, padding=1, bias=False)
        self.embed_b = nn.Conv2d(in_ch, dim, 3, padding=1, bias=False)
        self.encoder_a = nn.Sequential(*[RestormerBlock(dim, heads, ffn_expansion) for _ in range(num_blocks)])
        self.encoder_b = nn.Sequential(*[RestormerBlock(dim, heads, ffn_expansion) for _ in range(num_blocks)])
        self.joint = nn.Sequential(*[RestormerBlock(2 * dim, heads, ffn_expansion) for _ in range(num_blocks)])
        self.head = nn.Sequential(
            nn.Conv2d(2 * dim, dim, 3, padding=1, bias=False),
            nn.PReLU(),
            nn.Conv2d(dim, 2 * pairs, 3, padding=1, bias=False),
        )

    def _inputs(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, sobel_magnitude(x)], dim=1) if self.with_gradients else x

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        # Channels-last throughout (see tdfusion.nets.blocks); (B, C, H, W) views at both ends.
        xa = embed_and_encode(self._inputs(a), self.embed_a, self.encoder_a)
        xb = embed_and_encode(self._inputs(b), self.embed_b, self.encoder_b)
        x = torch.cat([xa, xb], dim=-1)
        for blk in self.joint:
            x = blk.forward_cl(x)
        logits = channels_last_view(self.head(from_channels_last(x)))  # (B, H, W, 2 pairs)
        bsz, h, w, _ = logits.shape
        # Channels are laid out [a, b] per pair; softmax across the source axis only.
        weights = logits.reshape(bsz, h, w, self.pairs, 2).softmax(dim=-1)
        return from_channels_last(weights.reshape(bsz, h, w, 2 * self.pairs))
