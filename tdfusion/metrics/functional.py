"""No-reference image-fusion metrics, one pure function each.

Every function takes ``(H, W)`` arrays on the grey-level scale [0, 255] (any real dtype;
they are used as float64) and returns a Python ``float``. ``fused`` is the fused image
F, ``a`` and ``b`` the two sources A and B; all three must have the same shape.
The conventions (and the references they come from) are listed in ``docs/metrics.md``;
:func:`tdfusion.metrics.evaluate` turns image files into these arrays.

Everything here is vectorised with numpy / OpenCV; the per-scale loops of VIF and the
two-source sums are the only Python loops.
"""
from __future__ import annotations

import math

import cv2
import numpy as np
from skimage.metrics import structural_similarity

__all__ = [
    "VIF_MIN_SIZE", "average_gradient", "entropy", "mutual_information", "qabf", "quantize", "scd",
    "spatial_frequency", "ssim", "standard_deviation", "vif", "vifp",
]


def _as_float(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"expected a (H, W) image, got shape {x.shape}")
    return x.astype(np.float64, copy=False)


def _same_shape(*images: np.ndarray) -> None:
    shapes = {np.shape(im) for im in images}
    if len(shapes) != 1:
        raise ValueError(f"images differ in shape: {sorted(shapes)}")


def quantize(x: np.ndarray) -> np.ndarray:
    """``(H, W)`` on [0, 255] -> uint8, rounding half to even and clipping."""
    return np.clip(np.rint(np.asarray(x, dtype=np.float64)), 0, 255).astype(np.uint8)


def _entropy_bits(counts: np.ndarray) -> float:
    p = counts[counts > 0].astype(np.float64)
    p /= p.sum()
    return float(-(p * np.log2(p)).sum())


# --------------------------------------------------------------------------- single image

def entropy(fused: np.ndarray) -> float:
    """EN: Shannon entropy (bits) of the 256-bin histogram of ``round(F)``."""
    counts = np.bincount(quantize(_as_float(fused)).ravel(), minlength=256)
    return _entropy_bits(counts)


def standard_deviation(fused: np.ndarray) -> float:
    """SD: population standard deviation of F (``ddof=0``)."""
    return float(np.std(_as_float(fused)))


def spatial_frequency(fused: np.ndarray) -> float:
    """SF: ``sqrt(mean((dF/dx)^2) + mean((dF/dy)^2))`` with forward neighbour differences.

    The horizontal mean runs over ``H x (W-1)`` differences, the vertical one over
    ``(H-1) x W``.
    """
    f = _as_float(fused)
    rf2 = np.mean(np.diff(f, axis=1) ** 2) if f.shape[1] > 1 else 0.0
    cf2 = np.mean(np.diff(f, axis=0) ** 2) if f.shape[0] > 1 else 0.0
    return float(math.sqrt(rf2 + cf2))


def average_gradient(fused: np.ndarray) -> float:
    """AG: ``mean(sqrt((gx^2 + gy^2) / 2))``, gradients from ``numpy.gradient``.

    Central differences inside, one-sided differences on the border rows/columns.
    """
    f = _as_float(fused)
    if min(f.shape) < 2:
        return 0.0
    gy, gx = np.gradient(f)
    return float(np.mean(np.sqrt((gx * gx + gy * gy) / 2.0)))


# --------------------------------------------------------------------------- information

def _mutual_information_u8(x: np.ndarray, y: np.ndarray) -> float:
    """I(X;Y) in bits from the 256x256 joint histogram of two uint8 images."""
    joint = np.bincount(x.ravel().astype(np.intp) * 256 + y.ravel(), minlength=256 * 256)
    joint = joint.reshape(256, 256)
    # I = H(X) + H(Y) - H(X, Y): three entropies of histograms, no division by zero.
    return _entropy_bits(joint.sum(axis=1)) + _entropy_bits(joint.sum(axis=0)) - _entropy_bits(joint)


