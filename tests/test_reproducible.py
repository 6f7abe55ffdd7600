"""The same command with the same seeds gives the same numbers: fusion training, then the
retrain-per-source comparison, for segmentation and for detection (two tiny runs each).

What a machine changes is not tested here (it cannot be, on one machine): docs/results.md,
"Numbers that hold elsewhere", measures it."""
from __future__ import annotations

import json

import pytest
import torch

from tdfusion.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["dataset.options.length=4", "dataset.options.size=[48,64]", "data.task_size=[48,64]", "data.crop_size=32",
        "fusion.dim=8", "fusion.num_blocks=1", "lossgen.dim=8", "lossgen.num_blocks=1", "run.eval_every=0",
        "run.samples=0", "train.epochs=1", "train.meta_steps=2", "train.fusion_steps=2", "optim.lr_fusion=1e-2"]
TASK = {"seg": ["task.segformer={hidden_sizes: [8, 16, 16, 16], depths: [1, 1, 1, 1], num_attention_heads: "
                "[1, 1, 1, 1], decoder_hidden_size: 16}"], "det": []}


def _without_clock(payload: dict) -> dict:
    """The JSON less what a clock measures (each run's training seconds) and the checkpoint's
    path (the two runs are in two folders)."""
    for s in payload["sources"].values():
        s.pop("fusion_runs", None)
        for r in s["runs"]:
            r.pop("train_seconds")
    return payload


@pytest.mark.parametrize("task", ["seg", "det"])
def test_the_same_seeds_give_the_same_checkpoint_and_the_same_table(task, tmp_path):
    ckpts, tables = [], []
    for k in range(2):
        run = tmp_path / f"run{k}"
        assert main(["train", "--task", task, "--dataset", "synthetic", "--preset", "steer", "--out", str(run),
                     "--device", "cpu", *TINY, *TASK[task]]) == 0
        ckpts.append(torch.load(run / "last.pt", weights_only=True))
        out = tmp_path / f"table{k}.json"
        assert main(["compare", "--task", task, "--dataset", "synthetic", "--checkpoint", str(run / "last.pt"),
                     "--checkpoint-names", task, "--seeds", "0", "1", "--preset", "fast", "--epochs", "2",
                     "--device", "cpu", "--json", str(out), "dataset.options.length=4",
                     "dataset.options.size=[48,64]", "downstream.batch_size=2", *TASK[task]]) == 0
        tables.append(_without_clock(json.loads(out.read_text())))
    for key in ("fusion", "lossgen"):
        first, second = ckpts[0][key]["state_dict"], ckpts[1][key]["state_dict"]
        assert all(torch.equal(first[n], second[n]) for n in first), key
    # training moved F and G: the equality above is not between two untouched initialisations
    assert tables[0] == tables[1]
    assert tables[0]["sources"][task]["runs"][0] != tables[0]["sources"][task]["runs"][1] or task == "det"
