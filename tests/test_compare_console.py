"""What `tdfusion compare` tells its user before a long run, and what a kill leaves behind."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tdfusion.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--task", "seg", "--dataset", "synthetic", "--device", "cpu", "dataset.options.length=4",
        "dataset.options.size=[48,64]", "downstream.input_size=[48,64]", "downstream.batch_size=2",
        "task.segformer={hidden_sizes: [8, 16, 16, 16], depths: [1, 1, 1, 1], num_attention_heads: "
        "[1, 1, 1, 1], decoder_hidden_size: 16}"]


def test_compare_names_its_default_preset_and_projects_it_on_a_cpu(tmp_path, capsys):
    json_out = tmp_path / "x.json"
    assert main(["compare", "--epochs", "1", "--json", str(json_out), *TINY]) == 0
    out = capsys.readouterr().out
    assert "downstream preset paper (--preset not given): 1 epochs" in out
    assert "2 sources x 1 seeds = 2 trainings on cpu" in out
    assert "estimate: about" in out and "--preset fast" in out
    assert json_out.exists()


def test_compare_estimate_only_trains_nothing_to_the_end(tmp_path, capsys):
    json_out = tmp_path / "x.json"
    assert main(["compare", "--estimate", "--preset", "fast", "--json", str(json_out), *TINY]) == 0
    out = capsys.readouterr().out
    assert "estimate: about" in out and "x 1 seeds = 2 trainings" in out
    assert not json_out.exists()


def test_the_fast_preset_starts_without_an_estimate(tmp_path, capsys):
    json_out = tmp_path / "x.json"
    assert main(["compare", "--preset", "fast", "--epochs", "1", "--json", str(json_out), *TINY]) == 0
    out = capsys.readouterr().out
    assert "downstream preset fast: 1 epochs" in out and "estimate" not in out and json_out.exists()


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads child processes from /proc (Linux)")
def test_a_killed_compare_leaves_no_temporary_folder_and_no_training(tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "tdfusion", "compare", "--preset", "fast", "--epochs", "100000",
                             "--jobs", "2", *TINY], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not (list(tmp.glob("tdfusion-compare-*")) and
                                                   len(_children(proc.pid)) >= 2):
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.5)
        workers = _children(proc.pid)
        assert list(tmp.glob("tdfusion-compare-*")) and len(workers) >= 2, "the trainings never started"
        time.sleep(3)  # the workers are importing or training now
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)  # without stopping its workers the process waits for 100000 epochs
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0
    assert not list(tmp.glob("tdfusion-compare-*"))
    time.sleep(1)
    for pid in workers:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text(), pid
