"""What `tdfusion train` tells its user: no silent long default, the estimate (and that it
changes nothing), per-epoch test metrics with best.pt's state, no run folder named before it
exists, and a folder holding a run refused unless --resume or --exist-ok."""
from __future__ import annotations

import pytest
import torch

from tdfusion.cli import main
from tdfusion.training.callbacks import epoch_line

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--task", "seg", "--dataset", "synthetic", "--device", "cpu", "dataset.options.length=4",
        "dataset.options.size=[48,64]", "data.task_size=[48,64]", "data.crop_size=32", "fusion.dim=8",
        "fusion.num_blocks=1", "lossgen.dim=8", "lossgen.num_blocks=1", "run.samples=0", "train.epochs=2",
        "train.meta_steps=2", "train.fusion_steps=2", "optim.lr_fusion=1e-2",
        "task.segformer={hidden_sizes: [8, 16, 16, 16], depths: [1, 1, 1, 1], num_attention_heads: "
        "[1, 1, 1, 1], decoder_hidden_size: 16}"]


def test_train_without_a_recipe_refuses_and_lists_the_recipes(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # Overrides that would make the base config's run a short one: without the check this
    # test fails in seconds (exit 0) instead of training for hours.
    short = ["train.epochs=1", "train.meta_steps=1", "train.fusion_steps=1", "run.estimate_steps=0",
             "run.eval_every=0", "run.samples=0", "dataset.options.length=2", "dataset.options.size=[32,32]",
             "data.crop_size=32", "data.task_size=[32,32]"]
    assert main(["train", "--device", "cpu", *short]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "synthetic/recon" in err and "--dataset" in err
    assert main(["train", "--task", "recon", "--device", "cpu", *short]) == 2  # a task alone is no recipe
    assert not (tmp_path / "runs").exists()


def test_the_estimate_changes_nothing_in_the_run(tmp_path, capsys):
    states = []
    for steps in (0, 2):
        out = tmp_path / f"run{steps}"
        assert main(["train", "--out", str(out), *TINY, f"run.estimate_steps={steps}"]) == 0
        printed = capsys.readouterr().out
        assert ("estimate: about" in printed) == (steps > 0)
        ckpt = torch.load(out / "last.pt", weights_only=True)
        states.append({f"{k}.{n}": t for k in ("fusion", "lossgen", "task") for n, t in ckpt[k]["state_dict"].items()}
                      | {"opt": ckpt["train_state"]["optimizers"]})
    plain, estimated = states
    assert all(torch.equal(plain[k], estimated[k]) for k in plain if k != "opt")
    # the optimiser moments too: a run resumed later must not see the timed steps
    for a, b in zip(plain["opt"], estimated["opt"]):
        for sa, sb in zip(a["state"].values(), b["state"].values()):
            assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_estimate_prints_a_total_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--estimate", *TINY]) == 0
    printed = capsys.readouterr().out
    assert "estimate: about" in printed and "4 meta iterations" in printed and "4 fusion steps" in printed
    assert "2 evaluations" in printed
    assert not out.exists()


def test_each_evaluated_epoch_prints_its_test_metrics_and_best_pt(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "run"), *TINY, "run.estimate_steps=0"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if " test: " in ln]
    assert [ln.split(" test:")[0] for ln in lines] == ["epoch 1/2", "epoch 2/2"]
    assert "mIoU" in lines[0] and "best.pt: this epoch" in lines[0]


def test_epoch_line_says_which_epoch_best_pt_holds():
    line = epoch_line(3, 5, {"mIoU": 0.41, "per_class": [0.1, 0.2], "epoch": 3}, {"fitness": 0.5, "epoch": 2})
    assert line == "epoch 3/5 test: mIoU 0.41; best.pt: epoch 2 (fitness 0.5)"


def test_a_folder_holding_a_run_is_refused_unless_resume_or_exist_ok(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--out", str(out), *TINY, "run.estimate_steps=0", "run.eval_every=0"]
    assert main(args) == 0
    stale = out / "step_9999999.pt"
    stale.write_bytes(b"from the run before")
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert str(out) in err and "--resume" in err and "--exist-ok" in err
    assert not (tmp_path / "run_2").exists()
    assert main(["train", "--exist-ok", *args[1:]]) == 0
    assert not stale.exists() and (out / "last.pt").is_file()


def test_an_unknown_task_names_no_run_folder(tmp_path, capsys):
    args = [a if a != "seg" else "segmentation" for a in TINY]
    assert main(["train", "--out", str(tmp_path / "r2"), *args]) == 2
    captured = capsys.readouterr()
    assert "run folder" not in captured.out and "segmentation" in captured.err
    assert not (tmp_path / "r2").exists()


@pytest.mark.parametrize("command, flags", [
    ("train", {"--task": "recipe's", "--dataset": "required unless", "--epochs": "default: the recipe's"}),
    ("compare", {"--preset": "default paper", "--epochs": "default: the preset's", "--batch": "default: 8 on GPU"}),
])
def test_help_states_the_defaults_of_the_long_run_options(command, flags):
    import argparse

    from tdfusion.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    helps = {o: a.help for a in sub._actions for o in a.option_strings}
    for flag, words in flags.items():
        assert words in " ".join(helps[flag].split()), (flag, helps[flag])


def test_project_counts_the_steps_of_a_whole_run_by_hand():
    from tdfusion.training.estimate import RunEstimate, project

    measured = RunEstimate(2.0, 1.0, 0.5, 0, 0, 0, 0)
    cfg = {"train": {"epochs": 3, "warmup_epochs": 1, "meta_steps": 10, "fusion_steps": None},
           "data": {"batch_size": 2}, "run": {"eval_every": 1, "eval_limit": None}}
    out = project(measured, cfg, train_pairs=9, test_pairs=7)
    # meta: 2 epochs after the warm-up x 10; fusion: ceil(9 / 2) = 5 per epoch x 3; 3 evaluations of 7 pairs
    assert (out.meta_steps, out.fusion_steps, out.evaluations, out.eval_pairs) == (20, 15, 3, 7)
    assert out.total_seconds == 20 * 2.0 + 15 * 1.0 + 3 * 7 * 0.5


def test_estimate_of_a_recipe_without_its_data_uses_a_stand_in(tmp_path, capsys):
    small = ["fusion.dim=8", "fusion.num_blocks=1", "lossgen.dim=8", "lossgen.num_blocks=1", "run.estimate_steps=1"]
    assert main(["train", "--dataset", "mif", "--data-root", str(tmp_path / "absent"), "--device", "cpu",
                 "--estimate", *small]) == 0
    out = capsys.readouterr().out
    assert "synthetic 256x256 stand-in" in out and "158 training and 50 test pairs" in out
    # the recipe's own counts: 50 epochs x 600 meta iterations and x 1600 fusion steps, 50 evaluations of 50 pairs
    assert "30000 meta iterations" in out and "80000 fusion steps" in out and "50 evaluations x 50 pairs" in out
    assert not (tmp_path / "absent").exists()


def test_loader_workers_auto_is_none_on_cpu_and_some_on_cuda():
    from tdfusion.training.batches import loader_workers

    assert loader_workers("auto", torch.device("cpu")) == 0
    assert 1 <= loader_workers("auto", torch.device("cuda")) <= 4  # only the device's kind is read
    assert loader_workers(3, torch.device("cuda")) == 3 and loader_workers(2, torch.device("cpu")) == 2


@pytest.mark.parametrize("value", ["many", -1, 1.5])
def test_a_bad_num_workers_is_one_line(value, tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "r"), *TINY, f"data.num_workers={value}"]) == 2
    assert "data.num_workers" in capsys.readouterr().err
