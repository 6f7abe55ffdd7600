"""Training runs end to end: run folder contents, exact resume, real pairs, errors."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from tdfusion.checkpoint import load_checkpoint
from tdfusion.cli import build_parser, main
from tdfusion.commands.train import resolve_config
from tdfusion.training.trainer import MetaTrainer

TINY = ["fusion.dim=4", "fusion.num_blocks=1", "fusion.heads=2", "lossgen.dim=4", "lossgen.num_blocks=1",
        "lossgen.heads=2", "task.dim=4", "task.num_blocks=1", "task.heads=2", "data.crop_size=32",
        "dataset.options.size=[48,48]", "dataset.options.length=8", "train.meta_steps=3", "train.fusion_steps=4",
        "train.epochs=2", "run.eval_limit=2", "run.samples=2", "train.deterministic=true", "train.device=cpu"]


def config(*extra: str, dataset: str = "synthetic", task: str = "recon", data_root=None):
    tiny = TINY if dataset == "synthetic" else [o for o in TINY if not o.startswith("dataset.options.")]
    argv = ["train", "--task", task, "--dataset", dataset, *(["--data-root", data_root] if data_root else []),
            *tiny, *extra]
    return resolve_config(build_parser().parse_args(argv))[0]


def weights(path):
    ckpt = load_checkpoint(path)
    return {f"{part}.{k}": v for part in ("fusion", "lossgen", "task") for k, v in ckpt[part]["state_dict"].items()}


def assert_same(w1, w2):
    assert w1.keys() == w2.keys()
    for k in w1:
        assert torch.equal(w1[k], w2[k]), k


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    assert main(["train", "--task", "recon", "--dataset", "synthetic", "--out", str(out), *TINY,
                 "run.save_every=3", "run.keep=100"]) == 0
    return out


def test_run_folder_holds_everything(full_run):
    for name in ("config.yaml", "last.pt", "epoch_001.pt", "epoch_002.pt", "train_log.jsonl", "eval_log.jsonl",
                 "summary.json", "samples/epoch_001.png", "samples/epoch_002.png", "report/index.html"):
        assert (full_run / name).is_file(), name
    log = [json.loads(line) for line in (full_run / "train_log.jsonl").read_text().splitlines()]
    assert [r["global_step"] for r in log] == list(range(1, 15))  # 2 epochs x (3 meta + 4 fusion)
    assert [r["phase"] for r in log[:7]] == ["meta"] * 3 + ["fusion"] * 4
    assert all(r["loss_f"] > 0 for r in log)
    summary = json.loads((full_run / "summary.json").read_text())
    assert summary["epochs"] == 2 and "psnr_a" in summary["eval"]
    ckpt = load_checkpoint(full_run / "last.pt")
    assert ckpt["task"]["name"] == "recon" and ckpt["epoch"] == 2
    assert ckpt["fusion"]["config"]["dim"] == 4  # the architecture travels with the weights


def test_last_checkpoint_fuses_images(full_run, tmp_path):
    from tdfusion.synthetic import write_dataset

    data = write_dataset(tmp_path / "pairs", n_train=0, n_test=2, size=(40, 48))
    assert main(["fuse", "--checkpoint", str(full_run / "last.pt"), "--a", str(data / "test/ir"),
                 "--b", str(data / "test/vi"), "--out", str(tmp_path / "fused"), "--device", "cpu"]) == 0
    assert len(list((tmp_path / "fused").glob("*.png"))) == 2


def test_resume_from_a_step_checkpoint_reproduces_the_uninterrupted_run(full_run, tmp_path):
    """As if the run had been killed right after step 6 (mid-epoch 1, fusion phase)."""
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copy(full_run / "step_0000006.pt", resumed / "last.pt")
    assert main(["train", "--resume", str(resumed)]) == 0
    assert_same(weights(resumed / "last.pt"), weights(full_run / "last.pt"))
    log = [json.loads(line) for line in (resumed / "train_log.jsonl").read_text().splitlines()]
    assert [r["global_step"] for r in log] == list(range(7, 15))


def test_stop_request_saves_and_resumes_exactly(full_run, tmp_path, monkeypatch):
    cfg = config("run.save_every=1000")
    run = tmp_path / "stopped"
    trainer = MetaTrainer(cfg, run)
    original = trainer._after_step

    def stop_after_five(logs, stems):
        out = original(logs, stems)
        if trainer.pos.global_step == 5:
            trainer.request_stop()
        return out

    monkeypatch.setattr(trainer, "_after_step", stop_after_five)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["train_state"]["position"] == {"epoch": 0, "phase": "fusion", "step": 2, "global_step": 5}
    MetaTrainer(cfg, run, resume_from=run / "last.pt").fit()
    assert_same(weights(run / "last.pt"), weights(full_run / "last.pt"))


def test_fixed_weight_ablation_skips_meta_learning(tmp_path):
    summary = MetaTrainer(config("loss.fixed_weights=true", "train.epochs=1"), tmp_path / "fixed").fit()
    log = [json.loads(line) for line in (tmp_path / "fixed/train_log.jsonl").read_text().splitlines()]
    assert {r["phase"] for r in log} == {"fusion"} and len(log) == 4
    assert summary["epochs"] == 1


def test_recon_training_on_real_pairs_lowers_the_reconstruction_loss(shared_data, tmp_path):
    root = shared_data / "refusion" / "test_cases" / "IVIF"
    cfg = config("data.crop_size=64", "data.batch_size=2", "train.meta_steps=2", "train.fusion_steps=30",
                 "train.epochs=1", "optim.lr_fusion=2e-3", "optim.lr_task=2e-3", "run.eval_limit=2",
                 "run.samples=0", "data.task_size=[120,160]", dataset="ivif",
                 data_root=str(root))
    trainer = MetaTrainer(cfg, tmp_path / "ivif")
    before = trainer.evaluate()["loss"]
    summary = trainer.fit()
    after = summary["eval"]["loss"]
    assert after < 0.8 * before, (before, after)


def test_resume_errors(full_run, tmp_path):
    assert main(["train", "--resume", str(tmp_path / "nowhere")]) == 2
    # an epoch checkpoint holds weights only
    assert main(["train", "--resume", str(full_run / "epoch_001.pt")]) == 2


def test_bad_loss_form_is_a_clear_error(capsys):
    code = main(["train", "--task", "recon", "--dataset", "synthetic", *TINY, "loss.form=other"])
    assert code == 2 and "loss.form" in capsys.readouterr().err


def test_warmup_epochs_train_f_and_t_before_the_first_meta_phase(tmp_path):
    out = tmp_path / "warm"
    assert main(["train", "--task", "recon", "--dataset", "synthetic", "--out", str(out), *TINY,
                 "train.warmup_epochs=1", "train.meta_steps=2", "train.fusion_steps=2"]) == 0
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["phase"]) for r in log] == [(1, "fusion")] * 2 + [(2, "meta")] * 2 + [(2, "fusion")] * 2