def mutual_information(fused: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """MI: ``I(A;F) + I(B;F)`` in bits, from 256-bin joint histograms of the 8-bit images."""
    _same_shape(fused, a, b)
    f8 = quantize(_as_float(fused))
    return (_mutual_information_u8(quantize(_as_float(a)), f8)
            + _mutual_information_u8(quantize(_as_float(b)), f8))


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    x = x - x.mean()
    y = y - y.mean()
    den = math.sqrt(float((x * x).sum()) * float((y * y).sum()))
    # A constant image has no correlation with anything; 0 rather than NaN.
    return float((x * y).sum()) / den if den > 0 else 0.0


def scd(fused: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """SCD (sum of the correlations of differences): ``corr(F - B, A) + corr(F - A, B)``.

    Pearson correlation over all pixels (Aslantas & Bendes, 2015).
    """
    _same_shape(fused, a, b)
    f, a, b = _as_float(fused), _as_float(a), _as_float(b)
    return _pearson(f - b, a) + _pearson(f - a, b)


# --------------------------------------------------------------------------- VIF

_VIF_EPS = 1e-10
# Smallest side VIF accepts: each scale needs at least as many pixels as its window
# (17, 9, 5, 3 taps) after the 'valid' filtering and decimation of the finer scales:
# H >= 41 gives 41 -> 17 -> 7 -> 3 pixels at the four scales.
VIF_MIN_SIZE = 41


def _gaussian_taps(size: int) -> np.ndarray:
    """Normalised 1-D Gaussian of ``size`` taps and sigma ``size / 5``.

    The 2-D window of the pixel-domain VIF (MATLAB ``fspecial('gaussian', N, N/5)``) is
    the outer product of these taps: none of its entries is small enough to be cut by
    ``fspecial``'s ``eps * max`` threshold for N <= 17, so filtering separably gives the
    same numbers at a fraction of the cost.
    """
    r = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    taps = np.exp(-(r * r) / (2.0 * (size / 5.0) ** 2))
    return taps / taps.sum()


def _filter_valid(x: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """Separable correlation keeping only fully-covered pixels (``'valid'`` mode)."""
    k = taps.size
    # The border handling is irrelevant: every pixel it touches is cropped away.
    full = cv2.sepFilter2D(x, cv2.CV_64F, taps, taps, borderType=cv2.BORDER_REPLICATE)
    h = k // 2
    return full[h:x.shape[0] - h, h:x.shape[1] - h]


def vifp(reference: np.ndarray, distorted: np.ndarray, noise_variance: float = 2.0) -> float:
    """Pixel-domain visual information fidelity of ``distorted`` w.r.t. ``reference``.

    Sheikh & Bovik (IEEE TIP 2006), pixel-domain form: four scales with Gaussian windows of
    17, 9, 5 and 3 taps (sigma = taps / 5), each coarser scale filtered (``'valid'``) and
    decimated by 2, visual noise variance ``noise_variance``. The clamping of negative
    variances and gains follows the definition of sewar's ``vifp`` exactly (the form the
    reference fusion evaluations use).

    Written here rather than calling ``sewar.vifp`` because sewar filters with direct 2-D
    convolutions (about 20x slower on a 640x480 image); the test suite checks the two agree.

    Args:
        reference: ``(H, W)`` on [0, 255]; at least :data:`VIF_MIN_SIZE` (41) pixels on
            each side (four scales).
        distorted: ``(H, W)``.
    """
    _same_shape(reference, distorted)
    ref, dist = _as_float(reference), _as_float(distorted)
    num = den = 0.0
    for scale in range(4):
        taps = _gaussian_taps(2 ** (4 - scale) + 1)
        if scale > 0:
            ref = _filter_valid(ref, taps)[::2, ::2]
            dist = _filter_valid(dist, taps)[::2, ::2]
        if min(ref.shape) < taps.size:
            raise ValueError(f"image too small for VIF ({reference.shape[1]}x{reference.shape[0]}); "
                             f"it needs at least {VIF_MIN_SIZE} pixels per side")
        mu_r, mu_d = _filter_valid(ref, taps), _filter_valid(dist, taps)
        var_r = np.maximum(_filter_valid(ref * ref, taps) - mu_r * mu_r, 0.0)
        var_d = np.maximum(_filter_valid(dist * dist, taps) - mu_d * mu_d, 0.0)
        cov = _filter_valid(ref * dist, taps) - mu_r * mu_d

        gain = cov / (var_r + _VIF_EPS)
        noise = var_d - gain * cov
        flat_ref = var_r < _VIF_EPS
        gain[flat_ref] = 0.0
        noise[flat_ref] = var_d[flat_ref]
        var_r[flat_ref] = 0.0
        flat_dist = var_d < _VIF_EPS
        gain[flat_dist] = 0.0
        noise[flat_dist] = 0.0
        negative = gain < 0
        noise[negative] = var_d[negative]
        gain[negative] = 0.0
        noise = np.maximum(noise, _VIF_EPS)

        num += float(np.sum(np.log10(1.0 + gain * gain * var_r / (noise + noise_variance))))
        den += float(np.sum(np.log10(1.0 + var_r / noise_variance)))
    # A flat reference carries no information to preserve.
    return num / den if den > 0 else 0.0


def vif(fused: np.ndarray, a: np.ndarray, b: np.ndarray, reduction: str = "mean") -> float:
    """VIF of the fusion: ``vifp(A, F)`` and ``vifp(B, F)`` averaged (``reduction="mean"``,
    the reference convention) or summed (``"sum"``, CDDFuse's evaluation script)."""
    _same_shape(fused, a, b)
    total = vifp(a, fused) + vifp(b, fused)
    if reduction == "sum":
        return total
    if reduction == "mean":
        return total / 2.0
    raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")


# --------------------------------------------------------------------------- Qabf

# Xydeas & Petrovic (Electronics Letters 2000) sigmoid constants.
_QG = (0.9994, -15.0, 0.5)   # Tg, kg, Dg: edge strength
_QA = (0.9879, -22.0, 0.8)   # Ta, ka, Da: edge orientation
# Sobel kernels as *convolution* kernels (scipy.signal.convolve2d / MATLAB conv2 with zero
# padding, 'same' size). The sign convention matters: orientation is arctan(gy / gx) with
# pi/2 where gx == 0, so flipping the sign of only one derivative changes the angle
# differences next to pixels with gx == 0.
_SOBEL_X_CONV = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float64)
_SOBEL_Y_CONV = np.array([[1, 2, 1], [0, 0, 0], [-1, -2, -1]], dtype=np.float64)


def _conv_same_zero(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    # filter2D correlates; a convolution is a correlation with the kernel rotated 180 deg.
    return cv2.filter2D(x, cv2.CV_64F, np.ascontiguousarray(kernel[::-1, ::-1]),
                        borderType=cv2.BORDER_CONSTANT)


def _edge_strength_orientation(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    gx = _conv_same_zero(x, _SOBEL_X_CONV)
    gy = _conv_same_zero(x, _SOBEL_Y_CONV)
    strength = np.sqrt(gx * gx + gy * gy)
    with np.errstate(divide="ignore", invalid="ignore"):
        orientation = np.where(gx == 0, np.pi / 2, np.arctan(gy / gx))
    return strength, orientation


def _edge_preservation(g_src: np.ndarray, a_src: np.ndarray,
                       g_fused: np.ndarray, a_fused: np.ndarray) -> np.ndarray:
    """Per-pixel Q^{SF} = Q_g * Q_a of one source S in the fused image F."""
    with np.errstate(divide="ignore", invalid="ignore"):
        # Relative strength: the smaller over the larger. Where the two are equal the
        # reference evaluation takes g_F itself (not 1); kept for parity with its numbers.
        rel = np.where(g_src > g_fused, g_fused / g_src,
                       np.where(g_src < g_fused, g_src / g_fused, g_fused))
    rel_angle = 1.0 - np.abs(a_src - a_fused) / (np.pi / 2)
    tg, kg, dg = _QG
    ta, ka, da = _QA
    return tg / (1.0 + np.exp(kg * (rel - dg))) * (ta / (1.0 + np.exp(ka * (rel_angle - da))))


def qabf(fused: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """Qabf (Q^{AB/F}): Xydeas-Petrovic edge-information preservation.

    3x3 Sobel (zero padding), edge strength ``sqrt(gx^2 + gy^2)``, orientation
    ``arctan(gy / gx)`` (pi/2 where gx = 0); sigmoid constants Tg 0.9994, kg -15, Dg 0.5,
    Ta 0.9879, ka -22, Da 0.8; per-pixel preservation weighted by the source edge
    strengths: ``sum(Q^AF g_A + Q^BF g_B) / sum(g_A + g_B)``. 0 when both sources are flat.
    """
    _same_shape(fused, a, b)
    g_f, a_f = _edge_strength_orientation(_as_float(fused))
    g_a, a_a = _edge_strength_orientation(_as_float(a))
    g_b, a_b = _edge_strength_orientation(_as_float(b))
    den = float((g_a + g_b).sum())
    if den == 0.0:
        return 0.0
    num = float((_edge_preservation(g_a, a_a, g_f, a_f) * g_a).sum()
                + (_edge_preservation(g_b, a_b, g_f, a_f) * g_b).sum())
    return num / den


# --------------------------------------------------------------------------- SSIM

def ssim(fused: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """SSIM: mean of ``SSIM(F, A)`` and ``SSIM(F, B)`` on the images cast to uint8.

    scikit-image's ``structural_similarity`` with its defaults (7x7 uniform window,
    sample covariance, K1 0.01, K2 0.03) and data range 255.
    """
    _same_shape(fused, a, b)
    f8 = quantize(_as_float(fused))
    return 0.5 * (structural_similarity(f8, quantize(_as_float(a)), data_range=255)
                  + structural_similarity(f8, quantize(_as_float(b)), data_range=255))
