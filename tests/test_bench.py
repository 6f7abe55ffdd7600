"""``tdfusion bench``: the FLOP counts behind its GFLOP/s, the profile breakdown, the CLI.

No timing is asserted: only what the figures are computed from. FLOP counts are checked
against closed-form counts of the operations and against the issue's independent figure
for the reference ReFusion code (about 37 GFLOP per 480x640 pair).
"""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from tdfusion import bench
from tdfusion.bench.measure import count_flops
from tdfusion.cli import main
from tdfusion.nets import FusionNet

pytestmark = pytest.mark.usefixtures("one_thread")


def test_depthwise_convolution_backward_is_counted_once_per_gradient():
    # torch's own formula ignores groups and counts a depthwise weight gradient C times over.
    n, c, h, w = 2, 16, 20, 24
    x = torch.rand(n, c, h, w, requires_grad=True)
    weight = torch.rand(c, 1, 3, 3, requires_grad=True)

    def fn():
        F.conv2d(x, weight, padding=1, groups=c).sum().backward()

    forward = 2 * n * c * h * w * 9
    assert count_flops(fn) == 3 * forward  # forward, input gradient, weight gradient


def test_fusion_network_flops_match_the_reference_figure():
    # The issue measured about 37 GFLOP per 480x640 pair with the official ReFusion code.
    gflop = bench.fusion_flops_per_pixel(FusionNet()) * 480 * 640 / 1e9
    assert gflop == pytest.approx(37, rel=0.03)


def test_profile_breakdown_attributes_time_and_flops_to_categories():
    a, b = torch.rand(96, 128), torch.rand(128, 64)
    x = torch.rand(1, 8, 16, 16)
    weight = torch.rand(8, 8, 3, 3)

    def fn():
        torch.mm(a, b)
        F.conv2d(x, weight, padding=1)
        torch.relu(x)

    prof = bench.profile_breakdown(fn, torch.device("cpu"), top=5)
    cats = {c["category"]: c for c in prof["categories"]}
    assert cats["matrix products"]["gflop"] * 1e9 == 2 * 96 * 128 * 64
    assert cats["convolutions"]["gflop"] * 1e9 == 2 * 8 * 8 * 9 * 16 * 16
    assert sum(c["share"] for c in prof["categories"]) == pytest.approx(1.0)
    assert len(prof["top_ops"]) <= 5
    assert any(o["op"] == "aten::mm" for o in prof["top_ops"])


def test_bench_cli_writes_figures_and_profiles(tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = main(["bench", "--sizes", "24x40", "--paths", "banded,plain", "--tasks", "none", "--repeats", "1",
               "--warmup", "0", "--no-isolate", "--profile", "3", "--device", "cpu", "--json", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["hardware"]["roofline"]["matmul_gflops_per_s"] > 0
    rows = {r["path"]: r for r in res["inference"]}
    assert set(rows) == {"banded", "plain"}
    for r in rows.values():
        assert r["size"] == "40x24" and r["median_s"] > 0 and r["peak_mb"] > 0
        assert r["profile"]["categories"] and len(r["profile"]["top_ops"]) == 3
    # GFLOP/s count the same useful work on every path.
    assert rows["banded"]["gflop"] == rows["plain"]["gflop"]
    assert rows["banded"]["bands"] * rows["banded"]["band_rows"] >= 24
    printed = capsys.readouterr().out
    assert "where the time goes: inference 40x24 banded" in printed


def test_bench_meta_reports_each_phase():
    rows = bench.bench_meta("recon", torch.device("cpu"), warmup=0, repeats=1, methods=("jvp",))
    (row,) = rows
    assert set(row["phases_s"]) == {"inner", "task_inner", "outer", "jvp", "lossgen"}
    assert sum(row["phases_s"].values()) <= row["median_s"] * 1.01
    assert row["gflop"] > 0


@pytest.mark.parametrize("argv, message", [
    (["--sizes", "480"], "--sizes '480': expected HEIGHTxWIDTH"),
    (["--tasks", "classify"], "--tasks 'classify': expected one of seg, det, recon"),
    (["--profile", "-1"], "--profile >= 0"),
])
def test_bench_bad_arguments_fail_with_one_line(argv, message, capsys):
    assert main(["bench", "--device", "cpu", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
