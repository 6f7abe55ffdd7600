"""The learnable fusion losses against independent NumPy/SciPy computations."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from tdfusion.meta.losses import (fusion_loss, intensity_loss, max_gradient_loss, refusion_loss, tdfusion_loss,
                             weighted_gradient_loss)
from tdfusion.ops import sobel, sobel_magnitude

KX = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], float)


def np_sobel(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cross-correlation with zero padding, as F.conv2d(padding=1) does."""
    return (ndimage.correlate(img, KX, mode="constant", cval=0.0),
            ndimage.correlate(img, KX.T, mode="constant", cval=0.0))


@pytest.fixture
def images():
    rng = np.random.default_rng(3)
    f, a, b = (rng.random((2, 1, 9, 11)) for _ in range(3))
    w = rng.random((2, 2, 9, 11))
    w /= w.sum(1, keepdims=True)
    v = rng.random((2, 2, 9, 11))
    v /= v.sum(1, keepdims=True)
    return f, a, b, w, v


def t(x):
    return torch.from_numpy(x)


def test_sobel_matches_scipy(images):
    f = images[0]
    gx, gy = sobel(t(f))
    for i in range(f.shape[0]):
        ex, ey = np_sobel(f[i, 0])
        np.testing.assert_allclose(gx[i, 0].numpy(), ex, atol=1e-12)
        np.testing.assert_allclose(gy[i, 0].numpy(), ey, atol=1e-12)
    np.testing.assert_allclose(sobel_magnitude(t(f)).numpy(), (gx.abs() + gy.abs()).numpy())


def test_intensity_loss_forms(images):
    f, a, b, w, _ = images
    paper = (w[:, :1] * (f - a) ** 2 + w[:, 1:] * (f - b) ** 2).mean()
    reference = ((w[:, :1] * (a - f)) ** 2).mean() + ((w[:, 1:] * (b - f)) ** 2).mean()
    got_paper = intensity_loss(t(f), t(a), t(b), t(w[:, :1]), t(w[:, 1:]))
    got_ref = intensity_loss(t(f), t(a), t(b), t(w[:, :1]), t(w[:, 1:]), form="reference")
    assert float(got_paper) == pytest.approx(paper, rel=1e-12)
    assert float(got_ref) == pytest.approx(reference, rel=1e-12)
    with pytest.raises(ValueError):
        intensity_loss(t(f), t(a), t(b), t(w[:, :1]), t(w[:, 1:]), form="other")


def np_max_gradient_loss(f, a, b) -> float:
    total = 0.0
    for d in range(2):
        gf = np.stack([np_sobel(x[0])[d] for x in f])
        ga = np.stack([np_sobel(x[0])[d] for x in a])
        gb = np.stack([np_sobel(x[0])[d] for x in b])
        target = np.where(np.abs(ga) >= np.abs(gb), ga, gb)
        total += np.abs(gf - target).mean()
    return total


def test_max_gradient_loss(images):
    f, a, b, _, _ = images
    assert float(max_gradient_loss(t(f), t(a), t(b))) == pytest.approx(np_max_gradient_loss(f, a, b), rel=1e-12)


def test_weighted_gradient_and_full_losses(images):
    f, a, b, w, v = images
    grad = 0.0
    for d in range(2):
        gf, ga, gb = (np.stack([np_sobel(x[0])[d] for x in arr])[:, None] for arr in (f, a, b))
        grad += (v[:, :1] * np.abs(gf - ga) + v[:, 1:] * np.abs(gf - gb)).mean()
    assert float(weighted_gradient_loss(t(f), t(a), t(b), t(v[:, :1]), t(v[:, 1:]))) == pytest.approx(grad, rel=1e-12)
    inten = (w[:, :1] * (f - a) ** 2 + w[:, 1:] * (f - b) ** 2).mean()
    out = refusion_loss(t(f), t(a), t(b), t(np.concatenate([w, v], 1)), alpha=0.5)
    assert float(out["loss"]) == pytest.approx(inten + 0.5 * grad, rel=1e-12)
    td = tdfusion_loss(t(f), t(a), t(b), t(w), alpha=2.0)
    maxgrad = np_max_gradient_loss(f, a, b)
    assert float(td["int"]) == pytest.approx(inten, rel=1e-12)
    assert float(td["grad"]) == pytest.approx(maxgrad, rel=1e-12)
    assert float(td["loss"]) == pytest.approx(inten + 2.0 * maxgrad, rel=1e-12)
    assert float(fusion_loss("tdfusion", t(f), t(a), t(b), t(w))["loss"]) == pytest.approx(inten + maxgrad, rel=1e-12)
    with pytest.raises(ValueError):
        fusion_loss("nope", t(f), t(a), t(b), t(w))


