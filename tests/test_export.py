"""``tdfusion export`` (issue 13, item 2): parity of the exported files with the torch network.

The published IVIF checkpoint is exported once per format; each file is run on a real
480x640 pair (onnxruntime for ONNX, ``torch.jit.load`` for TorchScript) and compared with
the toolkit's network and with the reference implementation's saved raw output (both
within 1e-4, the parity bar). docs/deploy.md's example runs in a subprocess in which
importing tdfusion fails, and must reproduce ``tdfusion fuse`` within one grey level.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tdfusion import export
from tdfusion.checkpoint import load_fusion_net
from tdfusion.cli import main
from tdfusion.colour import split_luma
from tdfusion.io import read_image

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

REPO = Path(__file__).resolve().parents[1]
STEM = "00710N"


@pytest.fixture(scope="module")
def ivif(shared_data):
    root = shared_data / "refusion"
    return {"ckpt": root / "models" / "ReFusion_IVIF.pth",
            "a": root / "test_cases" / "IVIF" / "infrared" / f"{STEM}.png",
            "b": root / "test_cases" / "IVIF" / "visible" / f"{STEM}.png",
            "ref": root / "reference_outputs" / "IVIF" / f"{STEM}.raw.npy"}


@pytest.fixture(scope="module")
def exported(ivif, tmp_path_factory):
    """``exported(fmt) -> path`` of the IVIF network in that format (exported on first use)."""
    done: dict[str, Path] = {}

    def get(fmt: str) -> Path:
        if fmt not in done:
            out = tmp_path_factory.mktemp("export") / f"ivif.{'onnx' if fmt == 'onnx' else 'pt'}"
            assert main(["export", "--checkpoint", str(ivif["ckpt"]), "--format", fmt, "--out", str(out),
                         "--threads", "1"]) == 0
            done[fmt] = out
        return done[fmt]

    return get


def _luma_pair(ivif):
    ya = split_luma(read_image(ivif["a"]).pixels)[0]
    yb = split_luma(read_image(ivif["b"]).pixels)[0]
    return ya[None, None], yb[None, None]


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_exported_network_reproduces_torch_and_the_reference(ivif, exported, fmt):
    path = exported(fmt)
    run = export.onnx_runner(path) if fmt == "onnx" else export.torchscript_runner(path)
    a, b = _luma_pair(ivif)
    out = run(a, b)[0, 0].astype(np.float64)
    net, _ = load_fusion_net(ivif["ckpt"])
    with torch.no_grad():
        ours = net(torch.from_numpy(a), torch.from_numpy(b))[0, 0].numpy()
    assert out.shape == (480, 640)
    assert np.abs(out - ours).max() < 1e-4
    assert np.abs(out - np.load(ivif["ref"])).max() < 1e-4


def test_export_writes_nothing_when_the_file_disagrees(tmp_path, monkeypatch, capsys):
    torch.manual_seed(0)
    from tdfusion.checkpoint import module_record, save_checkpoint
    from tdfusion.nets import FusionNet

    ckpt = tmp_path / "small.pt"
    save_checkpoint({"fusion": module_record("fusion", FusionNet(dim=8, num_blocks=1, heads=2))}, ckpt)
    real = export.torchscript_runner
    monkeypatch.setattr(export, "torchscript_runner", lambda data: (lambda a, b: real(data)(a, b) + 1e-3))
    out = tmp_path / "m.pt"
    assert main(["export", "--checkpoint", str(ckpt), "--format", "torchscript", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"error: {out}: the exported network differs")
    assert not out.exists() and list(tmp_path.iterdir()) == [ckpt]


@pytest.mark.parametrize("argv, message", [
    (["--checkpoint", "missing.pth", "--out", "m.onnx"], "missing.pth: no such checkpoint file"),
    (["--checkpoint", "x.pth", "--out", "m.onnx", "--threads", "0"], "--threads 0: must be at least 1"),
])
def test_export_bad_input_is_one_line(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    assert main(["export", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and message in err
    assert list(tmp_path.iterdir()) == []


def test_deploy_example_runs_without_tdfusion(ivif, exported, tmp_path):
    text = (REPO / "docs" / "deploy.md").read_text()
    section = text.split("## Example: fuse a pair with onnxruntime", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    script = tmp_path / "fuse_onnx.py"
    # Any import of tdfusion (or torch) inside the example fails.
    script.write_text("import sys\nsys.modules['tdfusion'] = None\nsys.modules['torch'] = None\n" + code)
    out = tmp_path / "fused.png"
    subprocess.run([sys.executable, str(script), str(exported("onnx")), str(ivif["a"]), str(ivif["b"]), str(out)],
                   check=True, cwd=tmp_path)
    ours = tmp_path / "ours"
    assert main(["fuse", "--checkpoint", str(ivif["ckpt"]), "--a", str(ivif["a"]), "--b", str(ivif["b"]),
                 "--out", str(ours), "--device", "cpu"]) == 0
    got = read_image(out).pixels
    want = read_image(ours / f"{STEM}.png").pixels
    assert got.shape == want.shape == (480, 640, 3)
    assert np.abs(got - want).max() <= 1 / 255 + 1e-6
