"""Fusion metrics against independent references.

* the reference evaluation's values for the shared ReFusion test cases
  (``refusion/reference_metrics.json``);
* other libraries computing the same quantity another way (scikit-image's SSIM and
  Shannon entropy, scipy's KL divergence for MI, sewar's ``vifp`` for VIF, numpy / the
  ``statistics`` module for SD);
* values worked out by hand on tiny images and closed forms (SF, AG, EN, MI, SCD, VIF,
  Qabf of a perfect fusion).
"""
from __future__ import annotations

import json
import math
import statistics

import cv2
import numpy as np
import pytest
from scipy.stats import entropy as kl_or_entropy
from skimage.measure import shannon_entropy
from skimage.metrics import structural_similarity

from tdfusion.io import list_images, read_image
from tdfusion.metrics import (METRIC_NAMES, average_gradient, entropy, evaluate, evaluate_files,
                              load_luminance, luminance_255, mutual_information, qabf, scd,
                              spatial_frequency, ssim, standard_deviation, vif, vifp)

TASKS = ("IVIF", "MIF", "MFIF", "MEIF")
REL_TOL = 1e-3  # the acceptance bar of the issue


def _rel(value: float, ref: float) -> float:
    return abs(value - ref) / max(abs(ref), 1e-12)


@pytest.fixture(scope="module")
def reference(shared_data):
    return json.loads((shared_data / "refusion" / "reference_metrics.json").read_text())


def _cases(reference, shared_data):
    for task in TASKS:
        block = reference[task]
        a = list_images(shared_data / block["a"])
        b = list_images(shared_data / block["b"])
        f = list_images(shared_data / block["fused"])
        for stem, values in block["per_image"].items():
            yield task, stem, f[stem], a[stem], b[stem], values


@pytest.fixture(scope="module")
def computed(reference, shared_data):
    """Every metric of every shared reference case, computed once for the module."""
    out = {}
    for task, stem, pf, pa, pb, values in _cases(reference, shared_data):
        out[(task, stem)] = (evaluate_files(pf, pa, pb), values, (pf, pa, pb))
    return out


# --------------------------------------------------------------------------- reference values

@pytest.mark.parametrize("metric", METRIC_NAMES)
def test_reference_values_per_image(computed, metric):
    """Each metric on each of the 8 shared cases within 1e-3 of the reference evaluation."""
    assert len(computed) == 8
    for (task, stem), (ours, ref, _) in computed.items():
        assert _rel(ours[metric], ref[metric]) < REL_TOL, (task, stem, metric, ours[metric], ref[metric])


def test_reference_means(computed, reference):
    for task in TASKS:
        for metric in METRIC_NAMES:
            ours = np.mean([v[0][metric] for (t, _), v in computed.items() if t == task])
            assert _rel(ours, reference[task]["mean"][metric]) < REL_TOL, (task, metric)


def test_vif_sum_is_cddfuse_convention(computed):
    """--vif-sum adds the two sources' VIF: twice the reference (averaged) value."""
    (ours, ref, (pf, pa, pb)) = computed[("MIF", "MRI_PET_14")]
    summed = evaluate_files(pf, pa, pb, vif_reduction="sum", metrics=["VIF"])["VIF"]
    assert _rel(summed, 2 * ref["VIF"]) < REL_TOL


def test_luminance_convention_is_pinned(computed):
    """Sources are Y = round(OpenCV BGR->GRAY on the float32 8-bit values), read here through
    cv2.imread directly (a different decoding path from tdfusion.io)."""
    for (_, _), (_, _, paths) in computed.items():
        for p in paths:
            bgr = cv2.imread(str(p), cv2.IMREAD_COLOR).astype(np.float32)
            expected = np.rint(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)).astype(np.float64)
            np.testing.assert_array_equal(load_luminance(p), expected, err_msg=str(p))


