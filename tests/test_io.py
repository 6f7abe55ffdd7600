"""Image reading/writing, folder pairing and atomic output (tdfusion.io).

Test images are written with Pillow or tifffile (not with the OpenCV code under
test) from known arrays, so channel order and scaling are checked independently.
Where Pillow cannot write a format (16-bit RGB PNG), OpenCV is used with the channel
order made explicit.
"""
from __future__ import annotations

import os

import cv2
import numpy as np
import pytest
import tifffile
from PIL import Image as PILImage

from tdfusion.errors import TDFusionError
from tdfusion.io import atomic_write, image_size, list_images, match_pairs, read_image, write_image


def _rand_u8(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _rand_u16(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 65536, shape, dtype=np.uint16)


# ---------------------------------------------------------------- decoding

@pytest.mark.parametrize("ext", ["png", "bmp", "tif"])
def test_8bit_grey(tmp_path, ext):
    arr = _rand_u8((11, 13))
    p = tmp_path / f"g.{ext}"
    PILImage.fromarray(arr, "L").save(p)
    img = read_image(p)
    assert img.is_gray and img.bit_depth == 8 and img.size == (11, 13)
    assert img.pixels.dtype == np.float32
    np.testing.assert_allclose(img.pixels, arr / 255.0, atol=1e-7)


@pytest.mark.parametrize("ext", ["png", "bmp", "tif"])
def test_8bit_rgb_keeps_channel_order(tmp_path, ext):
    arr = _rand_u8((9, 7, 3))
    p = tmp_path / f"c.{ext}"
    PILImage.fromarray(arr, "RGB").save(p)
    img = read_image(p)
    assert not img.is_gray and img.bit_depth == 8 and img.pixels.shape == (9, 7, 3)
    np.testing.assert_allclose(img.pixels, arr / 255.0, atol=1e-7)


def test_jpeg_rgb(tmp_path):
    # Smooth content so JPEG loss stays small; a red-left/blue-right ramp pins channel order.
    x = np.linspace(0, 1, 32)[None, :]
    arr = np.zeros((16, 32, 3), np.uint8)
    arr[..., 0] = np.rint(255 * (1 - x))
    arr[..., 2] = np.rint(255 * x)
    p = tmp_path / "c.jpg"
    PILImage.fromarray(arr).save(p, quality=95)
    img = read_image(p)
    assert img.pixels.shape == (16, 32, 3)
    assert np.abs(img.pixels - arr / 255.0).mean() < 0.03
    assert img.pixels[:, :4, 0].mean() > 0.8 and img.pixels[:, :4, 2].mean() < 0.2


def test_16bit_grey_png(tmp_path):
    arr = _rand_u16((10, 12))
    p = tmp_path / "g16.png"
    PILImage.fromarray(arr).save(p)  # mode I;16
    img = read_image(p)
    assert img.is_gray and img.bit_depth == 16
    np.testing.assert_allclose(img.pixels, arr / 65535.0, atol=1e-7)


def test_16bit_rgb_png(tmp_path):
    rgb = _rand_u16((6, 8, 3))
    p = tmp_path / "c16.png"
    assert cv2.imwrite(str(p), rgb[..., ::-1].copy())  # OpenCV files are BGR
    img = read_image(p)
    assert img.bit_depth == 16 and img.pixels.shape == (6, 8, 3)
    np.testing.assert_allclose(img.pixels, rgb / 65535.0, atol=1e-7)


def test_rgba_drops_alpha(tmp_path):
    rgb = _rand_u8((8, 9, 3))
    alpha = _rand_u8((8, 9), seed=1)
    p = tmp_path / "a.png"
    PILImage.fromarray(np.dstack([rgb, alpha]), "RGBA").save(p)
    img = read_image(p)
    assert img.pixels.shape == (8, 9, 3)
    np.testing.assert_allclose(img.pixels, rgb / 255.0, atol=1e-7)


def test_grey_alpha_is_grey(tmp_path):
    grey = _rand_u8((8, 9))
    alpha = _rand_u8((8, 9), seed=1)
    p = tmp_path / "la.png"
    PILImage.fromarray(np.dstack([grey, alpha]), "LA").save(p)
    img = read_image(p)
    assert img.is_gray
    np.testing.assert_allclose(img.pixels, grey / 255.0, atol=1e-7)


def test_rgb_with_equal_channels_is_grey(tmp_path):
    grey = _rand_u8((8, 9))
    p = tmp_path / "rgbgrey.png"
    PILImage.fromarray(np.dstack([grey] * 3), "RGB").save(p)
    img = read_image(p)
    assert img.is_gray
    np.testing.assert_allclose(img.pixels, grey / 255.0, atol=1e-7)
    # One differing pixel makes it colour again.
    rgb = np.dstack([grey] * 3)
    rgb[0, 0, 1] ^= 1
    PILImage.fromarray(rgb, "RGB").save(p)
    assert not read_image(p).is_gray


def test_float_tiff_in_unit_range_is_kept(tmp_path):
    arr = np.random.default_rng(0).random((7, 5)).astype(np.float32) * 0.6 + 0.2
    p = tmp_path / "f.tif"
    tifffile.imwrite(p, arr)
    img = read_image(p)
    assert img.is_gray
    np.testing.assert_array_equal(img.pixels, arr)


def test_float_tiff_out_of_range_is_minmax_stretched(tmp_path):
    arr = np.random.default_rng(0).random((7, 5)).astype(np.float32) * 40.0 - 10.0  # e.g. degrees C
    p = tmp_path / "t.tif"
    tifffile.imwrite(p, arr)
    img = read_image(p)
    expected = (arr.astype(np.float64) - arr.min()) / (arr.max() - arr.min())
    np.testing.assert_allclose(img.pixels, expected, atol=1e-6)
    assert img.pixels.min() == 0.0 and img.pixels.max() == pytest.approx(1.0)


def test_float_tiff_with_nan_is_rejected(tmp_path):
    arr = np.zeros((4, 4), np.float32)
    arr[1, 1] = np.nan
    p = tmp_path / "nan.tif"
    tifffile.imwrite(p, arr)
    with pytest.raises(TDFusionError, match="nan.tif"):
        read_image(p)


def _bad_files(tmp_path):
    good = tmp_path / "good.png"
    PILImage.fromarray(_rand_u8((40, 40, 3))).save(good)
    data = good.read_bytes()
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.png").write_bytes(np.random.default_rng(0).bytes(500))
    (tmp_path / "text.jpg").write_text("this is not an image\n")
    return ["empty.png", "truncated.png", "garbage.png", "text.jpg", "missing.png"]


def test_bad_files_raise_naming_the_file(tmp_path, capfd):
    for name in _bad_files(tmp_path):
        with pytest.raises(TDFusionError) as info:
            read_image(tmp_path / name)
        msg = str(info.value)
        assert name in msg and "\n" not in msg
    # The decoder's own warnings must not leak to the terminal next to our message.
    assert capfd.readouterr().err == ""


def test_image_size_matches_pillow_and_reports_unreadable(tmp_path):
    arr = _rand_u8((21, 34, 3))
    p = tmp_path / "s.png"
    PILImage.fromarray(arr).save(p)
    assert image_size(p) == (21, 34)
    (tmp_path / "bad.png").write_bytes(b"not an image at all")
    with pytest.raises(TDFusionError, match="bad.png"):
        image_size(tmp_path / "bad.png")


# ---------------------------------------------------------------- writing

@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("channels", [1, 3])
def test_write_image_read_back_with_pillow(tmp_path, dtype, channels):
    shape = (9, 11) if channels == 1 else (9, 11, 3)
    arr = _rand_u8(shape) if dtype == np.uint8 else _rand_u16(shape)
    p = tmp_path / "out.png"
    write_image(p, arr)
    if dtype == np.uint16 and channels == 3:
        back = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)[..., ::-1]  # Pillow can't read 16-bit RGB
    else:
        back = np.asarray(PILImage.open(p))
    assert back.dtype == dtype
    np.testing.assert_array_equal(back, arr)
    assert [f.name for f in tmp_path.iterdir()] == ["out.png"]


