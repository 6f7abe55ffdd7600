"""Faults during training, with real processes and real signals.

Each scenario interrupts ``python train_fusion.py`` (SIGKILL mid-epoch, SIGKILL while a
checkpoint is half written, SIGINT = Ctrl-C, SIGTERM), resumes it with ``--resume``, and
compares the final weights with an uninterrupted run of the same config, bit for bit:
every random choice is keyed by (seed, epoch, phase, step) and the checkpoint carries the
optimisers and the RNG, so a resumed run must be the same run. The reference run is the
trainer in this process (one thread, like the children).
"""
from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tdfusion.cli import main
from tdfusion.config import apply_overrides, load_config
from tdfusion.io import atomic_write

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "synthetic_recon.yaml"
SAVE_EVERY = 3
STEPS = 2 * (2 + 3)  # epochs x (meta + fusion steps)
TINY = ["train.device=cpu", "fusion.dim=8", "fusion.num_blocks=1", "lossgen.dim=8", "lossgen.num_blocks=1",
        "task.dim=8", "task.num_blocks=1", "data.crop_size=16", "dataset.options.size=[32,32]",
        "dataset.options.length=8", "run.samples=1", "run.eval_limit=2", "train.epochs=2", "train.meta_steps=2",
        "train.fusion_steps=3", f"run.save_every={SAVE_EVERY}", "run.keep=2"]


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    # PYTHONFAULTHANDLER: a child that hangs is sent SIGABRT and prints where it was.
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1", PYTHONFAULTHANDLER="1")
    return env


def _start(args: list[str], script: list[str] | None = None) -> subprocess.Popen:
    # A session of its own: Ctrl-C in a terminal signals the whole process group (the
    # trainer and its data-loader workers); the test does the same with killpg.
    return subprocess.Popen([sys.executable, *(script or [str(REPO / "train_fusion.py")]), *args], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _fresh(run: Path, kill_during_save: int | None = None) -> subprocess.Popen:
    """A new run; ``kill_during_save=N``: it dies halfway through its N-th checkpoint write."""
    script = None if kill_during_save is None else [str(REPO / "tests" / "kill_during_save.py"), str(kill_during_save)]
    return _start(["--config", str(CONFIG), "--out", str(run), *TINY], script)


def _resume(run: Path, *overrides: str) -> subprocess.Popen:
    return _start(["--resume", str(run), *overrides])


def _logged_steps(run: Path, since: float = 0.0) -> list[int]:
    """Global steps in the run's log (only those logged after ``since``, a wall time)."""
    path = run / "train_log.jsonl"
    if not path.exists():
        return []
    steps = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line being written
        if record["time"] >= since:
            steps.append(record["global_step"])
    return steps


def _signal_at_step(proc: subprocess.Popen, run: Path, step: int, sig: int, timeout: float = 240,
                    group: bool = False) -> None:
    """Send ``sig`` once this process has logged ``step`` (lines of an earlier, killed
    process do not count: the signal must reach a running loop, not a starting one)."""
    started = time.time() - 0.01
    deadline = time.monotonic() + timeout
    while max(_logged_steps(run, started), default=0) < step:
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"run ended (rc {proc.returncode}) before step {step}:\n{out[-2000:]}\n{err[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"run did not reach step {step} in {timeout} s")
        time.sleep(0.01)
    if group:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)


def _finish(proc: subprocess.Popen, timeout: float = 240) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        out, err = proc.communicate()
        pytest.fail(f"{' '.join(proc.args[2:])} did not finish in {timeout} s; its stacks:\n{err[-4000:]}")
    return proc.returncode, out, err


def _ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _assert_same_weights(a: dict, b: dict) -> None:
    for net in ("fusion", "lossgen", "task"):
        sa, sb = a[net]["state_dict"], b[net]["state_dict"]
        assert sa.keys() == sb.keys()
        for name in sa:
            assert torch.equal(sa[name], sb[name]), f"{net}.{name} differs from the uninterrupted run"


def _assert_log_complete(run: Path, reference: Path) -> None:
    lines = [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines()]
    ref = [json.loads(x) for x in (reference / "train_log.jsonl").read_text().splitlines()]
    assert [r["global_step"] for r in lines] == list(range(1, STEPS + 1))
    for got, want in zip(lines, ref):
        assert {k: v for k, v in got.items() if k.startswith("loss")} == \
               {k: v for k, v in want.items() if k.startswith("loss")}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # The children run with OMP_NUM_THREADS=1: the same kernels give the same bits. (It
    # also keeps OpenMP from spin-waiting on a machine whose cores are busy.)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    from tdfusion.training.trainer import MetaTrainer

    run = tmp_path_factory.mktemp("faults") / "reference"
    MetaTrainer(apply_overrides(load_config(CONFIG), TINY, load_config(None)), run).fit()
    return run