def test_luminance_of_16_bit_image_is_rounded_to_8_bits(tmp_path):
    rng = np.random.default_rng(0)
    grey16 = rng.integers(0, 65536, size=(40, 50), dtype=np.uint16)
    path = tmp_path / "g16.png"
    cv2.imwrite(str(path), grey16)
    y = load_luminance(path)
    np.testing.assert_array_equal(y, np.rint(grey16.astype(np.float64) * 255 / 65535))
    assert read_image(path).bit_depth == 16


# --------------------------------------------------------------------------- second libraries

@pytest.fixture(scope="module")
def real_triple(shared_data):
    d = shared_data / "refusion"
    return (load_luminance(d / "reference_outputs" / "MIF" / "MRI_PET_37.png"),
            load_luminance(d / "test_cases" / "MIF" / "CT_PET_SPECT" / "MRI_PET_37.png"),
            load_luminance(d / "test_cases" / "MIF" / "MRI" / "MRI_PET_37.png"))


def test_ssim_matches_scikit_image_called_directly(real_triple):
    f, a, b = (x.astype(np.uint8) for x in real_triple)
    expected = (structural_similarity(f, a, win_size=7, data_range=255)
                + structural_similarity(f, b, win_size=7, data_range=255)) / 2
    assert ssim(*real_triple) == pytest.approx(expected, rel=1e-12)


def _mi_by_kl_divergence(x: np.ndarray, y: np.ndarray) -> float:
    """I(X;Y) = KL(P_XY || P_X P_Y), scipy's relative entropy over np.histogram2d counts."""
    joint, _, _ = np.histogram2d(x.ravel(), y.ravel(), bins=256, range=[[-0.5, 255.5], [-0.5, 255.5]])
    joint /= joint.sum()
    product = np.outer(joint.sum(axis=1), joint.sum(axis=0))
    return float(kl_or_entropy(joint.ravel(), product.ravel(), base=2))


def test_mutual_information_matches_kl_divergence(real_triple):
    f, a, b = real_triple
    expected = _mi_by_kl_divergence(a, f) + _mi_by_kl_divergence(b, f)
    assert mutual_information(f, a, b) == pytest.approx(expected, rel=1e-10)


def test_entropy_matches_scikit_image(real_triple):
    f = real_triple[0]
    assert entropy(f) == pytest.approx(shannon_entropy(f.astype(np.uint8), base=2), rel=1e-12)


def test_standard_deviation_matches_population_std(real_triple):
    f = real_triple[0]
    assert standard_deviation(f) == pytest.approx(np.std(f), rel=1e-12)
    small = np.array([[1.0, 2.0, 4.0], [8.0, 16.0, 32.0]])
    assert standard_deviation(small) == pytest.approx(statistics.pstdev(small.ravel().tolist()), rel=1e-12)


def test_vifp_matches_sewar(real_triple):
    """Our separable VIF against sewar's direct-convolution ``vifp`` (the stated definition)."""
    sewar = pytest.importorskip("sewar", reason="sewar not installed (pip install sewar)")
    f, a, _ = real_triple
    for ref, dist in ((a, f), (f, a), (a[:100, :90], f[:100, :90])):
        assert vifp(ref, dist) == pytest.approx(sewar.vifp(ref, dist), rel=1e-9)


# --------------------------------------------------------------------------- hand-computed

def test_spatial_frequency_by_hand():
    f = np.array([[0, 1, 3], [2, 2, 2]], dtype=float)
    # horizontal differences 1, 2, 0, 0 -> mean square 5/4; vertical 2, 1, -1 -> 6/3.
    assert spatial_frequency(f) == pytest.approx(math.sqrt(5 / 4 + 2), rel=1e-12)
    ramp = np.tile(np.arange(0, 30, 3, dtype=float), (7, 1))  # +3 per column, rows equal
    assert spatial_frequency(ramp) == pytest.approx(3.0, rel=1e-12)