# ---------------------------------------------------------------- pairing

def _touch_images(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        PILImage.fromarray(_rand_u8((4, 4))).save(folder / n)


def test_match_pairs_by_stem_across_extensions(tmp_path):
    _touch_images(tmp_path / "a", ["02.png", "01.png", "10.bmp"])
    _touch_images(tmp_path / "b", ["01.jpg", "02.tif", "10.png"])
    (tmp_path / "a" / "notes.txt").write_text("ignored")
    (tmp_path / "b" / ".hidden.png").write_bytes(b"")
    pairs = match_pairs(tmp_path / "a", tmp_path / "b")
    assert [(s, pa.name, pb.name) for s, pa, pb in pairs] == [
        ("01", "01.png", "01.jpg"), ("02", "02.png", "02.tif"), ("10", "10.bmp", "10.png")]


def test_match_pairs_two_files(tmp_path):
    _touch_images(tmp_path, ["ir.png", "vis.jpg"])
    assert match_pairs(tmp_path / "ir.png", tmp_path / "vis.jpg") == [
        ("ir", tmp_path / "ir.png", tmp_path / "vis.jpg")]


@pytest.mark.parametrize("side", ["a", "b"])
def test_match_pairs_image_without_partner(tmp_path, side):
    _touch_images(tmp_path / "a", ["1.png", "2.png"])
    _touch_images(tmp_path / "b", ["1.png", "2.png"])
    _touch_images(tmp_path / side, ["orphan.png"])
    with pytest.raises(TDFusionError, match="orphan.png.*no partner"):
        match_pairs(tmp_path / "a", tmp_path / "b")


def test_match_pairs_empty_folders(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with pytest.raises(TDFusionError, match="no images") as info:
        match_pairs(tmp_path / "a", tmp_path / "b")
    assert str(tmp_path / "a") in str(info.value)


def test_match_pairs_duplicate_stem(tmp_path):
    _touch_images(tmp_path / "a", ["1.png", "1.jpg"])
    _touch_images(tmp_path / "b", ["1.png"])
    with pytest.raises(TDFusionError, match="share the stem"):
        match_pairs(tmp_path / "a", tmp_path / "b")
    with pytest.raises(TDFusionError, match="share the stem"):
        list_images(tmp_path / "a")


def test_match_pairs_file_and_folder(tmp_path):
    _touch_images(tmp_path / "a", ["1.png"])
    with pytest.raises(TDFusionError, match="two files or two folders"):
        match_pairs(tmp_path / "a" / "1.png", tmp_path / "a")


def test_match_pairs_missing_input(tmp_path):
    _touch_images(tmp_path / "a", ["1.png"])
    with pytest.raises(TDFusionError, match="nope"):
        match_pairs(tmp_path / "a", tmp_path / "nope")


# ---------------------------------------------------------------- atomic output

def test_atomic_write_success(tmp_path):
    target = tmp_path / "sub" / "x.bin"
    with atomic_write(target) as fh:
        fh.write(b"hello")
    assert target.read_bytes() == b"hello"
    assert os.listdir(target.parent) == ["x.bin"]


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_write_gives_the_mode_open_gives(tmp_path, umask):
    old = os.umask(umask)
    try:
        (tmp_path / "plain.bin").write_bytes(b"x")  # the reference: an ordinary open()
        with atomic_write(tmp_path / "atomic.bin") as fh:
            fh.write(b"x")
    finally:
        os.umask(old)
    mode = lambda p: p.stat().st_mode & 0o7777  # noqa: E731
    assert mode(tmp_path / "atomic.bin") == mode(tmp_path / "plain.bin")


def test_atomic_write_keeps_the_mode_of_the_file_it_replaces(tmp_path):
    target = tmp_path / "x.bin"
    target.write_bytes(b"old")
    target.chmod(0o640)
    with atomic_write(target) as fh:
        fh.write(b"new")
    assert target.stat().st_mode & 0o7777 == 0o640 and target.read_bytes() == b"new"


@pytest.mark.parametrize("exc", [ValueError, KeyboardInterrupt])
def test_atomic_write_failure_leaves_nothing(tmp_path, exc):
    target = tmp_path / "x.bin"
    with pytest.raises(exc):
        with atomic_write(target) as fh:
            fh.write(b"partial")
            raise exc()
    assert os.listdir(tmp_path) == []


def test_atomic_write_failure_keeps_previous_file(tmp_path):
    target = tmp_path / "x.txt"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(target, "w") as fh:
            fh.write("new, half")
            raise KeyboardInterrupt
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["x.txt"]
