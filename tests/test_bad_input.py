"""Bad input on the train, resume, eval, data-check and fuse paths, through the real CLI.

Each case must give exit status 2, exactly one ``error: ...`` line naming the file (or
the key) and the problem, and leave no partial output. The readers themselves (images,
labels, checkpoints, metrics folders) have their own tests in test_io, test_fuse_cli,
test_checkpoint, test_metrics_cli, test_seg_data and test_det_data; this file covers the
gaps: configs, resuming, training data, eval, data check.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from tdfusion.checkpoint import module_record, save_checkpoint
from tdfusion.cli import main
from tdfusion.config import apply_overrides, load_config
from tdfusion.nets import create_model

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "synthetic_recon.yaml"
TINY = ["train.device=cpu", "fusion.dim=8", "fusion.num_blocks=1", "lossgen.dim=8", "lossgen.num_blocks=1",
        "task.dim=8", "task.num_blocks=1", "data.crop_size=16", "run.samples=0", "run.eval_limit=2",
        "train.epochs=1", "train.meta_steps=1", "train.fusion_steps=2"]
SYNTH = ["dataset.options.size=[32,32]", "dataset.options.length=4"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _run(capsys, *argv) -> tuple[int, str, list[str]]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, [line for line in err.splitlines() if line.strip()]


def _assert_error(code: int, err: list[str], *fragments: str) -> str:
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in err[0], (fragment, err[0])
    return err[0]


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Name -> (size, mtime_ns) of everything under ``folder``: 'nothing changed' is checkable."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


# -- configs ---------------------------------------------------------------------------------
def _train_with_config(capsys, tmp_path, text: str, *overrides: str):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(text)
    out = tmp_path / "out"
    code, _, err = _run(capsys, "train", "--config", cfg, "--out", out, *overrides)
    assert not out.exists()  # nothing was started
    return cfg, code, err


def test_malformed_yaml_names_the_file_and_line(capsys, tmp_path):
    cfg, code, err = _train_with_config(capsys, tmp_path, f"_base_: {CONFIG}\ntrain:\n  epochs: [3\n")
    _assert_error(code, err, str(cfg), "malformed YAML", "line ")


def test_config_that_is_not_a_mapping(capsys, tmp_path):
    cfg, code, err = _train_with_config(capsys, tmp_path, "- train\n- epochs\n")
    _assert_error(code, err, str(cfg), "mapping")


def test_unknown_key_in_a_config_file_suggests_the_closest(capsys, tmp_path):
    cfg, code, err = _train_with_config(capsys, tmp_path, f"_base_: {CONFIG}\ntrain:\n  epoch: 3\n")
    _assert_error(code, err, str(cfg), "unknown config key 'train.epoch'", "did you mean 'train.epochs'?")


def test_unknown_override_key_suggests_the_closest(capsys, tmp_path):
    _, code, err = _train_with_config(capsys, tmp_path, f"_base_: {CONFIG}\n", "optim.lr_fusoin=1e-3")
    _assert_error(code, err, "'optim.lr_fusoin'", "did you mean 'optim.lr_fusion'?")


@pytest.mark.parametrize("override, message", [
    ("train.epochs=three", "'train.epochs': expected a finite number, got 'three'"),
    ("train.epochs=2.5", "'train.epochs': expected a whole number"),
    ("optim.lr_fusion=nan", "'optim.lr_fusion': expected a finite number"),
    ("train.deterministic=maybe", "'train.deterministic': expected true or false"),
    ("data.batch_size=null", "'data.batch_size': expected a finite number, got None"),
    ("train.epochs", "expected key=value"),
])
def test_bad_override_values(capsys, tmp_path, override, message):
    _, code, err = _train_with_config(capsys, tmp_path, f"_base_: {CONFIG}\n", override)
    _assert_error(code, err, message)


def test_wrong_type_inside_a_config_file_names_the_file(capsys, tmp_path):
    cfg, code, err = _train_with_config(capsys, tmp_path, f"_base_: {CONFIG}\noptim:\n  lr_task: fast\n")
    _assert_error(code, err, str(cfg), "'optim.lr_task': expected a finite number, got 'fast'")


def test_missing_base_config(capsys, tmp_path):
    _, code, err = _train_with_config(capsys, tmp_path, "_base_: nowhere.yaml\n")
    _assert_error(code, err, str(tmp_path / "nowhere.yaml"), "no such config file")


def test_yaml_numbers_without_a_dot_are_numbers():
    # YAML 1.1 reads 1e-3 as text; the config layer must not hand a string to the optimiser.
    from tdfusion.config import resolve

    cfg = resolve(str(CONFIG), overrides=["optim.lr_fusion=1e-3", "train.epochs=3.0"])
    assert cfg["optim"]["lr_fusion"] == 1e-3 and isinstance(cfg["optim"]["lr_fusion"], float)
    assert cfg["train"]["epochs"] == 3 and isinstance(cfg["train"]["epochs"], int)


# -- resuming ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    """A run folder with last.pt (full state) and epoch_000.pt (weights only), untrained."""
    from tdfusion.training.trainer import MetaTrainer

    run = tmp_path_factory.mktemp("bad") / "run"
    cfg = apply_overrides(load_config(CONFIG), TINY + SYNTH, load_config(None))
    trainer = MetaTrainer(cfg, run)
    run.mkdir(parents=True)
    trainer.save("last")
    trainer.save("epoch")
    return run


def _edited_checkpoint(saved_run: Path, tmp_path: Path, edit) -> Path:
    ckpt = torch.load(saved_run / "last.pt", weights_only=True)
    edit(ckpt)
    path = tmp_path / "edited" / "last.pt"
    path.parent.mkdir()
    torch.save(ckpt, path)
    return path


def _resume(capsys, path: Path, *extra):
    before = _snapshot(path.parent)
    code, _, err = _run(capsys, "train", "--resume", path, *extra)
    assert _snapshot(path.parent) == before  # nothing written, no log truncated
    return code, err


def test_resume_from_weights_only_checkpoint(capsys, saved_run):
    code, err = _resume(capsys, saved_run / "epoch_000.pt")
    _assert_error(code, err, "epoch_000.pt", "holds weights only")


def test_resume_from_checkpoint_of_another_task(capsys, saved_run, tmp_path):
    def to_seg(ckpt):
        ckpt["task"]["name"] = "seg"
    path = _edited_checkpoint(saved_run, tmp_path, to_seg)
    code, err = _resume(capsys, path, "--config", CONFIG, *TINY, *SYNTH)
    _assert_error(code, err, str(path), "checkpoint of task 'seg', this run is 'recon'")


@pytest.mark.parametrize("field", ["optimizers", "position", "torch_rng"])
def test_resume_with_missing_training_state_field(capsys, saved_run, tmp_path, field):
    path = _edited_checkpoint(saved_run, tmp_path, lambda c: c["train_state"].pop(field))
    code, err = _resume(capsys, path)
    _assert_error(code, err, str(path), f"incomplete training state (missing {field})")


@pytest.mark.parametrize("record", ["lossgen", "task"])
def test_resume_with_missing_network_record(capsys, saved_run, tmp_path, record):
    path = _edited_checkpoint(saved_run, tmp_path, lambda c: c.pop(record))
    code, err = _resume(capsys, path)
    _assert_error(code, err, str(path), f"no {record} weights")


def test_resume_without_saved_config(capsys, saved_run, tmp_path):
    path = _edited_checkpoint(saved_run, tmp_path, lambda c: c.pop("extra"))
    code, err = _resume(capsys, path)
    _assert_error(code, err, str(path), "holds no run config; pass --config")


def test_resume_with_a_different_architecture(capsys, saved_run, tmp_path):
    path = _edited_checkpoint(saved_run, tmp_path, lambda c: None)
    code, err = _resume(capsys, path, "--config", CONFIG, *TINY, *SYNTH, "fusion.dim=16")
    _assert_error(code, err, str(path), "does not match this run's configuration")


def test_resume_from_truncated_checkpoint(capsys, saved_run, tmp_path):
    data = (saved_run / "last.pt").read_bytes()
    path = tmp_path / "cut" / "last.pt"
    path.parent.mkdir()
    path.write_bytes(data[: len(data) // 3])
    code, err = _resume(capsys, path)
    _assert_error(code, err, str(path), "not a readable checkpoint")


def test_resume_from_missing_checkpoint(capsys, tmp_path):
    code, _, err = _run(capsys, "train", "--resume", tmp_path / "nothing_here")
    _assert_error(code, err, "nothing_here", "no checkpoint to resume from")


# -- training data ---------------------------------------------------------------------------
def _pair_folder(root: Path, n: int = 4, size=(32, 32)) -> Path:
    rng = np.random.default_rng(0)
    for d in ("ir", "vi"):
        (root / "train" / d).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            cv2.imwrite(str(root / "train" / d / f"{i:02d}.png"), rng.integers(0, 256, size, dtype=np.uint8))
    return root


def _train_pairs(capsys, root: Path, out: Path, *extra):
    return _run(capsys, "train", "--task", "recon", "--dataset", "pairs", "--data-root", root, "--out", out,
                *TINY, "data.task_size=null", *extra)


@pytest.mark.parametrize("workers", [0, 1])
@pytest.mark.parametrize("damage", ["truncated", "empty", "text"])
def test_corrupt_training_image_stops_with_one_line(capsys, tmp_path, workers, damage):
    root = _pair_folder(tmp_path / "data")
    bad = root / "train" / "vi" / "02.png"
    data = bad.read_bytes()
    bad.write_bytes({"truncated": data[: len(data) // 2], "empty": b"", "text": b"not an image"}[damage])
    out = tmp_path / "out"
    code, _, err = _train_pairs(capsys, root, out, f"data.num_workers={workers}")
    _assert_error(code, err, str(bad))  # also from a loader worker process: one line, not its traceback
    assert not list(out.glob("*.pt")) and not list(out.glob(".*.tmp"))


def test_training_pair_of_different_sizes(capsys, tmp_path):
    root = _pair_folder(tmp_path / "data")
    cv2.imwrite(str(root / "train" / "vi" / "01.png"), np.zeros((30, 32), np.uint8))
    code, _, err = _train_pairs(capsys, root, tmp_path / "out")
    _assert_error(code, err, str(root / "train" / "vi" / "01.png"), "32x30", "differs")


def test_empty_training_folder(capsys, tmp_path):
    for d in ("ir", "vi"):
        (tmp_path / "data" / "train" / d).mkdir(parents=True)
    code, _, err = _train_pairs(capsys, tmp_path / "data", tmp_path / "out")
    _assert_error(code, err, str(tmp_path / "data" / "train"))
    assert not (tmp_path / "out").exists()


def test_unusual_but_valid_images_train(capsys, tmp_path):
    # 16-bit PNG and float32 TIFF infrared (radiometric, outside [0, 1]), RGBA visible.
    root = tmp_path / "data"
    rng = np.random.default_rng(1)
    (root / "train" / "ir").mkdir(parents=True)
    (root / "train" / "vi").mkdir(parents=True)
    cv2.imwrite(str(root / "train" / "ir" / "a.png"), rng.integers(0, 65536, (32, 32), dtype=np.uint16))
    cv2.imwrite(str(root / "train" / "ir" / "b.tiff"), rng.normal(300.0, 20.0, (32, 32)).astype(np.float32))
    for stem in ("a", "b"):
        cv2.imwrite(str(root / "train" / "vi" / f"{stem}.png"), rng.integers(0, 256, (32, 32, 4), dtype=np.uint8))
    out = tmp_path / "out"
    code, _, err = _train_pairs(capsys, root, out, "data.batch_size=2")
    assert code == 0, err
    assert torch.load(out / "last.pt", weights_only=True)["train_state"]["position"]["global_step"] == 3


# -- eval --------------------------------------------------------------------------------------
def test_eval_checkpoint_of_another_task(capsys, saved_run):
    code, _, err = _run(capsys, "eval", "--checkpoint", saved_run / "last.pt", "--task", "seg", "--device", "cpu")
    _assert_error(code, err, str(saved_run / "last.pt"), "checkpoint of task 'recon', not 'seg'")


def test_eval_checkpoint_without_a_task_network(capsys, tmp_path):
    path = tmp_path / "fusion_only.pt"
    save_checkpoint({"fusion": module_record("fusion", create_model("fusion", dim=8, num_blocks=1))}, path)
    code, _, err = _run(capsys, "eval", "--checkpoint", path, "--device", "cpu")
    _assert_error(code, err, str(path), "holds no task network")


def test_eval_corrupt_fused_image_writes_no_json(capsys, saved_run, tmp_path):
    from tdfusion.data import build_dataset

    test_set = build_dataset("synthetic", None, "test", length=4, target="none", size=[32, 32])
    stems = [test_set[i].stem for i in range(len(test_set))]
    fused = tmp_path / "other"
    fused.mkdir()
    for stem in stems:
        cv2.imwrite(str(fused / f"{stem}.png"), np.full((32, 32), 128, np.uint8))
    bad = fused / f"{stems[-1]}.png"
    bad.write_bytes(bad.read_bytes()[:20])
    report = tmp_path / "eval.json"
    code, _, err = _run(capsys, "eval", "--checkpoint", saved_run / "last.pt", "--device", "cpu", "--fused", fused,
                        "--json", report, "--no-baselines")
    _assert_error(code, err, str(bad))
    assert not report.exists() and not list(tmp_path.glob(".eval.json*"))


# -- data check ----------------------------------------------------------------------------------
def test_data_check_lists_every_bad_file(capsys, tmp_path):
    root = _pair_folder(tmp_path / "data", n=5)
    truncated, empty, small = (root / "train" / "ir" / f"{i:02d}.png" for i in (1, 2, 3))
    truncated.write_bytes(truncated.read_bytes()[:30])
    empty.write_bytes(b"")
    cv2.imwrite(str(small), np.zeros((16, 32), np.uint8))
    code, out, err = _run(capsys, "data", "check", "--dataset", "pairs", "--data-root", root)
    assert code == 2
    lines = [line for line in (out + "\n".join(err)).splitlines() if line.startswith("error: ")]
    assert len(lines) == 3
    for path in (truncated, empty):
        assert any(str(path) in line for line in lines), (path, lines)
    assert any("32x16" in line and "differs" in line for line in lines)


# -- fuse ------------------------------------------------------------------------------------------
def test_fuse_float_tiff_infrared_with_rgba_visible(capsys, tmp_path):
    ckpt = tmp_path / "f.pt"
    save_checkpoint({"fusion": module_record("fusion", create_model("fusion", dim=8, num_blocks=1))}, ckpt)
    rng = np.random.default_rng(2)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    cv2.imwrite(str(tmp_path / "a" / "x.tiff"), rng.normal(300, 20, (24, 32)).astype(np.float32))
    cv2.imwrite(str(tmp_path / "b" / "x.png"), rng.integers(0, 256, (24, 32, 4), dtype=np.uint8))
    code, _, err = _run(capsys, "fuse", "--checkpoint", ckpt, "--a", tmp_path / "a", "--b", tmp_path / "b",
                        "--out", tmp_path / "out", "--device", "cpu")
    assert code == 0, err
    written = list((tmp_path / "out").iterdir())
    assert len(written) == 1
    fused = cv2.imread(str(written[0]), cv2.IMREAD_UNCHANGED)
    assert fused.shape[:2] == (24, 32) and fused.shape[-1] == 3  # colour restored from the RGBA source

    # A float TIFF with NaN: refused, naming it, nothing written.
    nan = rng.normal(300, 20, (24, 32)).astype(np.float32)
    nan[3, 4] = np.nan
    cv2.imwrite(str(tmp_path / "a" / "x.tiff"), nan)
    code, _, err = _run(capsys, "fuse", "--checkpoint", ckpt, "--a", tmp_path / "a", "--b", tmp_path / "b",
                        "--out", tmp_path / "out2", "--device", "cpu")
    _assert_error(code, err, str(tmp_path / "a" / "x.tiff"), "NaN")
    assert not (tmp_path / "out2").exists() or not any((tmp_path / "out2").iterdir())
