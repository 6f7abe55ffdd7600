"""Colour handling: fuse luminance with the network, chrominance with a closed-form rule.

All arrays are float32 in [0, 1]. Colour conversion is OpenCV's full-range YCrCb
(ITU-R BT.601 weights), which is what the published results used; for float input
OpenCV centres Cr and Cb on 0.5, the neutral chroma value ``tau`` below (OpenCV
centres 8-bit chroma on 128, the papers' tau = 128; the two scales differ by that
shift and the factor 255, and the rule below is unchanged by such a change of scale).

Chrominance rule (ReFusion Eq. 15): ``C_f = (C_1 |C_1 - tau| + C_2 |C_2 - tau|) /
(|C_1 - tau| + |C_2 - tau| + eps)`` per pixel and channel: the more saturated source
wins. If only one source has colour, its chroma is used unchanged. The rule is
evaluated as ``tau + ((C_1 - tau) |C_1 - tau| + (C_2 - tau) |C_2 - tau|) / (... + eps)``,
equal to Eq. 15 up to the eps term, so that pixels neutral in both sources (white,
grey, black) stay neutral instead of being pulled toward chroma 0 by the eps.
"""
from __future__ import annotations

import cv2
import numpy as np

__all__ = ["NEUTRAL_CHROMA", "fuse_chroma", "merge_luma", "pair_chroma", "split_luma"]

NEUTRAL_CHROMA = 0.5
# The reference adds 1e-4 to the denominator on its [0, 255] scale; the same relative
# guard on our [0, 1] scale.
_CHROMA_EPS = 1e-4 / 255.0


def split_luma(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """``(H, W)`` grey -> ``(Y, None)``; ``(H, W, 3)`` RGB -> ``(Y (H, W), CrCb (H, W, 2))``."""
    if pixels.ndim == 2:
        return pixels.astype(np.float32, copy=False), None
    ycrcb = cv2.cvtColor(np.ascontiguousarray(pixels, dtype=np.float32), cv2.COLOR_RGB2YCrCb)
    return np.ascontiguousarray(ycrcb[:, :, 0]), np.ascontiguousarray(ycrcb[:, :, 1:])


def fuse_chroma(c1: np.ndarray, c2: np.ndarray, tau: float = NEUTRAL_CHROMA,
                eps: float = _CHROMA_EPS) -> np.ndarray:
    """Saturation-weighted chroma fusion: ``(H, W, 2) x2 -> (H, W, 2)``."""
    # Centred form: with the literal (c1*d1 + c2*d2) / (d1 + d2 + eps), a pixel grey in
    # both sources (d1 = d2 = 0, or ~1e-8 from float rounding) would get chroma ~0, a
    # saturated green, instead of tau.
    d1, d2 = np.abs(c1 - tau), np.abs(c2 - tau)
    return tau + ((c1 - tau) * d1 + (c2 - tau) * d2) / (d1 + d2 + eps)


def pair_chroma(c1: np.ndarray | None, c2: np.ndarray | None) -> np.ndarray | None:
    """The fused image's chroma from the sources' (``None`` for a grey source)."""
    if c1 is None:
        return c2
    if c2 is None:
        return c1
    return fuse_chroma(c1, c2)


def merge_luma(y: np.ndarray, crcb: np.ndarray) -> np.ndarray:
    """``Y (H, W)`` + ``CrCb (H, W, 2)`` -> RGB ``(H, W, 3)`` clipped to [0, 1]."""
    ycrcb = np.concatenate([y[:, :, None], crcb], axis=2).astype(np.float32)
    return np.clip(cv2.cvtColor(ycrcb, cv2.COLOR_YCrCb2RGB), 0.0, 1.0)
