"""Fusing image pairs with a trained fusion network (library API behind ``tdfusion fuse``).

A :class:`~tdfusion.nets.FusionNet` runs through the exact banded executor
(:mod:`tdfusion.nets.banded`): the same result as the module's forward pass (to float
rounding), several times faster on CPU, and with a memory bound for large images.
Other networks, and ``reference=True``, run the module's forward pass on the whole image.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .nets.banded import fuse_banded
from .colour import merge_luma, pair_chroma, split_luma
from .device import exact_float32
from .io import Image, to_integer
from .nets.fusion import FusionNet

__all__ = ["fuse_luma", "fuse_images", "normalize_minmax", "to_integer"]


@torch.inference_mode()
def fuse_luma(net: nn.Module, ya: np.ndarray, yb: np.ndarray, *, max_memory: int | str | None = None,
              chunk_rows: int | None = None, reference: bool = False) -> np.ndarray:
    """Run the network on two luminance images: ``(H, W) x2 -> (H, W)`` float32 in (0, 1).

    This is the raw sigmoid output, what the published reference saves as ``.raw.npy``.

    Args:
        max_memory: bound on the memory the network uses (bytes, or ``"4G"``, ``"800M"``);
            the image is processed in bands of rows sized to fit. Raises
            :class:`~tdfusion.errors.TDFusionError` when the image cannot fit.
        chunk_rows: rows per band (overrides ``max_memory``).
        reference: run the module's plain forward pass on the whole image instead.
    """
    param = next(net.parameters())
    a = torch.from_numpy(np.ascontiguousarray(ya, dtype=np.float32)).to(param.device, param.dtype)
    b = torch.from_numpy(np.ascontiguousarray(yb, dtype=np.float32)).to(param.device, param.dtype)
    if isinstance(net, FusionNet) and not reference:
        out = fuse_banded(net, a, b, band_rows=chunk_rows, max_memory=max_memory)
    else:
        with exact_float32():
            out = net(a[None, None], b[None, None])[0, 0]
    return out.float().cpu().numpy()


def normalize_minmax(y: np.ndarray) -> np.ndarray:
    """Stretch to [0, 1] (the reference inference does this before saving); constant stays."""
    lo, hi = float(y.min()), float(y.max())
    return (y - lo) / (hi - lo) if hi > lo else y


def fuse_images(net: nn.Module, a: Image, b: Image, normalize: str = "minmax",
                gray: bool = False, *, max_memory: int | str | None = None,
                chunk_rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Fuse two decoded images of the same size.

    Returns ``(raw, out)``: ``raw`` the network's ``(H, W)`` output, ``out`` the image to
    save as float32 in [0, 1], grey ``(H, W)`` or, when a source has colour and ``gray``
    is false, RGB ``(H, W, 3)`` with the fused chroma. ``max_memory``/``chunk_rows``:
    see :func:`fuse_luma`.
    """
    if a.size != b.size:
        raise ValueError(f"source sizes differ: {a.size} vs {b.size}")
    ya, ca = split_luma(a.pixels)
    yb, cb = split_luma(b.pixels)
    raw = fuse_luma(net, ya, yb, max_memory=max_memory, chunk_rows=chunk_rows)
    y = normalize_minmax(raw) if normalize == "minmax" else raw
    chroma = None if gray else pair_chroma(ca, cb)
    return raw, (y if chroma is None else merge_luma(y, chroma))