def test_reference_run_keeps_the_last_k_step_checkpoints_and_no_temp_files(reference):
    names = sorted(p.name for p in reference.iterdir())
    assert [n for n in names if n.startswith("step_")] == ["step_0000006.pt", "step_0000009.pt"]  # run.keep=2
    assert {"last.pt", "epoch_001.pt", "epoch_002.pt", "summary.json"} <= set(names)
    assert not [n for n in names if n.endswith(".tmp")]
    assert _ckpt(reference / "last.pt")["train_state"]["position"]["global_step"] == STEPS


def _resume_to_the_end_equals(run, reference):
    """A last resume runs to the end and matches the uninterrupted run, weights and log."""
    rc, _, err = _finish(_resume(run))
    assert rc == 0, err[-2000:]
    _assert_same_weights(_ckpt(run / "last.pt"), _ckpt(reference / "last.pt"))
    _assert_log_complete(run, reference)


def test_sigkill_mid_epoch_then_sigterm_then_resume(reference, tmp_path):
    run = tmp_path / "run"
    proc = _fresh(run)
    _signal_at_step(proc, run, 4, signal.SIGKILL)  # epoch 1, fusion phase
    rc, _, _ = _finish(proc)
    assert rc == -signal.SIGKILL
    killed_at = max(_logged_steps(run))
    saved_at = _ckpt(run / "last.pt")["train_state"]["position"]["global_step"]
    assert killed_at < STEPS and 0 < killed_at - saved_at <= SAVE_EVERY  # at most one save interval lost

    # SIGTERM (what a cluster scheduler sends): finish the step, save, exit.
    proc = _resume(run)
    _signal_at_step(proc, run, saved_at + 2, signal.SIGTERM)
    rc, out, err = _finish(proc)
    assert rc == 130, err[-2000:]
    stopped_at = max(_logged_steps(run))
    assert _ckpt(run / "last.pt")["train_state"]["position"]["global_step"] == stopped_at  # nothing lost
    assert f"resume with --resume {run / 'last.pt'}" in out

    _resume_to_the_end_equals(run, reference)


def test_sigkill_while_writing_a_checkpoint_then_ctrl_c_then_resume(reference, tmp_path):
    run = tmp_path / "run"
    # Checkpoint files written: last.pt at step 3 (step_0000003.pt is a hard link to it),
    # epoch_001.pt and last.pt at the end of epoch 1 (step 5), then last.pt at step 6: the
    # 4th write dies with half of the file under its temporary name.
    rc, _, _ = _finish(_fresh(run, kill_during_save=4))
    assert rc == -signal.SIGKILL
    temps = list(run.glob(".last.pt.*.tmp"))
    assert len(temps) == 1 and 0 < temps[0].stat().st_size < (run / "last.pt").stat().st_size
    assert max(_logged_steps(run)) == 6
    saved_at = _ckpt(run / "last.pt")["train_state"]["position"]["global_step"]
    assert saved_at == 5  # the previous last.pt, intact

    # Ctrl-C, as a terminal sends it: to the trainer and its data-loader worker alike.
    proc = _resume(run, "data.num_workers=1")
    _signal_at_step(proc, run, saved_at + 2, signal.SIGINT, group=True)
    rc, out, err = _finish(proc)
    assert rc == 130 and "interrupted" in err
    assert not list(run.glob(".*.tmp"))  # the stale half file was cleared on resume
    stopped_at = max(_logged_steps(run))
    state = _ckpt(run / "last.pt")["train_state"]
    assert state["position"]["global_step"] == stopped_at and "optimizers" in state

    _resume_to_the_end_equals(run, reference)


def test_non_finite_loss_stops_naming_step_and_batch_and_keeps_last_good_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    # A learning rate of 1e30 for F (only in the fusion phase: the meta phase's inner step
    # gets its own) blows the first fusion step up; the two meta steps before it are fine.
    code = main(["train", "--config", str(CONFIG), "--out", str(run), *TINY, "run.save_every=1",
                 "optim.lr_fusion=1e30", "meta.inner_lr=1.0e-4"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: non-finite")
    message = err[0]
    assert "epoch 1, fusion step 1 (global step 3)" in message
    log = [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines()]
    assert [r["global_step"] for r in log] == [1, 2]
    ckpt = _ckpt(run / "last.pt")
    assert ckpt["train_state"]["position"]["global_step"] == 2
    assert f"the last good checkpoint is {run / 'last.pt'}" in message
    assert all(torch.isfinite(v).all() for v in ckpt["fusion"]["state_dict"].values())
    # The batch is named by its sample stems, as the dataset lists them.
    from tdfusion.data import build_dataset

    stems = {build_dataset("synthetic", None, "train", length=8, target="none", size=[32, 32])[i].stem
             for i in range(8)}
    named = message.split("batch ")[1].split(";")[0].split(", ")
    assert named and set(named) <= stems
    assert not list(run.glob(".*.tmp"))


def test_atomic_write_syncs_the_file_and_its_folder(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    with atomic_write(tmp_path / "x.bin") as fh:
        fh.write(b"data")
    assert synced == [False, True]  # the file's contents first, then the rename in the folder
    assert (tmp_path / "x.bin").read_bytes() == b"data"
