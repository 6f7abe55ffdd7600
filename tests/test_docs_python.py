"""docs/python.md runs as written: every ```python block, in order, in one namespace.

The page fuses ``ir.png``/``vis.png`` with ``refusion-ivif``: the test lays out crops of a
real IVIF pair under those names and puts the shared byte copy of the published file in a
fresh cache (``TDFUSION_HOME``), so the example runs offline, as it would after the first
download.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import cv2

REPO = Path(__file__).resolve().parents[1]


def test_python_md_examples_run(shared_data, tmp_path, monkeypatch, capsys):
    cases = shared_data / "refusion" / "test_cases" / "IVIF"
    ir = cv2.imread(str(cases / "infrared" / "00710N.png"), cv2.IMREAD_UNCHANGED)[160:320, 200:400]
    vis = cv2.imread(str(cases / "visible" / "00710N.png"))[160:320, 200:400]
    cv2.imwrite(str(tmp_path / "ir.png"), ir)
    cv2.imwrite(str(tmp_path / "vis.png"), vis)
    (tmp_path / "home" / "models").mkdir(parents=True)
    shutil.copy(shared_data / "refusion" / "models" / "ReFusion_IVIF.pth", tmp_path / "home" / "models")
    monkeypatch.setenv("TDFUSION_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("TDFUSION_MIRROR", raising=False)
    monkeypatch.chdir(tmp_path)

    blocks = re.findall(r"```python\n(.*?)```", (REPO / "docs" / "python.md").read_text(), re.S)
    assert len(blocks) >= 5
    namespace: dict = {}
    for i, code in enumerate(blocks):
        exec(compile(code, f"docs/python.md block {i + 1}", "exec"), namespace)

    out = capsys.readouterr().out
    assert (tmp_path / "fused.png").is_file() and (tmp_path / "last.pt").is_file()
    # The documented error lines, one per bad input.
    assert re.search(r"a: float values 0\.\.\d+ outside \[0, 1\]; 8-bit values in a float array", out)
    assert "a: unsupported dtype int32" in out
    assert "b: size 200x160 differs from a (200x100)" in out
    assert "['v_a', 'w_a'] (160, 200) float32" in out
