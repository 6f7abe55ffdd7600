"""Segmentation-driven fusion end to end: train and evaluate from the command line (compare: test_compare.py).

Runs are tiny (a few steps, a SegFormer of MiT-b0 shape but narrow widths, 64x80 images);
they check that the pieces fit and that the reported metrics are what an independent
computation over the same fused images gives, not that training converges.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from tdfusion.checkpoint import load_checkpoint, load_module
from tdfusion.cli import main
from tdfusion.data import build_dataset, collate, eval_view
from tdfusion.synthetic import SEG_CLASSES, write_dataset
from tdfusion.tasks import build_task

SMALL = [
    "task.segformer={hidden_sizes: [8, 16, 16, 16], depths: [1, 1, 1, 1], num_attention_heads: [1, 1, 1, 1], "
    "decoder_hidden_size: 16}",
    "fusion.dim=8", "fusion.num_blocks=1", "lossgen.dim=8", "lossgen.num_blocks=1",
    "data.crop_size=32", "data.task_size=[64,80]",
    "train.epochs=1", "train.meta_steps=2", "train.fusion_steps=2", "train.seed=0",
    "run.samples=1", "run.eval_limit=3",
]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("synth"), n_train=4, n_test=3, seed=3, size=(64, 80))


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory, synth_root):
    """One tiny run on the generic folder layout, shared by the evaluation tests."""
    out = tmp_path_factory.mktemp("runs") / "seg_folder"
    rc = main(["train", "--task", "seg", "--dataset", "seg_folder", "--data-root", str(synth_root),
               "--out", str(out), "--device", "cpu", *SMALL])
    assert rc == 0
    return out


def _reference_miou(pred: np.ndarray, target: np.ndarray, k: int, ignore: int = 255) -> float:
    """Mean IoU over classes present in the ground truth or the prediction, by boolean masks."""
    valid = target != ignore
    ious = []
    for c in range(k):
        inter = ((pred == c) & (target == c) & valid).sum()
        union = (((pred == c) | (target == c)) & valid).sum()
        if union:
            ious.append(inter / union)
    return float(np.mean(ious))


def test_train_seg_on_synthetic_then_eval(tmp_path):
    """`train_fusion.py --task seg --dataset synthetic` then `eval_downstream.py`, on CPU."""
    run = tmp_path / "run"
    rc = main(["train", "--task", "seg", "--dataset", "synthetic", "--out", str(run), "--device", "cpu", *SMALL,
               "dataset.options.length=4", "dataset.options.size=[64,80]"])
    assert rc == 0 and (run / "last.pt").is_file()
    steps = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert {s["phase"] for s in steps} == {"meta", "fusion"}
    assert all(np.isfinite(s["loss_t"]) for s in steps if "loss_t" in s)
    evals = [json.loads(line) for line in (run / "eval_log.jsonl").read_text().splitlines()]
    assert 0.0 <= evals[-1]["mIoU"] <= 1.0 and set(evals[-1]["per_class"]) == set(SEG_CLASSES)

    out_json, out_csv = tmp_path / "seg.json", tmp_path / "seg.csv"
    rc = main(["eval", "--checkpoint", str(run / "last.pt"), "--device", "cpu", "--limit", "3",
               "--json", str(out_json), "--csv", str(out_csv)])
    assert rc == 0
    result = json.loads(out_json.read_text())
    assert result["source"] == "fused" and set(result["sources"]) == {"fused", "ir", "vis"}
    for key in ("mIoU", "mAcc", "pixel_acc"):
        assert 0.0 <= result[key] <= 1.0
    assert set(result["per_class"]) == set(SEG_CLASSES)
    assert "mIoU" in out_csv.read_text().splitlines()[0]

    # Recompute the fused row from the checkpoint's networks, independently of the evaluator.
    ckpt = load_checkpoint(run / "last.pt")
    test_set = build_dataset("synthetic", None, "test", length=4, size=[64, 80], target="mask")
    task = build_task(dict(ckpt["task"]["config"], name="seg"), test_set)
    net = task.build_network()
    net.load_state_dict(ckpt["task"]["state_dict"])
    net.eval()
    fusion = load_module(ckpt, "fusion").eval()
    preds, masks = [], []
    with torch.no_grad():
        for i in range(3):
            batch = collate([eval_view(test_set[i], (64, 80))])
            preds.append(task.classify(net, fusion(batch["a"], batch["b"]), batch["mask"].shape[-2:]).numpy())
            masks.append(batch["mask"].numpy())
    ref = _reference_miou(np.concatenate(preds), np.concatenate(masks), len(SEG_CLASSES))
    assert result["mIoU"] == pytest.approx(ref, abs=1e-9)


def test_eval_scores_a_folder_of_fused_images(folder_run, synth_root, tmp_path):
    """Another method's fused images (here: the infrared images themselves) score exactly like
    the infrared baseline."""
    fake = tmp_path / "fake_method" / "test"
    shutil.copytree(synth_root / "test" / "ir", fake)
    out = tmp_path / "eval.json"
    rc = main(["eval", "--checkpoint", str(folder_run / "last.pt"), "--device", "cpu",
               "--fused", str(tmp_path / "fake_method"), "--names", "irfolder", "--json", str(out)])
    assert rc == 0
    sources = json.loads(out.read_text())["sources"]
    assert set(sources) == {"fused", "irfolder", "ir", "vis"}
    assert sources["irfolder"] == sources["ir"]


def test_msrs_recipe_trains_on_a_published_layout(tmp_path):
    """`--dataset msrs` picks configs/tdfusion_msrs_seg.yaml and reads the MSRS layout."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("test", 2)):
        for d in ("ir", "vi", "Segmentation_labels"):
            (tmp_path / "MSRS" / split / d).mkdir(parents=True)
        for i in range(n):
            stem = f"{i:05d}N"
            ir = rng.integers(0, 256, (64, 80), dtype=np.uint8)
            Image.fromarray(ir).save(tmp_path / "MSRS" / split / "ir" / f"{stem}.png")
            Image.fromarray(rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)).save(
                tmp_path / "MSRS" / split / "vi" / f"{stem}.png")
            Image.fromarray((ir // 29).astype(np.uint8)).save(tmp_path / "MSRS" / split / "Segmentation_labels" / f"{stem}.png")
    run = tmp_path / "run"
    rc = main(["train", "--task", "seg", "--dataset", "msrs", "--data-root", str(tmp_path / "MSRS"),
               "--out", str(run), "--device", "cpu", *SMALL, "train.meta_steps=1", "train.fusion_steps=1"])
    assert rc == 0
    saved = json.loads(json.dumps(load_checkpoint(run / "last.pt")["extra"]["config"]))
    assert {k: saved["recipe"][k] for k in ("dataset", "task")} == {"dataset": "msrs", "task": "seg"}
    assert saved["dataset"]["name"] == "msrs"
    evals = [json.loads(line) for line in (run / "eval_log.jsonl").read_text().splitlines()]
    assert len(evals[-1]["per_class"]) == 9 and "color_cone" in evals[-1]["per_class"]


def test_train_reports_a_bad_label_as_a_one_line_error(tmp_path, capsys):
    root = write_dataset(tmp_path / "d", n_train=2, n_test=1, size=(64, 80))
    label = sorted((root / "train" / "label").iterdir())[0]
    mask = np.asarray(Image.open(label)).copy()
    mask[0, 0] = 9
    Image.fromarray(mask).save(label)
    rc = main(["train", "--task", "seg", "--dataset", "seg_folder", "--data-root", str(root),
               "--out", str(tmp_path / "run"), "--device", "cpu", *SMALL])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err[-1] == f"error: {label}: label value(s) 9 outside the class range 0..4 or 255 (ignore)"


def test_the_task_ignores_the_label_value_the_dataset_ignores(synth_root, capsys):
    ds = build_dataset("seg_folder", str(synth_root), "test", classes=list(SEG_CLASSES), ignore_index=0)
    assert build_task({"name": "seg"}, ds).config["ignore_index"] == 0
    # An explicit, different task value would train on pixels the dataset marks void.
    from tdfusion.errors import TDFusionError

    with pytest.raises(TDFusionError, match="task.ignore_index 255 differs from the dataset's ignore_index 0"):
        build_task({"name": "seg", "ignore_index": 255}, ds)
    # From the command line: one line, exit status 2, before anything is trained.
    rc = main(["train", "--task", "seg", "--dataset", "seg_folder", "--data-root", str(synth_root),
               "--out", str(synth_root.parent / "run_ignore"), "--device", "cpu", *SMALL,
               "dataset.options.ignore_index=0", "task.ignore_index=255"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "differs from the dataset's ignore_index 0" in err[0]
    assert not (synth_root.parent / "run_ignore" / "last.pt").exists()