def test_average_gradient_by_hand():
    f = np.array([[0, 1, 3], [2, 2, 2]], dtype=float)
    # gx: row 0 one-sided 1, central (3-0)/2, one-sided 2; row 1 zeros.
    # gy: two rows -> one-sided differences 2, 1, -1 on both rows.
    terms = [(1, 2), (1.5, 1), (2, -1), (0, 2), (0, 1), (0, -1)]
    expected = sum(math.sqrt((gx * gx + gy * gy) / 2) for gx, gy in terms) / 6
    assert average_gradient(f) == pytest.approx(expected, rel=1e-12)
    ramp = np.tile(np.arange(0, 30, 3, dtype=float), (7, 1))
    assert average_gradient(ramp) == pytest.approx(3 / math.sqrt(2), rel=1e-12)


def test_entropy_of_known_histograms():
    four_levels = np.repeat(np.array([[10, 50, 90, 200]], dtype=float), 8, axis=0)
    assert entropy(four_levels) == pytest.approx(2.0, abs=1e-12)
    assert entropy(np.full((9, 9), 77.0)) == 0.0
    # round(F): 10.4 -> 10 and 10.6 -> 11 are two levels.
    assert entropy(np.array([[10.4, 10.6]])) == pytest.approx(1.0, abs=1e-12)


def test_mutual_information_of_identical_images_is_twice_the_entropy():
    four_levels = np.repeat(np.array([[10, 50, 90, 200]], dtype=float), 8, axis=0)
    assert mutual_information(four_levels, four_levels, four_levels) == pytest.approx(4.0, abs=1e-12)
    const = np.full_like(four_levels, 5.0)
    assert mutual_information(four_levels, const, const) == pytest.approx(0.0, abs=1e-12)


def test_scd_closed_forms():
    rng = np.random.default_rng(1)
    a, b = rng.normal(100, 20, (64, 64)), rng.normal(120, 30, (64, 64))
    # F = A + B: corr(F - B, A) = corr(A, A) = 1 and likewise for B.
    assert scd(a + b, a, b) == pytest.approx(2.0, abs=1e-12)
    # F = A: corr(A - B, A) + corr(0, B) where the second term is defined as 0.
    expected = np.corrcoef((a - b).ravel(), a.ravel())[0, 1]
    assert scd(a, a, b) == pytest.approx(expected, rel=1e-10)


def test_vif_of_identical_images_is_one_and_noise_lowers_it():
    rng = np.random.default_rng(2)
    x = cv2.GaussianBlur(rng.uniform(0, 255, (96, 80)), (0, 0), 2.0)
    assert vifp(x, x) == pytest.approx(1.0, abs=1e-9)
    assert vif(x, x, x) == pytest.approx(1.0, abs=1e-9)
    assert vif(x, x, x, reduction="sum") == pytest.approx(2.0, abs=1e-9)
    assert vifp(x, x + rng.normal(0, 20, x.shape)) < 0.9
    with pytest.raises(ValueError, match="reduction"):
        vif(x, x, x, reduction="max")


def test_vif_smallest_image():
    """41 px per side: 41 -> 17 -> 7 -> 3 pixels at the coarser scales, just enough for the 17-, 9-,
    5- and 3-tap windows; 40 px leaves the coarsest scale too small."""
    rng = np.random.default_rng(5)
    x = rng.uniform(0, 255, (41, 41))
    assert 0.0 < vifp(x, x + rng.normal(0, 5, x.shape)) < 1.0
    with pytest.raises(ValueError, match="at least 41"):
        vifp(x[:40], x[:40])


def _blocks() -> np.ndarray:
    """Two-level (0 / 100) block pattern: every non-zero Sobel magnitude is >= 100."""
    rng = np.random.default_rng(3)
    return np.kron(rng.integers(0, 2, (8, 10)), np.ones((6, 5))) * 100.0


def test_qabf_of_a_perfect_fusion_is_the_sigmoid_product():
    """F = A = B: equal strengths and angles at every pixel. With these constants the
    per-pixel value is Tg / (1 + e^{kg (g - Dg)}) * Ta / (1 + e^{ka (1 - Da)}) and
    g >= 100 wherever it is weighted, so Qabf = Tg * Ta / (1 + e^{-4.4}) ~ 0.975."""
    x = _blocks()
    expected = 0.9994 * 0.9879 / (1 + math.exp(-22 * (1 - 0.8)))
    assert qabf(x, x, x) == pytest.approx(expected, rel=1e-12)