def test_loss_gradients_match_finite_differences(images):
    f, a, b, w, v = images
    weights = t(np.concatenate([w, v], 1))
    fused = t(f.copy()).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: refusion_loss(x, t(a), t(b), weights)["loss"], (fused,))
    assert torch.autograd.gradcheck(lambda x: tdfusion_loss(x, t(a), t(b), t(w))["int"], (fused,))


def test_blend_gradient_target_is_the_gradient_of_gs_blend(images):
    """loss.gradient_target blend: |sobel(F) - sobel(w_a A + w_b B)|, against SciPy; both terms
    are then minimised by the blend itself, so G's weights decide the whole loss."""
    f, a, b, w, _ = images
    blend = w[:, :1] * a + w[:, 1:] * b
    grad = sum(np.abs(np.stack([np_sobel(x[0])[d] for x in f]) - np.stack([np_sobel(x[0])[d] for x in blend])).mean()
               for d in range(2))
    inten = (w[:, :1] * (f - a) ** 2 + w[:, 1:] * (f - b) ** 2).mean()
    out = tdfusion_loss(t(f), t(a), t(b), t(w), alpha=0.5, gradient_target="blend")
    assert float(out["grad"]) == pytest.approx(grad, rel=1e-12)
    assert float(out["loss"]) == pytest.approx(inten + 0.5 * grad, rel=1e-12)
    assert float(out["grad"]) != pytest.approx(np_max_gradient_loss(f, a, b), rel=1e-3)  # not the paper's term
    at_blend = float(fusion_loss("tdfusion", t(blend), t(a), t(b), t(w), gradient_target="blend")["loss"])
    rng = np.random.default_rng(0)
    for _ in range(5):  # the blend is the minimum: any change of it costs
        other = blend + 0.05 * rng.standard_normal(blend.shape)
        assert float(fusion_loss("tdfusion", t(other), t(a), t(b), t(w), gradient_target="blend")["loss"]) > at_blend
    with pytest.raises(ValueError, match="ReFusion"):
        refusion_loss(t(f), t(a), t(b), t(np.concatenate([w, w], 1)), gradient_target="blend")


def test_weighted_max_gradient_target_against_numpy(images):
    """loss.gradient_target weighted_max: the source derivative whose weighted magnitude is
    larger; with equal weights it is the paper's max-abs term."""
    f, a, b, w, _ = images
    total = 0.0
    for d in range(2):
        gf, ga, gb = (np.stack([np_sobel(x[0])[d] for x in arr])[:, None] for arr in (f, a, b))
        target = np.where(w[:, :1] * np.abs(ga) >= w[:, 1:] * np.abs(gb), ga, gb)
        total += np.abs(gf - target).mean()
    out = tdfusion_loss(t(f), t(a), t(b), t(w), gradient_target="weighted_max")
    assert float(out["grad"]) == pytest.approx(total, rel=1e-12)
    assert float(out["grad"]) != pytest.approx(np_max_gradient_loss(f, a, b), rel=1e-3)
    even = np.full_like(w, 0.5)
    assert float(tdfusion_loss(t(f), t(a), t(b), t(even), gradient_target="weighted_max")["grad"]) == pytest.approx(
        np_max_gradient_loss(f, a, b), rel=1e-12)
    with pytest.raises(ValueError, match="gradient_target"):
        tdfusion_loss(t(f), t(a), t(b), t(w), gradient_target="median")
