"""The Python API (tdfusion.Fuser, tdfusion.fusion_metrics) against the command line and
against direct computations (issue 15, item 1)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from PIL import Image as PILImage

import tdfusion
from tdfusion.checkpoint import module_record, save_checkpoint
from tdfusion.cli import main
from tdfusion.errors import TDFusionError
from tdfusion.metrics import evaluate
from tdfusion.nets import create_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pair(shared_data):
    """A 96x128 crop of the IVIF test case 00710N: IR grey uint8, visible RGB uint8."""
    root = shared_data / "refusion" / "test_cases" / "IVIF"
    ir = cv2.imread(str(root / "infrared" / "00710N.png"), cv2.IMREAD_UNCHANGED)[200:296, 300:428]
    vis = cv2.imread(str(root / "visible" / "00710N.png"))[200:296, 300:428, ::-1].copy()
    return ir, vis


@pytest.fixture(scope="module")
def fuser(shared_data):
    return tdfusion.Fuser.from_pretrained(shared_data / "refusion" / "models" / "ReFusion_IVIF.pth", device="cpu")


def _cli_output(tmp_path, checkpoint, a, b, *extra):
    cv2.imwrite(str(tmp_path / "a.png"), a if a.ndim == 2 else a[:, :, ::-1])
    cv2.imwrite(str(tmp_path / "b.png"), b if b.ndim == 2 else b[:, :, ::-1])
    out = tmp_path / "fused.png"
    assert main(["fuse", "--checkpoint", str(checkpoint), "--a", str(tmp_path / "a.png"), "--b",
                 str(tmp_path / "b.png"), "--out", str(out), "--device", "cpu", *extra]) == 0
    got = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    return got if got.ndim == 2 else got[:, :, ::-1]


def test_uint8_numpy_equals_cli_file(fuser, pair, tmp_path, shared_data):
    ir, vis = pair
    out = fuser(ir, vis)
    assert out.dtype == np.uint8 and out.shape == vis.shape  # a grey and a colour source: colour
    cli = _cli_output(tmp_path, shared_data / "refusion" / "models" / "ReFusion_IVIF.pth", ir, vis)
    np.testing.assert_array_equal(out, cli)


def test_grey_pair_gives_grey_and_gray_option(fuser, pair, shared_data):
    ir, vis = pair
    grey_vis = cv2.cvtColor(vis, cv2.COLOR_RGB2GRAY)
    assert fuser(ir, grey_vis).shape == ir.shape
    gray_only = tdfusion.Fuser.from_pretrained(shared_data / "refusion" / "models" / "ReFusion_IVIF.pth",
                                               device="cpu", gray=True)
    assert gray_only(ir, vis).shape == ir.shape


@pytest.mark.parametrize("dtype", ["uint16", "float32", "float64", "float16"])
def test_other_dtypes_match_uint8(fuser, pair, dtype):
    ir, vis = pair
    ref = fuser(ir, vis).astype(np.float64) / 255
    if dtype == "uint16":
        a, b = ir.astype(np.uint16) * 257, vis.astype(np.uint16) * 257  # the same picture at 16 bits
        out = fuser(a, b)
        assert out.dtype == np.uint16
        got = out / 65535
    else:
        a, b = (ir / 255).astype(dtype), (vis / 255).astype(dtype)
        out = fuser(a, b)
        assert out.dtype == np.dtype(dtype) and out.shape == vis.shape
        got = out.astype(np.float64)
    tol = 4e-3 if dtype == "float16" else 1 / 255  # the uint8 result is rounded to 8 bits
    assert np.abs(got - ref).max() <= tol + 1e-6


def test_uint8_as_float_range_is_an_error_not_a_wrong_picture(fuser, pair):
    ir, vis = pair
    with pytest.raises(TDFusionError, match=r"a: float values .* outside \[0, 1\].*divide by 255"):
        fuser(ir.astype(np.float32), vis / 255)


@pytest.mark.parametrize("bad, match", [
    (lambda ir: ir.astype(np.int32), "unsupported dtype int32"),
    (lambda ir: np.stack([ir, ir], 2), r"shape \(96, 128, 2\)"),
    (lambda ir: ir[None, None], "expected"),
    (lambda ir: np.full(ir.shape, np.nan, np.float32), "NaN"),
    (lambda ir: ir.tolist(), "unsupported type list"),
    (lambda ir: ir[:50], "size 128x50 differs"),
])
def test_bad_inputs_are_explicit_errors(fuser, pair, bad, match):
    ir, vis = pair
    with pytest.raises(TDFusionError, match=match):
        fuser(vis, bad(ir)) if "differs" in match else fuser(bad(ir), vis)


def test_torch_tensors_round_trip(fuser, pair):
    ir, vis = pair
    ref = fuser(ir, vis)
    a = torch.from_numpy(ir)                          # (H, W) uint8
    b = torch.from_numpy(vis).permute(2, 0, 1)        # (3, H, W) uint8, channels first
    out = fuser(a, b)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.uint8 and tuple(out.shape) == (3, 96, 128)
    np.testing.assert_array_equal(out.permute(1, 2, 0).numpy(), ref)
    outf = fuser(a[None].float() / 255, b.float() / 255)
    assert outf.dtype == torch.float32 and tuple(outf.shape) == (3, 96, 128)
    assert np.abs(outf.permute(1, 2, 0).numpy() * 255 - ref).max() <= 0.5 + 1e-3


def test_pil_images_round_trip(fuser, pair):
    ir, vis = pair
    out = fuser(PILImage.fromarray(ir), PILImage.fromarray(vis))
    assert isinstance(out, PILImage.Image) and out.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(out), fuser(ir, vis))


def test_mixed_kinds_are_refused(fuser, pair):
    ir, vis = pair
    with pytest.raises(TDFusionError, match="same kind"):
        fuser(ir, torch.from_numpy(vis).permute(2, 0, 1))


@pytest.fixture(scope="module")
def toolkit_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    fusion = create_model("fusion", dim=4, num_blocks=1, heads=2)
    lossgen = create_model("lossgen", dim=4, num_blocks=1, heads=2, pairs=2)
    path = tmp_path_factory.mktemp("api") / "run.pt"
    save_checkpoint({"fusion": module_record("fusion", fusion), "lossgen": module_record("lossgen", lossgen)}, path)
    return path, lossgen.eval()


def test_weights_are_gs_softmax_maps(toolkit_checkpoint, pair):
    path, lossgen = toolkit_checkpoint
    ir, vis = pair
    maps = tdfusion.Fuser.from_pretrained(path, device="cpu").weights(ir, vis)
    assert set(maps) == {"w_a", "v_a"}
    # Independent: G's forward on the luminance (OpenCV's Y of the RGB source).
    ya = torch.from_numpy(ir / np.float32(255)).float()[None, None]
    yb = torch.from_numpy(cv2.cvtColor((vis / np.float32(255)).astype(np.float32), cv2.COLOR_RGB2YCrCb)[:, :, 0])[None, None]
    with torch.no_grad():
        w = lossgen(ya, yb)[0].numpy()
    np.testing.assert_allclose(maps["w_a"], w[0], atol=1e-6)
    np.testing.assert_allclose(maps["v_a"], w[2], atol=1e-6)
    np.testing.assert_allclose(w[0] + w[1], 1.0, atol=1e-5)


def test_weights_of_a_published_model_say_there_is_no_g(fuser, pair):
    with pytest.raises(TDFusionError, match="no loss generator"):
        fuser.weights(*pair)


def test_fusion_metrics_conventions(fuser, pair):
    ir, vis = pair
    fused = fuser(ir, vis)
    luma = lambda x: np.rint(cv2.cvtColor(x.astype(np.float32)[:, :, ::-1], cv2.COLOR_BGR2GRAY)).astype(np.float64)
    expected = evaluate(luma(fused), ir.astype(np.float64), luma(vis))   # the [0, 255] core function
    assert tdfusion.fusion_metrics(fused, ir, vis) == pytest.approx(expected, rel=1e-12)
    as_float = tdfusion.fusion_metrics(fused / 255, ir / 255, vis / 255)
    assert as_float == pytest.approx(expected, rel=1e-4, abs=1e-6)
    on_255 = tdfusion.fusion_metrics(fused.astype(np.float64), ir.astype(np.float64), vis.astype(np.float64),
                                     data_range=255)
    assert on_255 == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_fusion_metrics_refuses_a_range_mismatch(pair):
    ir, vis = pair
    with pytest.raises(TDFusionError, match="outside"):
        tdfusion.fusion_metrics(ir.astype(np.float32), ir / 255, vis / 255)


def test_evaluate_warns_on_unit_range_input(pair):
    ir, vis = pair
    y = cv2.cvtColor(vis, cv2.COLOR_RGB2GRAY)
    with pytest.warns(UserWarning, match="data_range"):
        evaluate(ir / 255.0, ir / 255.0, y / 255.0)


def test_low_level_image_refuses_integer_pixels(pair):
    from tdfusion.io import Image

    with pytest.raises(TDFusionError, match="must be float in"):
        Image(pair[0], 8)


def test_sixteen_bit_pil_and_torch_inputs(fuser, pair):
    ir, vis = pair
    a = ir.astype(np.uint16) * 257
    b = cv2.cvtColor(vis, cv2.COLOR_RGB2GRAY).astype(np.uint16) * 257
    ref = fuser(a, b)
    out = fuser(PILImage.fromarray(a), PILImage.fromarray(b))
    assert out.mode == "I;16"
    np.testing.assert_array_equal(np.asarray(out), ref)
    t = fuser(torch.from_numpy(a.astype(np.int32)).to(torch.uint16), torch.from_numpy(b.astype(np.int32)).to(torch.uint16))
    assert t.dtype == torch.uint16
    np.testing.assert_array_equal(t.numpy(), ref)