def test_qabf_of_constant_images():
    # Black images: with the reference's zero padding, any other constant has edges at
    # its border (pinned below).
    x = _blocks()
    black = np.zeros_like(x)
    assert qabf(x, black, black) == 0.0  # flat sources: no edges to preserve
    assert qabf(black, x, x) < 1e-3  # flat fusion preserves no edge of textured sources
    grey = np.full_like(x, 42.0)
    assert qabf(x, grey, grey) > 0.0


def _qabf_via_convolve2d(f, a, b):
    """Qabf written out with scipy.signal.convolve2d (MATLAB conv2 'same', zero padding),
    the filtering the reference evaluation uses; checks our OpenCV filtering, border and
    sign conventions."""
    from scipy.signal import convolve2d

    sx = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], float)
    sy = np.array([[1, 2, 1], [0, 0, 0], [-1, -2, -1]], float)

    def strength_angle(x):
        gx, gy = convolve2d(x, sx, mode="same"), convolve2d(x, sy, mode="same")
        angle = np.full(x.shape, np.pi / 2)
        nz = gx != 0
        angle[nz] = np.arctan(gy[nz] / gx[nz])
        return np.hypot(gx, gy), angle

    gf, af = strength_angle(f)
    total = den = 0.0
    for src in (a, b):
        gs, as_ = strength_angle(src)
        rel = gf.copy()  # equal strengths: the reference keeps g_F
        rel[gs > gf] = gf[gs > gf] / gs[gs > gf]
        rel[gs < gf] = gs[gs < gf] / gf[gs < gf]
        q = 0.9994 / (1 + np.exp(-15 * (rel - 0.5))) * 0.9879 / (1 + np.exp(-22 * (1 - np.abs(as_ - af) / (np.pi / 2) - 0.8)))
        total += (q * gs).sum()
        den += gs.sum()
    return total / den


def test_qabf_matches_a_convolve2d_formulation():
    rng = np.random.default_rng(4)
    # Sparse blocks and a few single-pixel spikes: many pixels with gx == 0 next to edges,
    # where the orientation sign convention matters.
    f = _blocks() * 0.7 + rng.integers(0, 3, _blocks().shape) * 20.0
    a = _blocks()
    b = np.roll(_blocks(), 3, axis=1) * 0.5
    b[10, 10] = 255.0
    assert qabf(f, a, b) == pytest.approx(_qabf_via_convolve2d(f, a, b), rel=1e-12)


@pytest.mark.parametrize("metric", ["MI", "SCD", "VIF", "Qabf", "SSIM"])
def test_two_source_metrics_are_symmetric_in_the_sources(real_triple, metric):
    f, a, b = real_triple
    assert evaluate(f, a, b, metrics=[metric])[metric] == pytest.approx(
        evaluate(f, b, a, metrics=[metric])[metric], rel=1e-12)


def test_evaluate_rejects_size_mismatch_and_unknown_metric():
    x = np.zeros((40, 40))
    with pytest.raises(ValueError, match="size"):
        evaluate(x, x, np.zeros((40, 41)))
    with pytest.raises(ValueError, match="unknown metric"):
        evaluate(x, x, x, metrics=["PSNR"])


def test_luminance_255_of_rgb_uses_bt601_weights():
    rgb = np.zeros((2, 2, 3), np.float32)
    rgb[0, 0] = (1.0, 0.0, 0.0)
    rgb[0, 1] = (0.0, 1.0, 0.0)
    rgb[1, 0] = (0.0, 0.0, 1.0)
    rgb[1, 1] = (1.0, 1.0, 1.0)
    # 0.299 * 255 = 76.2, 0.587 * 255 = 149.7, 0.114 * 255 = 29.1
    np.testing.assert_array_equal(luminance_255(rgb), [[76, 150], [29, 255]])
