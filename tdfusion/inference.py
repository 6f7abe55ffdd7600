"""Fusing image pairs with a trained fusion network (library API behind ``tdfusion fuse``).

A :class:`~tdfusion.nets.FusionNet` runs through the exact banded executor
(:mod:`tdfusion.nets.banded`): the same result as the module's forward pass (to float
rounding), several times faster on CPU, and with a memory bound for large images.
Other networks, and ``reference=True``, run the module's forward pass on the whole image.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from .nets.banded import fuse_banded
from .colour import merge_luma, pair_chroma, split_luma
from .device import exact_float32
from .io import Image, to_integer
from .nets.fusion import FusionNet

__all__ = ["fuse_image_batch", "fuse_image_groups", "fuse_images", "fuse_luma", "normalize_minmax", "to_integer"]


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
    return raw, _finish(raw, ca, cb, normalize, gray)


def _finish(raw: np.ndarray, ca, cb, normalize: str, gray: bool) -> np.ndarray:
    """The image to save from the network's output: stretched, with the fused chroma."""
    y = normalize_minmax(raw) if normalize == "minmax" else raw
    chroma = None if gray else pair_chroma(ca, cb)
    return y if chroma is None else merge_luma(y, chroma)


@torch.inference_mode()
def fuse_image_batch(net: nn.Module, pairs: Sequence[tuple[Image, Image]], normalize: str = "minmax",
                     gray: bool = False) -> list[tuple[np.ndarray, np.ndarray]]:
    """Fuse same-size pairs in one call of the network's forward pass, ``(N, 1, H, W)``;
    ``[(raw, out)]`` as :func:`fuse_images` gives for each.

    What a GPU wants (one large call instead of N small ones). The result of a pair does
    not depend on the other pairs of the batch: batch 8 equals batch 1 bit for bit on the
    CPU (tests/test_batched_fuse.py); against the banded executor it differs by float rounding.
    """
    if not pairs:
        return []
    size = pairs[0][0].size
    if any(a.size != size or b.size != size for a, b in pairs):
        raise ValueError(f"a batch needs pairs of one size ({size}): {[(a.size, b.size) for a, b in pairs]}")
    split = [(split_luma(a.pixels), split_luma(b.pixels)) for a, b in pairs]
    param = next(net.parameters())

    def stack(k: int) -> torch.Tensor:
        return torch.from_numpy(np.stack([s[k][0] for s in split]).astype(np.float32))[:, None].to(
            param.device, param.dtype)

    with exact_float32():
        raws = net(stack(0), stack(1))[:, 0].float().cpu().numpy()
    return [(raw, _finish(raw, ca, cb, normalize, gray)) for raw, ((_, ca), (_, cb)) in zip(raws, split)]


def fuse_image_groups(net: nn.Module, pairs: Sequence[tuple[Image, Image]], batch: int | None, *,
                      normalize: str = "minmax", gray: bool = False, max_memory: int | str | None = None,
                      chunk_rows: int | None = None) -> Iterator[tuple[list[int], list[tuple[np.ndarray, np.ndarray]]]]:
    """Fuse many pairs: ``(indices, [(raw, out)])`` per network call, in any order.

    ``batch`` None: one pair per call through :func:`fuse_images` (the banded executor: the
    CPU default, whose speed BENCHMARKS.md measures, and bounded by ``max_memory``/``chunk_rows``). Otherwise pairs of
    one size go up to ``batch`` at a time through :func:`fuse_image_batch`, fewer when
    ``max_memory`` (or, on a GPU, its free memory) would not hold them
    (:func:`~tdfusion.nets.band_plan.batch_that_fits`); a pair too large for even one goes
    through the banded executor.
    """
    from .nets.band_plan import batch_that_fits

    if batch is None:
        for i, (a, b) in enumerate(pairs):
            yield [i], [fuse_images(net, a, b, normalize, gray, max_memory=max_memory, chunk_rows=chunk_rows)]
        return
    by_size: dict[tuple[int, int], list[int]] = {}
    for i, (a, _) in enumerate(pairs):
        by_size.setdefault(a.size, []).append(i)
    param = next(net.parameters())
    for (height, width), indices in by_size.items():
        fits = (batch_that_fits(net, height, width, batch, max_memory, param.device, param.element_size())
                if isinstance(net, FusionNet) else max(1, batch))
        if fits == 0:
            for i in indices:
                yield [i], [fuse_images(net, *pairs[i], normalize, gray, max_memory=max_memory,
                                        chunk_rows=chunk_rows)]
            continue
        for start in range(0, len(indices), fits):
            chunk = indices[start:start + fits]
            yield chunk, fuse_image_batch(net, [pairs[i] for i in chunk], normalize, gray)
