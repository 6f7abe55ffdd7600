"""``--threads`` on every computing command, pairs in flight (``fuse --jobs``), and
``tdfusion bench --vs-official`` with a stand-in for the official network (issue 13).

The official ReFusion file is never shipped: the stand-in below is a module of the same
interface (class ``ReFusion``, ``load_state_dict`` of a published checkpoint,
``forward(cat([Y_a, Y_b], 1))``) built on tdfusion's plain NCHW formulation.
"""
from __future__ import annotations

import json
import os
import threading
import time

import numpy as np
import pytest
import torch

from tdfusion.checkpoint import module_record, save_checkpoint
from tdfusion.cli import COMPUTING, build_parser, main
from tdfusion.device import in_flight, set_threads
from tdfusion.io import read_image, write_image
from tdfusion.nets import FusionNet

pytestmark = pytest.mark.usefixtures("one_thread")

STAND_IN = '''
import torch
from torch import nn

from tdfusion.checkpoint import convert_refusion_state_dict
from tdfusion.nets import FusionNet
from tdfusion.nets.reference import plain_fusion


class ReFusion(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = FusionNet()

    def load_state_dict(self, state, strict=True):
        _, ours = convert_refusion_state_dict(state)
        return self.net.load_state_dict(ours, strict=strict)

    def forward(self, x):
        params = dict(self.net.named_parameters())
        return plain_fusion(params, x[:, :1], x[:, 1:], 2, 8)
'''


def test_every_computing_command_takes_threads():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert COMPUTING == {"fuse", "synth", "train", "eval", "compare", "metrics", "report", "bench", "export", "inspect"}
    for name, p in sub.choices.items():
        options = {o for a in p._actions for o in a.option_strings}
        assert ("--threads" in options) == (name in COMPUTING), name


