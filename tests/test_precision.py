"""``train.precision`` (issue 13, item 4): autocast in the fusion phase, the meta step in fp32,
and the meta-gradient agreement that decides whether a lower precision may be used there."""
from __future__ import annotations

import json

import pytest
import torch

from tdfusion import bench
from tdfusion.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["fusion.dim=4", "fusion.num_blocks=1", "fusion.heads=2", "lossgen.dim=4", "lossgen.num_blocks=1",
        "lossgen.heads=2", "dataset.options.length=4", "dataset.options.size=[40,40]", "data.crop_size=32",
        "train.epochs=1", "train.meta_steps=2", "train.fusion_steps=3", "run.samples=0", "run.eval_every=0",
        "train.device=cpu"]


def _log(run):
    return [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]


def test_bf16_changes_the_fusion_phase_only(tmp_path):
    logs = {}
    for p in ("fp32", "bf16"):
        run = tmp_path / p
        assert main(["train", "--task", "recon", "--dataset", "synthetic", "--out", str(run), *TINY,
                     f"train.precision={p}"]) == 0
        logs[p] = _log(run)
    keys = ("loss_f", "loss_int", "loss_grad", "loss_t_inner", "loss_t_outer")
    meta = [[{k: r[k] for k in keys} for r in logs[p] if r["phase"] == "meta"] for p in ("fp32", "bf16")]
    assert len(meta[0]) == 2 and meta[0] == meta[1]  # the meta phase (first) is fp32 in both runs: identical
    fusion = [[r["loss_f"] for r in logs[p] if r["phase"] == "fusion"] for p in ("fp32", "bf16")]
    assert len(fusion[0]) == 3 and fusion[0] != fusion[1]  # autocast did run
    assert fusion[1] == pytest.approx(fusion[0], rel=0.05)


@pytest.mark.parametrize("value, message", [
    ("fp16", "train.precision fp16 needs a CUDA device"),
    ("fp8", "config key 'train.precision': 'fp8' is not one of fp32, bf16, fp16"),
])
def test_bad_precision_is_one_line(tmp_path, capsys, value, message):
    assert main(["train", "--task", "recon", "--dataset", "synthetic", "--out", str(tmp_path / "r"), *TINY,
                 f"train.precision={value}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]


def test_meta_gradient_agreement_is_one_for_the_same_precision_and_below_for_bf16():
    same = bench.meta_gradient_agreement("recon", torch.device("cpu"), "fp32", seeds=(0,))
    assert same == [pytest.approx(1.0, abs=1e-12)]
    low = bench.meta_gradient_agreement("recon", torch.device("cpu"), "bf16", seeds=(0,))
    assert 0.9 < low[0] < 1.0 - 1e-6  # bf16 computed, and measured against fp32
