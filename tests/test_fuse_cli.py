"""``tdfusion fuse`` end to end, in-process through ``tdfusion.cli.main``.

A small randomly initialised FusionNet (dim 8, one block) saved as a toolkit checkpoint
keeps every run fast. Expected outputs are computed by running that in-memory network
directly on the known input arrays, and colour is checked with Pillow's own YCbCr
conversion, not the toolkit's.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from tdfusion.checkpoint import module_record, save_checkpoint
from tdfusion.cli import build_parser, main
from tdfusion.nets import FusionNet

H, W = 24, 32


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def net_and_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    net = FusionNet(dim=8, num_blocks=1, heads=2).eval()
    path = tmp_path_factory.mktemp("ckpt") / "small.pt"
    save_checkpoint({"fusion": module_record("fusion", net), "epoch": 1}, path)
    return net, path


def _grey(seed, h=H, w=W, dtype=np.uint8):
    rng = np.random.default_rng(seed)
    top = 255 if dtype == np.uint8 else 65535
    # A smooth ramp plus noise: a real image-like range, never constant.
    ramp = np.linspace(0.1, 0.9, w)[None, :] * np.ones((h, 1))
    return np.clip((ramp + 0.1 * rng.standard_normal((h, w))) * top, 0, top).astype(dtype)


def _colour(seed, h=H, w=W):
    rng = np.random.default_rng(seed)
    base = np.array([150, 110, 70], np.float64)  # a warm, mid-range colour: no clipping
    return np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


def _save(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    PILImage.fromarray(arr).save(path)


def _expected_raw(net, ya, yb):
    with torch.no_grad():
        a = torch.from_numpy(ya.astype(np.float32))[None, None]
        b = torch.from_numpy(yb.astype(np.float32))[None, None]
        return net(a, b)[0, 0].numpy().astype(np.float64)


def _fuse(ckpt, a, b, out, *extra):
    return main(["fuse", "--checkpoint", str(ckpt), "--a", str(a), "--b", str(b), "--out", str(out),
                 "--device", "cpu", *extra])


# ---------------------------------------------------------------- normal runs

def test_folder_of_grey_and_colour_pairs(net_and_ckpt, tmp_path):
    _, ckpt = net_and_ckpt
    for i, stem in enumerate(["0001", "0002", "0003"]):
        _save(tmp_path / "ir" / f"{stem}.png", _grey(i))
        _save(tmp_path / "vis" / f"{stem}.jpg", _colour(i))
    out = tmp_path / "fused"
    assert _fuse(ckpt, tmp_path / "ir", tmp_path / "vis", out) == 0
    assert sorted(p.name for p in out.iterdir()) == ["0001.png", "0002.png", "0003.png"]
    for p in out.iterdir():
        with PILImage.open(p) as im:
            assert im.size == (W, H) and im.mode == "RGB"


def test_gray_flag_writes_one_channel(net_and_ckpt, tmp_path):
    _, ckpt = net_and_ckpt
    _save(tmp_path / "a" / "x.png", _grey(0))
    _save(tmp_path / "b" / "x.png", _colour(1))
    assert _fuse(ckpt, tmp_path / "a", tmp_path / "b", tmp_path / "out", "--gray") == 0
    with PILImage.open(tmp_path / "out" / "x.png") as im:
        assert im.mode == "L" and im.size == (W, H)


def test_grey_pair_values_minmax_and_none(net_and_ckpt, tmp_path):
    net, ckpt = net_and_ckpt
    ga, gb = _grey(3), _grey(4)
    _save(tmp_path / "a.png", ga)
    _save(tmp_path / "b.png", gb)
    raw = _expected_raw(net, ga / 255.0, gb / 255.0)

    assert _fuse(ckpt, tmp_path / "a.png", tmp_path / "b.png", tmp_path / "mm", "--raw") == 0
    mm = np.asarray(PILImage.open(tmp_path / "mm" / "a.png"))
    assert mm.ndim == 2  # two grey sources give a grey result without --gray
    stretched = (raw - raw.min()) / (raw.max() - raw.min()) * 255.0
    assert np.abs(mm - stretched).max() <= 0.5 + 1e-3
    assert mm.min() == 0 and mm.max() == 255

    saved_raw = np.load(tmp_path / "mm" / "a.raw.npy")
    assert saved_raw.shape == (H, W) and saved_raw.dtype == np.float32
    np.testing.assert_allclose(saved_raw, raw, atol=1e-6)

    assert _fuse(ckpt, tmp_path / "a.png", tmp_path / "b.png", tmp_path / "none", "--normalize", "none") == 0
    none = np.asarray(PILImage.open(tmp_path / "none" / "a.png"))
    assert np.abs(none - raw * 255.0).max() <= 0.5 + 1e-3
    assert not (tmp_path / "none" / "a.raw.npy").exists()
    # A random network's output is far from spanning 0..1: the two modes must differ.
    assert none.max() - none.min() < 200


def test_bfloat16_precision_stays_near_float32(net_and_ckpt, tmp_path):
    net, ckpt = net_and_ckpt
    ga, gb = _grey(7), _grey(8)
    _save(tmp_path / "a.png", ga)
    _save(tmp_path / "b.png", gb)
    raw = _expected_raw(net, ga / 255.0, gb / 255.0)  # float32 module, whole image
    assert _fuse(ckpt, tmp_path / "a.png", tmp_path / "b.png", tmp_path / "bf", "--raw",
                 "--precision", "bfloat16") == 0
    low = np.load(tmp_path / "bf" / "a.raw.npy")
    assert low.dtype == np.float32 and low.shape == (H, W)
    # bfloat16 keeps 8 significant bits: about 4e-3 relative per rounding.
    assert 0 < np.abs(low - raw).max() < 2e-2


def test_float16_precision_needs_a_gpu(net_and_ckpt, tmp_path, capsys):
    _, ckpt = net_and_ckpt
    _save(tmp_path / "a.png", _grey(0))
    _save(tmp_path / "b.png", _grey(1))
    assert _fuse(ckpt, tmp_path / "a.png", tmp_path / "b.png", tmp_path / "h", "--precision", "float16") == 2
    assert capsys.readouterr().err.strip() == "error: --precision float16 needs a CUDA device; use bfloat16 on CPU"
    assert not (tmp_path / "h").exists()


def test_colour_restored_from_the_colour_source(net_and_ckpt, tmp_path):
    _, ckpt = net_and_ckpt
    ga, cb = _grey(5), _colour(6)
    _save(tmp_path / "a" / "s.png", ga)
    _save(tmp_path / "b" / "s.png", cb)
    assert _fuse(ckpt, tmp_path / "a", tmp_path / "b", tmp_path / "rgb") == 0
    assert _fuse(ckpt, tmp_path / "a", tmp_path / "b", tmp_path / "y", "--gray") == 0
    rgb = PILImage.open(tmp_path / "rgb" / "s.png")
    ycc = np.asarray(rgb.convert("YCbCr")).astype(np.float64)
    src = np.asarray(PILImage.fromarray(cb).convert("YCbCr")).astype(np.float64)
    y_only = np.asarray(PILImage.open(tmp_path / "y" / "s.png")).astype(np.float64)
    unclipped = (np.asarray(rgb) > 0).all(axis=2) & (np.asarray(rgb) < 255).all(axis=2)
    assert unclipped.mean() > 0.5
    # Luma is the fused Y; chroma (Cb, Cr) is the colour source's.
    assert np.abs(ycc[..., 0] - y_only)[unclipped].max() <= 2
    assert np.abs(ycc[..., 1:] - src[..., 1:])[unclipped].max() <= 3


def test_16bit_inputs_give_16bit_output(net_and_ckpt, tmp_path):
    net, ckpt = net_and_ckpt
    ga, gb = _grey(7, dtype=np.uint16), _grey(8, dtype=np.uint16)
    _save(tmp_path / "a" / "t.png", ga)
    _save(tmp_path / "b" / "t.png", gb)
    assert _fuse(ckpt, tmp_path / "a", tmp_path / "b", tmp_path / "out", "--normalize", "none") == 0
    out = np.asarray(PILImage.open(tmp_path / "out" / "t.png"))
    assert out.dtype == np.uint16 and out.shape == (H, W)
    raw = _expected_raw(net, ga / 65535.0, gb / 65535.0)
    assert np.abs(out - raw * 65535.0).max() <= 0.5 + 0.05


def test_resize_b(net_and_ckpt, tmp_path):
    _, ckpt = net_and_ckpt
    _save(tmp_path / "a" / "r.png", _grey(0))
    _save(tmp_path / "b" / "r.png", _grey(1, h=2 * H, w=2 * W))
    assert _fuse(ckpt, tmp_path / "a", tmp_path / "b", tmp_path / "out", "--resize-b") == 0
    with PILImage.open(tmp_path / "out" / "r.png") as im:
        assert im.size == (W, H)


def test_existing_files_in_output_folder_are_kept(net_and_ckpt, tmp_path):
    _, ckpt = net_and_ckpt
    _save(tmp_path / "a.png", _grey(0))
    _save(tmp_path / "b.png", _grey(1))
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert _fuse(ckpt, tmp_path / "a.png", tmp_path / "b.png", out) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "notes.txt"]


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit) as info:
        main(["fuse", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--checkpoint", "--a", "--b", "--out", "--normalize", "minmax", "none", "--gray",
                   "--resize-b", "--raw", "--device"):
        assert option in text, option
    fuse_parser = build_parser()._subparsers._group_actions[0].choices["fuse"]
    for action in fuse_parser._actions:
        assert action.help and action.help != "==SUPPRESS==", action.option_strings


# ---------------------------------------------------------------- errors: exit 2, one line, no output

def _assert_clean_failure(capfd, out, *names):
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    for name in names:
        assert name in err[0], (name, err[0])
    assert not out.exists() or list(out.iterdir()) == []


def _pairs(tmp_path, n=3):
    for i in range(n):
        _save(tmp_path / "a" / f"{i:02d}.png", _grey(i))
        _save(tmp_path / "b" / f"{i:02d}.png", _grey(i + 10))


def test_error_file_without_partner(net_and_ckpt, tmp_path, capfd):
    _, ckpt = net_and_ckpt
    _pairs(tmp_path)
    _save(tmp_path / "b" / "lonely.png", _grey(0))
    out = tmp_path / "out"
    assert _fuse(ckpt, tmp_path / "a", tmp_path / "b", out) == 2
    _assert_clean_failure(capfd, out, "lonely.png")


def test_error_size_mismatch(net_and_ckpt, tmp_path, capfd):
    _, ckpt = net_and_ckpt
    _pairs(tmp_path)
    _save(tmp_path / "b" / "02.png", _grey(0, h=H + 1))  # the last pair: nothing before it may be written
    out = tmp_path / "out"
    assert _fuse(ckpt, tmp_path / "a", tmp_path / "b", out) == 2
    _assert_clean_failure(capfd, out, "02.png", "--resize-b")


@pytest.mark.parametrize("kind", ["truncated", "garbage", "empty"])
def test_error_unreadable_image(net_and_ckpt, tmp_path, capfd, kind):
    _, ckpt = net_and_ckpt
    _pairs(tmp_path)
    bad = tmp_path / "a" / "02.png"  # sorted last: earlier pairs must not have been written
    data = bad.read_bytes()
    bad.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"\x89PNG not really",
                     "empty": b""}[kind])
    out = tmp_path / "out"
    assert _fuse(ckpt, tmp_path / "a", tmp_path / "b", out) == 2
    _assert_clean_failure(capfd, out, str(bad))


def test_error_empty_input_folder(net_and_ckpt, tmp_path, capfd):
    _, ckpt = net_and_ckpt
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    out = tmp_path / "out"
    assert _fuse(ckpt, tmp_path / "a", tmp_path / "b", out) == 2
    _assert_clean_failure(capfd, out, str(tmp_path / "a"))


def test_error_missing_input(net_and_ckpt, tmp_path, capfd):
    _, ckpt = net_and_ckpt
    _pairs(tmp_path, n=1)
    out = tmp_path / "out"
    assert _fuse(ckpt, tmp_path / "a", tmp_path / "nothere", out) == 2
    _assert_clean_failure(capfd, out, "nothere")


def test_error_missing_checkpoint(tmp_path, capfd):
    _pairs(tmp_path, n=1)
    out = tmp_path / "out"
    assert _fuse(tmp_path / "gone.pt", tmp_path / "a", tmp_path / "b", out) == 2
    _assert_clean_failure(capfd, out, "gone.pt")


def test_error_not_a_checkpoint(tmp_path, capfd):
    _pairs(tmp_path, n=1)
    fake = tmp_path / "model.pth"
    fake.write_bytes(np.random.default_rng(0).bytes(2048))
    out = tmp_path / "out"
    assert _fuse(fake, tmp_path / "a", tmp_path / "b", out) == 2
    _assert_clean_failure(capfd, out, "model.pth")


def test_error_out_is_a_file(net_and_ckpt, tmp_path, capfd):
    _, ckpt = net_and_ckpt
    _pairs(tmp_path, n=1)
    # An image name is an output file for one pair (test_fuse_outputs.py); anything else
    # that exists as a file is not a folder to write into.
    out = tmp_path / "out.txt"
    out.write_bytes(b"keep me")
    assert _fuse(ckpt, tmp_path / "a", tmp_path / "b", out) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "out.txt" in err[0]
    assert out.read_bytes() == b"keep me"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_error_cuda_device_without_cuda(net_and_ckpt, tmp_path, capfd):
    _, ckpt = net_and_ckpt
    _pairs(tmp_path, n=1)
    out = tmp_path / "out"
    rc = main(["fuse", "--checkpoint", str(ckpt), "--a", str(tmp_path / "a"), "--b", str(tmp_path / "b"),
               "--out", str(out), "--device", "cuda"])
    assert rc == 2
    _assert_clean_failure(capfd, out, "cuda")


def test_ctrl_c_leaves_only_complete_outputs(net_and_ckpt, tmp_path, monkeypatch, capfd):
    """Interrupt while the second pair's raw file is being written."""
    _, ckpt = net_and_ckpt
    _pairs(tmp_path, n=3)
    real_save, calls = np.save, []

    def save_then_interrupt(fh, arr):
        calls.append(1)
        if len(calls) == 2:
            fh.write(b"half a file")
            raise KeyboardInterrupt
        real_save(fh, arr)

    monkeypatch.setattr(np, "save", save_then_interrupt)  # fuse imports numpy when it runs
    out = tmp_path / "out"
    assert _fuse(ckpt, tmp_path / "a", tmp_path / "b", out, "--raw") == 130
    # Pair 00 complete; pair 01's image was written before the interrupt, its raw was not.
    assert sorted(p.name for p in out.iterdir()) == ["00.png", "00.raw.npy", "01.png"]
    assert np.load(out / "00.raw.npy").shape == (H, W)
