"""``scripts/gpu_check.sh`` runs its steps end to end on CPU (issue 13, item 5).

On CPU with ``--quick``: parity of the published MIF checkpoint (all four run in
tests/test_parity.py), bench inference, 10 bf16 training steps, a one-process torchrun
(Gloo) run and the resume after SIGKILL. ``bench_meta`` (one meta iteration per task in
fp32 and bf16 with the meta-gradient's cosine similarity, minutes on two cores) runs in
the script but not here; its code is tested in tests/test_bench.py and
tests/test_precision.py. The GPU run itself needs a CUDA machine.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STEPS = ("parity", "bench_inference", "amp_training", "torchrun", "resume_after_sigkill", "batched_throughput",
         "fuse_folder", "vs_official", "training_data_time")


def test_gpu_check_runs_on_cpu_and_writes_one_json(shared_data, tmp_path):
    out = tmp_path / "gpu_check.json"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), "--device", "cpu", "--quick",
                           "--threads", "1", "--data", str(shared_data), "--out", str(out), "--steps", ",".join(STEPS)],
                          env={**env, "PYTHON": sys.executable}, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    assert list(report["steps"]) == list(STEPS)
    steps = report["steps"]
    assert all(s["ok"] for s in steps.values()), steps
    assert steps["parity"]["figures"]["worst"] < 1e-4
    assert set(steps["bench_inference"]["figures"]) >= {"float32", "bfloat16", "low_precision_error_256x256"}
    assert steps["amp_training"]["figures"]["precision"] == "bf16"
    assert steps["torchrun"]["figures"]["backend"] == "gloo"
    assert steps["resume_after_sigkill"]["figures"]["steps_after_resume"] == 12
    rows = steps["batched_throughput"]["figures"]["rows"]
    assert {(r["precision"], r["batch"]) for r in rows} == {(p, n) for p in ("float32", "bfloat16") for n in (1, 2)}
    assert all(r["max_abs_diff_vs_batch1"] < 1e-4 for r in rows if r["precision"] == "float32")
    assert all(steps["fuse_folder"]["figures"][k]["pairs"] == 6 for k in ("default", "batch_1"))
    assert "skipped" in steps["vs_official"]["figures"]  # no official network file here
    for phase in ("meta", "fusion"):
        for workers in ("0", "auto"):
            share = steps["training_data_time"]["figures"][f"{phase}_workers_{workers}"]["data_share"]
            assert 0 <= share < 1, (phase, workers, share)


def test_gpu_check_records_a_failed_step_and_exits_1(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "gpu_check.py"), "--device", "cpu",
                           "--data", str(tmp_path / "nowhere"), "--out", str(out), "--steps", "parity"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    step = json.loads(out.read_text())["steps"]["parity"]
    assert step["ok"] is False and "shared data not found" in step["error"]
