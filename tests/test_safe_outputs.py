"""Outputs are what was asked for: ``tdfusion export`` refuses a file name of the other
format, and video output takes ``--crf`` and ``--lossless`` (refused where they cannot hold)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from tdfusion import export
from tdfusion.checkpoint import module_record, save_checkpoint
from tdfusion.cli import main
from tdfusion.errors import TDFusionError
from tdfusion.nets import create_model

pytestmark = pytest.mark.usefixtures("one_thread")
H, W, N = 48, 64, 6


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("safe") / "net.pt"
    save_checkpoint({"fusion": module_record("fusion", create_model("fusion", dim=4, num_blocks=1, heads=2))}, path)
    return path


def _one_error(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


# -- export: the extension must suit --format ---------------------------------------------------------------------

@pytest.mark.parametrize("fmt, name, said", [
    ("onnx", "model.pt", "a .pt name is for --format torchscript; --format onnx writes .onnx files (e.g. model.onnx)"),
    ("torchscript", "model.onnx", "a .onnx name is for --format onnx"),
    ("torchscript", "model.pth", "not .pth (e.g. model.pt)"),
    ("onnx", "model", "--out has no extension"),
])
def test_export_refuses_an_extension_of_another_format(checkpoint, tmp_path, capsys, fmt, name, said):
    out = tmp_path / name
    out.write_bytes(b"an earlier export, to be kept")
    assert main(["export", "--checkpoint", str(checkpoint), "--format", fmt, "--out", str(out)]) == 2
    line = _one_error(capsys)
    assert line.startswith(f"error: {out}: ") and said in line and line.endswith("nothing written")
    assert out.read_bytes() == b"an earlier export, to be kept"
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no temporary either


def test_export_api_refuses_it_too_and_never_overwrites_the_checkpoint(checkpoint, tmp_path, capsys):
    with pytest.raises(TDFusionError, match="a .onnx name is for --format onnx"):
        export.export_network(create_model("fusion", dim=4, num_blocks=1, heads=2), tmp_path / "m.onnx", "torchscript")
    assert not (tmp_path / "m.onnx").exists()
    before = checkpoint.read_bytes()
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "torchscript", "--out", str(checkpoint)]) == 2
    assert "--out is the checkpoint being exported" in _one_error(capsys)
    assert checkpoint.read_bytes() == before


def test_export_help_names_the_extensions(capsys):
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert ".onnx for onnx" in text and ".pt (or .ts, .torchscript) for torchscript" in text


# -- video: --crf and --lossless ----------------------------------------------------------------------------------

def _frames(n=N, colour=False, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W]
    base = cv2.GaussianBlur(rng.integers(0, 256, (H, W, 3)).astype(np.float32), (0, 0), 1.0)
    out = []
    for t in range(n):
        blob = 180 * np.exp(-((xx - 8 - 7 * t) ** 2 + (yy - H / 2) ** 2) / 50.0)
        img = np.clip(0.6 * base + blob[:, :, None], 0, 255).astype(np.uint8)
        out.append(img if colour else img[:, :, 0].copy())
    return out


def _write(path, frames):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"FFV1"), 10.0, (W, H))
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_GRAY2BGR) if f.ndim == 2 else f[:, :, ::-1].copy())
    writer.release()
    return path


def _read(path):
    cap, out = cv2.VideoCapture(str(path)), []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        out.append(f.astype(np.int16))
    cap.release()
    return out


@pytest.fixture
def clips(tmp_path):
    return _write(tmp_path / "ir.mkv", _frames()), _write(tmp_path / "vis.mkv", _frames(colour=True, seed=1))


def _fuse(checkpoint, clips, out, *extra):
    a, b = clips
    return main(["fuse", "--checkpoint", str(checkpoint), "--a", str(a), "--b", str(b), "--out", str(out),
                 "--device", "cpu", *extra])


def _vp9_writes_here(tmp_path) -> bool:
    probe = cv2.VideoWriter(str(tmp_path / "probe.webm"), cv2.VideoWriter_fourcc(*"VP90"), 10.0, (W, H))
    ok = probe.isOpened()
    probe.release()
    (tmp_path / "probe.webm").unlink(missing_ok=True)
    return ok


def test_crf_sets_the_quality_of_a_webm(checkpoint, clips, tmp_path):
    if not _vp9_writes_here(tmp_path):
        pytest.skip("this OpenCV build has no VP9 encoder")
    assert _fuse(checkpoint, clips, tmp_path / "exact.mkv", "--lossless") == 0
    exact = _read(tmp_path / "exact.mkv")
    errors, sizes = {}, {}
    for crf in (4, 60):
        out = tmp_path / f"crf{crf}.webm"
        assert _fuse(checkpoint, clips, out, "--crf", str(crf)) == 0
        frames = _read(out)
        assert len(frames) == len(exact) == N
        errors[crf] = float(np.mean([np.abs(f - e).mean() for f, e in zip(frames, exact)]))
        sizes[crf] = out.stat().st_size
    assert sizes[4] > 2 * sizes[60]  # the setting reached the encoder
    assert errors[4] < errors[60]


def test_lossless_output_is_exact_and_a_lossy_container_is_refused(checkpoint, clips, tmp_path, capfd):
    assert _fuse(checkpoint, clips, tmp_path / "a.mkv", "--lossless") == 0
    assert _fuse(checkpoint, clips, tmp_path / "frames") == 0  # PNG frames: the exact fused frames
    pngs = sorted((tmp_path / "frames").iterdir())
    for got, png in zip(_read(tmp_path / "a.mkv"), pngs):
        np.testing.assert_array_equal(got, cv2.imread(str(png)).astype(np.int16))
    capfd.readouterr()
    for out, extra, said in (
            ("b.mp4", ["--lossless"], ".mp4 files are written with mp4v (MPEG-4 part 2), which is lossy"),
            ("c.mkv", ["--lossless", "--codec", "mp4v"], "--codec mp4v (MPEG-4 part 2), which is lossy"),
            ("d.webm", ["--lossless"], "which is lossy")):
        assert _fuse(checkpoint, clips, tmp_path / out, *extra) == 2
        err = capfd.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: {tmp_path / out}: --lossless") and said in err[0]
        assert ".mkv" in err[0] and not (tmp_path / out).exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


def test_crf_where_it_cannot_apply_is_one_line(checkpoint, clips, tmp_path, capfd):
    a, b = clips
    cases = [("o.mp4", ["--crf", "20"], "has no constant-rate factor"),
             ("o.mkv", ["--crf", "20"], "FFV1 is lossless"),
             ("o2.mkv", ["--crf", "20", "--lossless"], "--crf and --lossless exclude each other"),
             ("frames", ["--crf", "20"], "--crf applies to a video file --out"),
             ("frames2", ["--lossless"], "--lossless applies to a video file --out")]
    if _vp9_writes_here(tmp_path):
        cases.append(("o.webm", ["--crf", "1"], "refused --crf 1; VP9 takes 3 to 63"))  # the encoder's own refusal
    capfd.readouterr()  # the probe's own OpenCV lines
    for out, extra, said in cases:
        assert _fuse(checkpoint, clips, tmp_path / out, *extra) == 2, out
        err = capfd.readouterr().err.strip().splitlines()  # fd level: OpenCV's own lines would show here
        assert len(err) == 1 and said in err[0], (out, err)
        assert not (tmp_path / out).exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    # image pairs: the options would do nothing
    cv2.imwrite(str(tmp_path / "a.png"), _frames(1)[0])
    cv2.imwrite(str(tmp_path / "b.png"), _frames(1, seed=2)[0])
    assert main(["fuse", "--checkpoint", str(checkpoint), "--a", str(tmp_path / "a.png"), "--b",
                 str(tmp_path / "b.png"), "--out", str(tmp_path / "f.png"), "--device", "cpu", "--crf", "20"]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not to image pairs" in err[0] and not (tmp_path / "f.png").exists()


def test_fuse_help_lists_the_video_quality_options(capsys):
    with pytest.raises(SystemExit):
        main(["fuse", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--crf N" in text and "(default: none, the encoder's own rate control)" in text
    assert "--lossless" in text and "(default: off;" in text
    assert ".mkv .avi: FFV1, lossless" in text and ".mp4 .mov .m4v: MPEG-4 part 2, lossy" in text
