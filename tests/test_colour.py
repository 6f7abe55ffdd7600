"""Colour pipeline (tdfusion.colour): luminance split/merge and the chroma rule.

References: the BT.601 luma/chroma equations written out by hand, and ReFusion's
Eq. 15 evaluated on the 8-bit scale with tau = 128 (as printed in the paper).
"""
from __future__ import annotations

import numpy as np
import pytest

from tdfusion.colour import NEUTRAL_CHROMA, fuse_chroma, merge_luma, pair_chroma, split_luma


def _rgb(h=7, w=9, seed=0):
    return np.random.default_rng(seed).random((h, w, 3), dtype=np.float32)


def test_luma_and_chroma_follow_bt601_by_hand():
    rgb = _rgb()
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    y_hand = 0.299 * r + 0.587 * g + 0.114 * b
    # Full-range BT.601 chroma, centred on 0.5 for [0, 1] data.
    cr_hand = (r - y_hand) * 0.713 + 0.5
    cb_hand = (b - y_hand) * 0.564 + 0.5
    y, crcb = split_luma(rgb)
    assert y.shape == (7, 9) and crcb.shape == (7, 9, 2)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, y_hand, atol=2e-6)
    np.testing.assert_allclose(crcb[..., 0], cr_hand, atol=2e-6)
    np.testing.assert_allclose(crcb[..., 1], cb_hand, atol=2e-6)


def test_grey_source_is_its_own_luma_and_has_no_chroma():
    grey = _rgb()[..., 0]
    y, crcb = split_luma(grey)
    assert crcb is None
    np.testing.assert_array_equal(y, grey)


def test_split_then_merge_returns_the_image():
    rgb = _rgb(16, 16, seed=1)
    y, crcb = split_luma(rgb)
    back = merge_luma(y, crcb)
    assert back.shape == rgb.shape
    # OpenCV's forward and inverse coefficients are rounded to 3-4 digits, so the round
    # trip is exact only to ~2.5e-4 (a sixteenth of an 8-bit level).
    np.testing.assert_allclose(back, rgb, atol=4e-4)


def test_merge_clips_out_of_gamut_values():
    y = np.full((2, 2), 1.0, np.float32)
    crcb = np.full((2, 2, 2), 0.9, np.float32)  # very saturated on a white luma
    out = merge_luma(y, crcb)
    assert out.min() >= 0.0 and out.max() <= 1.0


def _eq15_8bit(c1, c2, tau=128.0):
    """ReFusion Eq. 15 as printed: C_f = (C1|C1-tau| + C2|C2-tau|) / (|C1-tau| + |C2-tau|)."""
    d1, d2 = np.abs(c1 - tau), np.abs(c2 - tau)
    out = np.full_like(c1, tau)  # both neutral: nothing to weigh, stay neutral
    nz = (d1 + d2) > 0
    out[nz] = (c1[nz] * d1[nz] + c2[nz] * d2[nz]) / (d1[nz] + d2[nz])
    return out


def _to_8bit_scale(c):
    # OpenCV's chroma is centred on 0.5 for float data and on 128 for 8-bit data.
    return (c.astype(np.float64) - 0.5) * 255.0 + 128.0


def test_chroma_fusion_equals_eq15_on_the_8bit_scale():
    rng = np.random.default_rng(2)
    c1 = rng.random((20, 20, 2)).astype(np.float32)
    c2 = rng.random((20, 20, 2)).astype(np.float32)
    fused = fuse_chroma(c1, c2)
    expected = _eq15_8bit(_to_8bit_scale(c1), _to_8bit_scale(c2))
    np.testing.assert_allclose(_to_8bit_scale(fused), expected, atol=1e-3)


@pytest.mark.parametrize("c1, c2, expected", [
    (200.0, 128.0, 200.0),   # a grey source does not dilute the colour one
    (60.0, 200.0, 132.0),    # (60*68 + 200*72) / 140
    (100.0, 156.0, 128.0),   # equally saturated, opposite hues: they cancel
    (128.0, 128.0, 128.0),   # both neutral stays neutral (not 0)
])
def test_chroma_fusion_hand_values(c1, c2, expected):
    to_unit = lambda v: np.full((1, 1, 2), (v - 128.0) / 255.0 + NEUTRAL_CHROMA, np.float32)
    fused = _to_8bit_scale(fuse_chroma(to_unit(c1), to_unit(c2)))
    np.testing.assert_allclose(fused, expected, atol=1e-3)


def test_grey_pixels_in_two_colour_sources_stay_grey():
    """Grey pixels of colour sources carry chroma 0.5 only up to float rounding."""
    a = np.full((4, 4, 3), 0.3, np.float32)
    b = np.full((4, 4, 3), 0.8, np.float32)
    _, ca = split_luma(a)
    _, cb = split_luma(b)
    fused = merge_luma(np.full((4, 4), 0.5, np.float32), fuse_chroma(ca, cb))
    np.testing.assert_allclose(fused, 0.5, atol=1e-3)


def test_pair_chroma_grey_and_colour():
    rgb = _rgb(seed=3)
    _, c = split_luma(rgb)
    assert pair_chroma(None, c) is c
    assert pair_chroma(c, None) is c
    assert pair_chroma(None, None) is None
    _, c2 = split_luma(_rgb(seed=4))
    np.testing.assert_array_equal(pair_chroma(c, c2), fuse_chroma(c, c2))
