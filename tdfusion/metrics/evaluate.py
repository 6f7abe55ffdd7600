"""All metrics of a fused image at once, from arrays or from image files.

Image files are turned into the reference evaluation's 8-bit luminance by
:func:`luminance_255`; :func:`evaluate` then applies the functions of
:mod:`tdfusion.metrics.functional`. The registry :data:`METRICS` maps each metric's
short name (the column name in tables, JSON and CSV) to its function.
"""
from __future__ import annotations

import os
import warnings
from typing import Callable, Iterable, Mapping

import cv2
import numpy as np

from ..errors import TDFusionError
from ..io import Image, read_image
from . import functional as FM

__all__ = [
    "METRICS", "METRIC_NAMES", "evaluate", "evaluate_files", "load_luminance", "luminance_255",
    "mean_metrics",
]

# name -> f(fused, a, b); the order is the column order everywhere.
METRICS: dict[str, Callable[..., float]] = {
    "EN": lambda f, a, b: FM.entropy(f),
    "SD": lambda f, a, b: FM.standard_deviation(f),
    "SF": lambda f, a, b: FM.spatial_frequency(f),
    "AG": lambda f, a, b: FM.average_gradient(f),
    "MI": FM.mutual_information,
    "SCD": FM.scd,
    "VIF": FM.vif,
    "Qabf": FM.qabf,
    "SSIM": FM.ssim,
}
METRIC_NAMES: tuple[str, ...] = tuple(METRICS)


def luminance_255(image: Image | np.ndarray) -> np.ndarray:
    """An image as the reference evaluation sees it: ``(H, W)`` float64 of integers 0..255.

    Grey images are scaled to [0, 255]; RGB images are reduced to luminance with
    OpenCV's BGR->GRAY (the Y of YCrCb, BT.601 weights) computed in float32 on the
    [0, 255] scale, exactly as ``cv2.cvtColor(cv2.imread(p).astype(np.float32),
    cv2.COLOR_BGR2GRAY)``. Both are then rounded to whole grey levels (half to even), so 16-bit
    images are compared at 8-bit precision, like every published evaluation.

    This exact order (8-bit BGR -> float32 GRAY -> round) is the one that reproduces the
    reference values bit for bit; :func:`tdfusion.colour.split_luma` (RGB->YCrCb on
    [0, 1]) and RGB->GRAY give the same Y up to one float32 ulp, which rounds a few tie
    pixels the other way (a relative change of up to 6e-5 in MI/SCD on the test cases).

    Args:
        image: a decoded :class:`~tdfusion.io.Image`, or float pixels in [0, 1],
            ``(H, W)`` or ``(H, W, 3)`` RGB.
    """
    pixels = image.pixels if isinstance(image, Image) else np.asarray(image)
    bit_depth = image.bit_depth if isinstance(image, Image) else 0
    scaled = pixels.astype(np.float32) * np.float32(255.0)
    if bit_depth == 8:
        # read_image stores v / 255 in float32; undo it exactly.
        scaled = np.rint(scaled)
    if scaled.ndim == 3:
        # BGR2GRAY on the channel-reversed array, not RGB2GRAY: OpenCV sums B, G, R in
        # that order for BGR input, and float32 rounding depends on the order.
        scaled = cv2.cvtColor(np.ascontiguousarray(scaled[:, :, ::-1]), cv2.COLOR_BGR2GRAY)
    elif scaled.ndim != 2:
        raise ValueError(f"expected (H, W) or (H, W, 3) pixels, got shape {pixels.shape}")
    return np.clip(np.rint(scaled.astype(np.float64)), 0.0, 255.0)


def load_luminance(path: str | os.PathLike) -> np.ndarray:
    """Read an image file and return :func:`luminance_255` of it (errors name the file)."""
    return luminance_255(read_image(path))


def evaluate(fused: np.ndarray, a: np.ndarray, b: np.ndarray, *, vif_reduction: str = "mean",
             metrics: Iterable[str] = METRIC_NAMES, data_range: float = 255.0) -> dict[str, float]:
    """Compute fusion metrics for one image triple.

    Args:
        fused, a, b: ``(H, W)`` luminance on [0, ``data_range``] (see :func:`luminance_255`
            for the reference convention), all the same size.
        data_range: the value of white in the inputs (default 255); other ranges are
            rescaled to [0, 255], the scale every metric is defined on. Images entirely
            within [0, 1] with the default give a warning: they are almost surely [0, 1]
            images scored as nearly black ones (:func:`tdfusion.fusion_metrics` takes any
            dtype and range).
        vif_reduction: ``"mean"`` (default) or ``"sum"`` of the two sources' VIF.
        metrics: names from :data:`METRIC_NAMES`, in the order wanted.
    Returns:
        ``{name: value}`` as Python floats, in the order of ``metrics``.
    """
    shapes = {np.shape(fused), np.shape(a), np.shape(b)}
    if len(shapes) != 1:
        raise ValueError(f"fused and source images differ in size: {sorted(shapes)}")
    f, a, b = (np.asarray(x, dtype=np.float64) for x in (fused, a, b))
    if data_range != 255.0:
        f, a, b = (x * (255.0 / data_range) for x in (f, a, b))
    elif 0.0 < max(f.max(), a.max(), b.max()) <= 1.0:
        warnings.warn("fusion metrics: every value is within [0, 1] but data_range is 255; pass data_range=1.0 "
                      "for [0, 1] images (or use tdfusion.fusion_metrics)", UserWarning, stacklevel=2)
    out: dict[str, float] = {}
    for name in metrics:
        if name not in METRICS:
            raise ValueError(f"unknown metric {name!r}; choose from {', '.join(METRIC_NAMES)}")
        if name == "VIF":
            out[name] = float(FM.vif(f, a, b, reduction=vif_reduction))
        else:
            out[name] = float(METRICS[name](f, a, b))
    return out


def evaluate_files(fused: str | os.PathLike, a: str | os.PathLike, b: str | os.PathLike,
                   **kwargs) -> dict[str, float]:
    """:func:`evaluate` on image files; a size mismatch is a :class:`TDFusionError`."""
    yf, ya, yb = load_luminance(fused), load_luminance(a), load_luminance(b)
    for path, y in ((fused, yf), (b, yb)):
        if y.shape != ya.shape:
            raise TDFusionError(f"{path}: size {y.shape[1]}x{y.shape[0]} differs from "
                                f"{a} ({ya.shape[1]}x{ya.shape[0]})")
    if min(ya.shape) < FM.VIF_MIN_SIZE:
        raise TDFusionError(f"{a}: {ya.shape[1]}x{ya.shape[0]} is too small for VIF "
                            f"(needs at least {FM.VIF_MIN_SIZE} pixels per side)")
    return evaluate(yf, ya, yb, **kwargs)


def mean_metrics(per_image: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Column means of ``{stem: {metric: value}}`` (metrics in first-seen order)."""
    names: list[str] = []
    for values in per_image.values():
        names.extend(k for k in values if k not in names)
    return {k: float(np.mean([v[k] for v in per_image.values() if k in v])) for k in names}
