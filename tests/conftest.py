"""Shared test fixtures.

Real data and the published checkpoints are read from ``../shared/data`` (or
``$TDFUSION_SHARED_DATA``); tests that need them are skipped, with the reason shown in
the summary (``-ra``), when that folder is absent.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("TDFUSION_SHARED_DATA", REPO.parent / "shared" / "data"))

needs_shared_data = pytest.mark.skipif(
    not SHARED_DATA.is_dir(), reason=f"shared data folder not found at {SHARED_DATA} (set TDFUSION_SHARED_DATA)")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of the shared real data; skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder not found at {SHARED_DATA} (set TDFUSION_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: thread hand-off costs more than the arithmetic (and on a busy machine,
    far more). Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def train_tiny_recon(out: Path, size: tuple[int, int]) -> Path:
    """A one-epoch recon run on ``size`` synthetic scenes with 4-channel networks, whose
    sample panels are the whole images (``task_size`` null) shown 32 px high; returns ``out``."""
    from tdfusion.cli import main

    overrides = ["train.device=cpu", "fusion.dim=4", "fusion.num_blocks=1", "fusion.heads=2", "lossgen.dim=4",
                 "lossgen.num_blocks=1", "lossgen.heads=2", "dataset.options.length=2",
                 f"dataset.options.size=[{size[0]},{size[1]}]", "data.crop_size=32", "data.task_size=null",
                 "train.meta_steps=1", "train.fusion_steps=1", "run.samples=2", "run.eval_limit=1"]
    assert main(["train", "--task", "recon", "--dataset", "synthetic", "--out", str(out), "--epochs", "1",
                 *overrides]) == 0
    return out