def test_threads_option_bounds_torch_and_child_processes(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    before = torch.get_num_threads()
    try:
        # synth computes little; what matters is that main applied the bound before running it.
        assert main(["synth", "--out", str(tmp_path / "d"), "--train", "1", "--test", "0", "--size", "16", "16",
                     "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1
        import os

        assert os.environ["OMP_NUM_THREADS"] == "1"
    finally:
        torch.set_num_threads(before)
    assert main(["synth", "--out", str(tmp_path / "e"), "--threads", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --threads 0: must be at least 1"] and not (tmp_path / "e").exists()


def test_set_threads_none_keeps_the_default():
    assert set_threads(None) == torch.get_num_threads()


def test_in_flight_keeps_order_overlaps_and_splits_threads():
    seen_threads, active, peak = [], [0], [0]
    lock = threading.Lock()

    def work(i):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
            seen_threads.append(torch.get_num_threads())
        time.sleep(0.05)
        with lock:
            active[0] -= 1
        return i * i

    torch.set_num_threads(4)
    try:
        assert list(in_flight(work, range(6), jobs=2)) == [i * i for i in range(6)]
        assert peak[0] == 2 and set(seen_threads) == {2}
        assert torch.get_num_threads() == 4  # restored
    finally:
        torch.set_num_threads(1)
    assert list(in_flight(work, [3], jobs=4)) == [9]


def test_in_flight_raises_the_first_error():
    def work(i):
        if i == 2:
            raise ValueError("bad item")
        return i

    results = in_flight(work, range(5), jobs=2)
    assert next(results) == 0 and next(results) == 1
    with pytest.raises(ValueError, match="bad item"):
        next(results)


def test_fuse_jobs_do_not_change_the_outputs(tmp_path):
    torch.manual_seed(0)
    ckpt = tmp_path / "small.pt"
    save_checkpoint({"fusion": module_record("fusion", FusionNet(dim=8, num_blocks=1, heads=2))}, ckpt)
    rng = np.random.default_rng(0)
    for side in ("a", "b"):
        for i in range(5):
            write_image(tmp_path / side / f"p{i}.png", rng.integers(0, 256, (40, 56), dtype=np.uint8))
    outs = {}
    for jobs in ("1", "3"):
        out = tmp_path / f"out{jobs}"
        assert main(["fuse", "--checkpoint", str(ckpt), "--a", str(tmp_path / "a"), "--b", str(tmp_path / "b"),
                     "--out", str(out), "--raw", "--device", "cpu", "--jobs", jobs, "--threads", "2"]) == 0
        outs[jobs] = out
    for i in range(5):
        raw1, raw3 = (np.load(outs[j] / f"p{i}.raw.npy") for j in ("1", "3"))
        assert raw1.shape == (40, 56) and np.abs(raw1 - raw3).max() < 1e-6
        png1, png3 = (read_image(outs[j] / f"p{i}.png").pixels for j in ("1", "3"))
        assert np.abs(png1 - png3).max() <= 1 / 255 + 1e-7


def test_fuse_jobs_must_be_positive(tmp_path, capsys):
    assert main(["fuse", "--checkpoint", "x", "--a", "a", "--b", "b", "--out", str(tmp_path / "o"),
                 "--jobs", "0"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == ["error: --jobs 0: must be at least 1"]
    assert not (tmp_path / "o").exists()


def test_bench_measures_each_thread_count(tmp_path):
    out = tmp_path / "b.json"
    assert main(["bench", "--sizes", "24x40", "--tasks", "none", "--repeats", "1", "--warmup", "0", "--no-isolate",
                 "--thread-counts", "1,2", "--device", "cpu", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["inference"]
    assert [r["threads"] for r in rows] == [1, 2]


@pytest.mark.parametrize("isolate", [True, False])
def test_bench_vs_official_times_both_on_the_same_pairs(shared_data, tmp_path, capsys, isolate):
    stand_in = tmp_path / "ReFusion.py"
    stand_in.write_text(STAND_IN)
    root = shared_data / "refusion"
    out = tmp_path / "vs.json"
    assert main(["bench", "--vs-official", str(stand_in), "--checkpoint", str(root / "models" / "ReFusion_MIF.pth"),
                 "--a", str(root / "test_cases" / "MIF" / "CT_PET_SPECT"), "--b", str(root / "test_cases" / "MIF" / "MRI"),
                 "--vs-pairs", "2", "--repeats", "1", "--device", "cpu", "--json", str(out)]
                + ([] if isolate else ["--no-isolate"])) == 0
    res = json.loads(out.read_text())["vs_official"]
    assert res["pairs"] == 2 and res["sizes"] == ["256x256"] and len(res["rounds"]) == 1
    assert res["isolated"] is isolate
    assert res["max_abs_diff"] < 1e-4  # the same network, two formulations
    r = res["rounds"][0]
    assert r["ours_s_per_pair"] == pytest.approx(r["ours_2_pairs_s"] / 2)
    assert r["ratio"] == pytest.approx(r["official_s_per_pair"] / r["ours_s_per_pair"])
    assert 0 <= r["ours_system_share"] <= 1 and 0 <= r["official_system_share"] <= 1
    # where each side ran: two fresh processes, or this one
    here = os.getpid()
    if isolate:
        assert here not in r["processes"] and len(set(r["processes"])) == 2
    else:
        assert r["processes"] == [here, here]
    assert "official / ours" in capsys.readouterr().out


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    ("import not_a_module_anywhere\n", "cannot import it (ModuleNotFoundError"),
    ("x = 1\n", "defines no network class 'ReFusion'"),
])
def test_bench_vs_official_bad_file_is_one_line(tmp_path, capsys, content, message):
    path = tmp_path / "official.py"
    if content is not None:
        path.write_text(content)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for side in ("a", "b"):
        for i in range(2):
            write_image(tmp_path / side / f"p{i}.png", np.zeros((8, 8), np.uint8))
    ckpt = tmp_path / "c.pt"
    save_checkpoint({"fusion": module_record("fusion", FusionNet(dim=8, num_blocks=1, heads=2))}, ckpt)
    assert main(["bench", "--vs-official", str(path), "--checkpoint", str(ckpt), "--a", str(tmp_path / "a"),
                 "--b", str(tmp_path / "b"), "--vs-pairs", "2", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {path}: ") and message in err[0]
