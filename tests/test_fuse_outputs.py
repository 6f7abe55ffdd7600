"""fuse's outputs (issue 15, items 4 and 5): --out FILE for one pair, --skip-existing,
replaced files reported, progress shown for a single pair, --help without torch."""
from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from tdfusion.checkpoint import module_record, save_checkpoint
from tdfusion.cli import main
from tdfusion.nets import create_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("outputs") / "net.pt"
    save_checkpoint({"fusion": module_record("fusion", create_model("fusion", dim=4, num_blocks=1, heads=2))}, path)
    return path


def _folders(tmp_path, stems=("p1", "p2")):
    rng = np.random.default_rng(0)
    for side in ("a", "b"):
        (tmp_path / side).mkdir()
        for stem in stems:
            cv2.imwrite(str(tmp_path / side / f"{stem}.png"), rng.integers(0, 256, (24, 32), dtype=np.uint8))
    return tmp_path / "a", tmp_path / "b"


def _fuse(ckpt, a, b, out, *extra):
    return main(["fuse", "--checkpoint", str(ckpt), "--a", str(a), "--b", str(b), "--out", str(out),
                 "--device", "cpu", *extra])


def test_out_image_file_for_one_pair(ckpt, tmp_path):
    a, b = _folders(tmp_path, ("only",))
    assert _fuse(ckpt, a / "only.png", b / "only.png", tmp_path / "result" / "fused.png") == 0
    assert (tmp_path / "result" / "fused.png").is_file()
    assert not (tmp_path / "result" / "fused.png" / "only.png").exists()
    assert cv2.imread(str(tmp_path / "result" / "fused.png"), cv2.IMREAD_UNCHANGED).shape == (24, 32)


def test_out_image_file_needs_one_pair(ckpt, tmp_path, capsys):
    a, b = _folders(tmp_path)
    assert _fuse(ckpt, a, b, tmp_path / "fused.png") == 2
    assert "needs one pair; 2 pairs need a folder" in capsys.readouterr().err


def test_skip_existing_and_replaced_count(ckpt, tmp_path, capsys):
    a, b = _folders(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "p1.png").write_bytes(b"an earlier result")
    assert _fuse(ckpt, a, b, out, "--skip-existing") == 0
    assert (out / "p1.png").read_bytes() == b"an earlier result"
    assert cv2.imread(str(out / "p2.png")) is not None
    assert "skipped 1 existing" in capsys.readouterr().out
    assert _fuse(ckpt, a, b, out) == 0
    assert "replaced 2 existing file(s)" in capsys.readouterr().out
    assert cv2.imread(str(out / "p1.png")) is not None


def test_all_skipped_loads_nothing(tmp_path, capsys):
    a, b = _folders(tmp_path, ("x",))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x.png").write_bytes(b"done")
    # The checkpoint does not even exist: with nothing to do, it is never read.
    assert _fuse(tmp_path / "missing.pt", a, b, tmp_path / "out", "--skip-existing") == 0
    assert "skipped 1 existing" in capsys.readouterr().out


def test_one_pair_shows_progress_off_a_terminal(ckpt, tmp_path, capsys):
    a, b = _folders(tmp_path, ("only",))
    assert _fuse(ckpt, a, b, tmp_path / "out") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("fusing: 0/1 (0%) elapsed 0:00:00")
    assert any(line.startswith("fusing: 1/1 (100%) elapsed ") for line in lines)


@pytest.mark.parametrize("command", ["fuse", "data", "convert", "train", "metrics", "report", "bench", "compare",
                                     "eval", "export"])
def test_help_does_not_import_torch(command):
    """--help prints text: it must not pay seconds for torch (fuse, data, convert and bench did),
    nor, where the parser needs none of it, for OpenCV."""
    code = ("import sys\nfrom tdfusion.cli import build_parser\n"
            f"try:\n    build_parser([{command!r}, '--help']).parse_args([{command!r}, '--help'])\n"
            "except SystemExit:\n    pass\nprint('torch' in sys.modules, 'cv2' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    torch_loaded, cv2_loaded = out.strip().splitlines()[-1].split()
    assert torch_loaded == "False"
    if command in ("fuse", "data", "convert", "train"):
        assert cv2_loaded == "False"


def test_convert_presets_named_in_the_parser_are_the_readers():
    from tdfusion.commands import convert
    from tdfusion.data import det_labels

    assert set(convert.PRESET_NAMES) == set(convert.presets())
    assert convert.DEFAULT_TOLERANCE == det_labels.DEFAULT_TOLERANCE
