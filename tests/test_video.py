"""Video fusion end to end on small synthetic clips (issue 15, item 3).

The clips are lossless (FFV1 in .mkv), so every fused frame can be compared exactly with
the Python API fusing the same two frames."""
from __future__ import annotations

import argparse

import cv2
import numpy as np
import pytest
import torch

import tdfusion
from tdfusion.io import file_umask
from tdfusion.checkpoint import module_record, save_checkpoint
from tdfusion.cli import main
from tdfusion.nets import create_model

pytestmark = pytest.mark.usefixtures("one_thread")
H, W, N = 40, 56, 6


def _frames(n=N, h=H, w=W, colour=False, seed=0):
    """Moving blobs: a warm target on a cool background (grey) or a textured scene (colour)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = rng.integers(0, 256, (h, w, 3 if colour else 1)).astype(np.float64)
    out = []
    for t in range(n):
        blob = 200 * np.exp(-((xx - 8 - 6 * t) ** 2 + (yy - h / 2) ** 2) / 40.0)
        img = np.clip(0.5 * base + blob[:, :, None], 0, 255).astype(np.uint8)
        out.append(img if colour else img[:, :, 0])
    return out


def _write_clip(path, frames, fps=12.0):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"FFV1"), fps, (frames[0].shape[1], frames[0].shape[0]))
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_GRAY2BGR) if f.ndim == 2 else f[:, :, ::-1].copy())
    writer.release()
    return path


def _read_clip(path):
    cap, out = cv2.VideoCapture(str(path)), []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        out.append(f[:, :, ::-1])
    fps = cap.get(cv2.CAP_PROP_FPS)
    cap.release()
    return out, fps


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(1)
    net = create_model("fusion", dim=4, num_blocks=1, heads=2)
    path = tmp_path_factory.mktemp("video") / "net.pt"
    save_checkpoint({"fusion": module_record("fusion", net)}, path)
    return path


@pytest.fixture
def clips(tmp_path):
    ir, vis = _frames(), _frames(colour=True, seed=1)
    return (_write_clip(tmp_path / "ir.mkv", ir), _write_clip(tmp_path / "vis.mkv", vis)), (ir, vis)


def _fuse(checkpoint, a, b, out, *extra):
    return main(["fuse", "--checkpoint", str(checkpoint), "--a", str(a), "--b", str(b), "--out", str(out),
                 "--device", "cpu", *extra])


def test_two_streams_fuse_to_a_video(checkpoint, clips, tmp_path, capsys):
    (a, b), (ir, vis) = clips
    out = tmp_path / "fused.mkv"
    assert _fuse(checkpoint, a, b, out) == 0
    assert f"fused {N} frame(s)" in capsys.readouterr().out
    frames, fps = _read_clip(out)
    assert len(frames) == N and fps == pytest.approx(12.0)
    fuser = tdfusion.Fuser.from_pretrained(checkpoint, device="cpu")
    for got, fa, fb in zip(frames, ir, vis):
        np.testing.assert_array_equal(got, fuser(fa, fb))  # colour: the visible clip's chroma
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left
    # the mode open() gives (as every other output; mkstemp's temporary is 0600)
    assert out.stat().st_mode & 0o777 == 0o666 & ~file_umask()


def test_video_to_numbered_frame_folder_and_frames_in(checkpoint, clips, tmp_path):
    (a, b), (ir, vis) = clips
    assert _fuse(checkpoint, a, b, tmp_path / "frames") == 0
    names = sorted(p.name for p in (tmp_path / "frames").iterdir())
    assert names == [f"{i:06d}.png" for i in range(1, N + 1)]
    # A folder of numbered frames is a stream too: frame_2 sorts before frame_10.
    folder = tmp_path / "vis_frames"
    folder.mkdir()
    for i, f in enumerate(vis):
        cv2.imwrite(str(folder / f"frame_{i + 1}.png"), f[:, :, ::-1])
    assert _fuse(checkpoint, a, folder, tmp_path / "mixed.mkv") == 0
    frames, _ = _read_clip(tmp_path / "mixed.mkv")
    direct = [cv2.imread(str(tmp_path / "frames" / n))[:, :, ::-1] for n in names]
    assert len(frames) == len(direct) == N
    for got, want in zip(frames, direct):
        np.testing.assert_array_equal(got, want)


def test_different_frame_counts_are_an_error_or_the_sync_rule(checkpoint, tmp_path, capfd):
    a = _write_clip(tmp_path / "a.mkv", _frames(n=5))
    b = _write_clip(tmp_path / "b.mkv", _frames(n=3, colour=True))
    out = tmp_path / "o.mkv"
    assert _fuse(checkpoint, a, b, out) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "3 frames, but" in err[0] and "has 5" in err[0] and "--sync shortest" in err[0]
    assert not out.exists()
    assert _fuse(checkpoint, a, b, out, "--sync", "shortest") == 0
    assert len(_read_clip(out)[0]) == 3


def test_different_sizes_are_an_error(checkpoint, tmp_path, capfd):
    a = _write_clip(tmp_path / "a.mkv", _frames())
    b = _write_clip(tmp_path / "b.mkv", _frames(h=32, colour=True))
    assert _fuse(checkpoint, a, b, tmp_path / "o.mkv") == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "size 56x32 differs" in err[0] and not (tmp_path / "o.mkv").exists()


def test_failure_midway_leaves_no_video(checkpoint, clips, tmp_path, monkeypatch, capfd):
    (a, b), _ = clips
    import tdfusion.commands.fuse as fuse_cmd

    real, calls = fuse_cmd._fuse_frames, []

    def fail_on_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(fuse_cmd, "_fuse_frames", fail_on_third)
    out = tmp_path / "o.mp4"
    assert _fuse(checkpoint, a, b, out) == 130
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".o.")]


def test_batched_frames_equal_frame_by_frame(checkpoint, clips):
    """The GPU path (one network call per batch) against the CPU path, on the CPU."""
    import tdfusion.commands.fuse as fuse_cmd
    from tdfusion.checkpoint import load_fusion_net
    from tdfusion.video import open_stream

    (a, b), _ = clips
    net, _ = load_fusion_net(checkpoint)
    frames = list(zip(open_stream(a).frames(), open_stream(b).frames()))
    args = argparse.Namespace(normalize="minmax", gray=False, max_memory=None, chunk_rows=None)
    batched = fuse_cmd._fuse_frames(net, frames, args, 8)   # one network call for the batch
    single = fuse_cmd._fuse_frames(net, frames, args, None)  # frame by frame, banded
    assert len(batched) == len(single) == N
    for x, y in zip(batched, single):
        np.testing.assert_allclose(x, y, atol=2e-5)
