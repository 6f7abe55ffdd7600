"""Fusing image pairs with a trained fusion network (library API behind ``tdfusion fuse``)."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .colour import merge_luma, pair_chroma, split_luma
from .io import Image

__all__ = ["fuse_luma", "fuse_images", "normalize_minmax", "to_integer"]


@torch.inference_mode()
def fuse_luma(net: nn.Module, ya: np.ndarray, yb: np.ndarray) -> np.ndarray:
    """Run the network on two luminance images: ``(H, W) x2 -> (H, W)`` float32 in (0, 1).

    This is the raw sigmoid output, what the published reference saves as ``.raw.npy``.
    """
    param = next(net.parameters())
    a = torch.from_numpy(np.ascontiguousarray(ya, dtype=np.float32))[None, None].to(param.device)
    b = torch.from_numpy(np.ascontiguousarray(yb, dtype=np.float32))[None, None].to(param.device)
    return net(a.to(param.dtype), b.to(param.dtype))[0, 0].float().cpu().numpy()


def normalize_minmax(y: np.ndarray) -> np.ndarray:
    """Stretch to [0, 1] (the reference inference does this before saving); constant stays."""
    lo, hi = float(y.min()), float(y.max())
    return (y - lo) / (hi - lo) if hi > lo else y


def to_integer(pixels: np.ndarray, bit_depth: int) -> np.ndarray:
    """[0, 1] float -> rounded uint8 (8) or uint16 (16)."""
    scale, dtype = (255.0, np.uint8) if bit_depth == 8 else (65535.0, np.uint16)
    return np.clip(np.rint(pixels * scale), 0, scale).astype(dtype)


def fuse_images(net: nn.Module, a: Image, b: Image, normalize: str = "minmax",
                gray: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Fuse two decoded images of the same size.

    Returns ``(raw, out)``: ``raw`` the network's ``(H, W)`` output, ``out`` the image to
    save as float32 in [0, 1], grey ``(H, W)`` or, when a source has colour and ``gray``
    is false, RGB ``(H, W, 3)`` with the fused chroma.
    """
    if a.size != b.size:
        raise ValueError(f"source sizes differ: {a.size} vs {b.size}")
    ya, ca = split_luma(a.pixels)
    yb, cb = split_luma(b.pixels)
    raw = fuse_luma(net, ya, yb)
    y = normalize_minmax(raw) if normalize == "minmax" else raw
    chroma = None if gray else pair_chroma(ca, cb)
    return raw, (y if chroma is None else merge_luma(y, chroma))
