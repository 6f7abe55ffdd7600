"""``tdfusion.Fuser``'s ``precision=`` and ``threads=``: the CLI's ``--precision`` and
``--threads`` of ``tdfusion fuse``, with the same outputs (issue 24, item 2)."""
from __future__ import annotations

import os

import cv2
import numpy as np
import pytest
import torch
from torch import nn

import tdfusion
from tdfusion.checkpoint import module_record, save_checkpoint
from tdfusion.cli import main
from tdfusion.errors import TDFusionError
from tdfusion.nets import create_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A small random fusion checkpoint and a grey + colour pair on disk and in memory."""
    root = tmp_path_factory.mktemp("api_options")
    torch.manual_seed(0)
    save_checkpoint({"fusion": module_record("fusion", create_model("fusion", dim=8))}, root / "c.pt")
    rng = np.random.default_rng(0)
    a = cv2.GaussianBlur(rng.uniform(0, 255, (40, 52)), (0, 0), 1.5).astype(np.uint8)
    b = cv2.GaussianBlur(rng.uniform(0, 255, (40, 52, 3)), (0, 0), 1.5).astype(np.uint8)
    cv2.imwrite(str(root / "a.png"), a)
    cv2.imwrite(str(root / "b.png"), b[:, :, ::-1])
    return root, a, b


def _cli(root, out, *extra) -> np.ndarray:
    threads, omp = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    try:
        assert main(["fuse", "--checkpoint", str(root / "c.pt"), "--a", str(root / "a.png"), "--b",
                     str(root / "b.png"), "--out", str(out), "--device", "cpu", *extra]) == 0
    finally:  # --threads is process-wide in the CLI
        torch.set_num_threads(threads)
        if omp is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = omp
    return cv2.imread(str(out), cv2.IMREAD_UNCHANGED)[:, :, ::-1]


@pytest.mark.parametrize("precision, threads", [("bfloat16", 1), ("bfloat16", 2), ("float32", 2)])
def test_api_equals_cli_for_the_same_precision_and_threads(setup, precision, threads):
    root, a, b = setup
    cli = _cli(root, root / f"{precision}_{threads}.png", "--precision", precision, "--threads", str(threads))
    fuser = tdfusion.Fuser.from_pretrained(root / "c.pt", device="cpu", precision=precision, threads=threads)
    assert fuser.precision == precision and next(fuser.net.parameters()).dtype == getattr(torch, precision)
    np.testing.assert_array_equal(fuser(a, b), cli)


def test_bfloat16_is_not_float32(setup):
    """The comparison above can tell the precisions apart on this pair."""
    root, a, b = setup
    f32 = tdfusion.Fuser.from_pretrained(root / "c.pt", device="cpu")(a, b)
    bf16 = tdfusion.Fuser.from_pretrained(root / "c.pt", device="cpu", precision="bfloat16")(a, b)
    assert (f32 != bf16).any()


class _Recorder(nn.Module):
    """A stand-in network that records the thread counts in force when it runs."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))
        self.seen: list[tuple[int, int, str | None]] = []

    def forward(self, a, b):
        self.seen.append((torch.get_num_threads(), cv2.getNumThreads(), os.environ.get("OMP_NUM_THREADS")))
        return (a + b) / 2 * self.w


def test_threads_apply_during_each_call_and_are_restored(setup, monkeypatch):
    _, a, b = setup
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    before = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(2)
    cv2.setNumThreads(2)
    try:
        net = _Recorder()
        fuser = tdfusion.Fuser(net, threads=1)
        fuser(a, b)
        assert net.seen == [(1, 1, "1")]
        assert (torch.get_num_threads(), cv2.getNumThreads(), os.environ["OMP_NUM_THREADS"]) == (2, 2, "5")
        tdfusion.Fuser(net)(a, b)  # threads=None leaves them alone
        assert net.seen[-1] == (2, 2, "5")
    finally:
        torch.set_num_threads(before[0])
        cv2.setNumThreads(before[1])


@pytest.mark.parametrize("options, message", [
    ({"precision": "float16"}, "precision='float16' needs a CUDA device; use 'bfloat16' on CPU"),
    ({"precision": "half"}, "precision='half': expected one of 'float32', 'bfloat16', 'float16'"),
    ({"threads": 0}, "threads=0: expected a whole number of at least 1, or None"),
    ({"threads": 1.5}, "threads=1.5: expected a whole number of at least 1, or None"),
])
def test_bad_options_are_one_line_errors(setup, options, message):
    root, _, _ = setup
    with pytest.raises(TDFusionError) as err:
        tdfusion.Fuser.from_pretrained(root / "c.pt", device="cpu", **options)
    assert str(err.value) == message
    with pytest.raises(TDFusionError):
        tdfusion.Fuser(_Recorder(), **options)
