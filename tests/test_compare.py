"""``tdfusion compare``: the retrain-per-source protocol, its regime and its statistics.

What must hold for the comparison to mean anything:
* a task network is really trained per source (a source without the objects scores
  clearly below one that shows them; networks trained on different sources differ, the
  same source and seed give the same network);
* every source goes through the same path (a checkpoint and a folder of that
  checkpoint's own ``tdfusion fuse`` outputs give the same images and the same metrics);
* the summary is the mean and sample standard deviation of the runs (checked with NumPy).
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from tdfusion.checkpoint import module_record, save_checkpoint
from tdfusion.cli import main
from tdfusion.data import build_dataset
from tdfusion.evaluation.comparison import ImageSource, mark_spread, prepare_sources, separated, summarize
from tdfusion.evaluation.downstream import train_downstream
from tdfusion.evaluation.downstream_settings import PRESETS, downstream_settings, lr_factor, with_overrides
from tdfusion.evaluation.source_folder import SourceFolderDataset, seg_train_view
from tdfusion.errors import TDFusionError
from tdfusion.io import write_image
from tdfusion.nets import create_model
from tdfusion.synthetic import write_dataset
from tdfusion.tasks import build_task

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_SEG = ("task.segformer={hidden_sizes: [8, 16, 16, 16], depths: [1, 1, 1, 1], "
            "num_attention_heads: [1, 1, 1, 1], decoder_hidden_size: 16}")
TINY_TASK = {"name": "seg", "variant": "b0",
             "segformer": {"hidden_sizes": [8, 16, 16, 16], "depths": [1, 1, 1, 1],
                           "num_attention_heads": [1, 1, 1, 1], "decoder_hidden_size": 16}}
SYNTH = ["dataset.options.length=6", "dataset.options.size=[48,64]", TINY_SEG]


def _checkpoint(path, seed: int):
    torch.manual_seed(seed)
    net = create_model("fusion", dim=8, num_blocks=1)
    save_checkpoint({"fusion": module_record("fusion", net)}, path)
    return path


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("synth"), n_train=6, n_test=4, seed=5, size=(48, 64))


# -- the JSON and its statistics -------------------------------------------------------------------------------
def test_compare_writes_mean_std_and_runs_per_source_over_seeds(tmp_path, capsys):
    a, b = _checkpoint(tmp_path / "a.pt", 0), _checkpoint(tmp_path / "b.pt", 1)
    out = tmp_path / "x.json"
    rc = main(["compare", "--task", "seg", "--dataset", "synthetic", "--checkpoint", str(a), str(b),
               "--seeds", "0", "1", "--preset", "fast", "--epochs", "1", "--device", "cpu", "--json", str(out),
               *SYNTH])
    assert rc == 0
    table = json.loads(out.read_text())
    assert table["protocol"] == "retrain-per-source" and table["task"] == "seg" and table["seeds"] == [0, 1]
    assert list(table["sources"]) == ["a", "b", "ir", "vis"]
    for name, s in table["sources"].items():
        assert [r["seed"] for r in s["runs"]] == [0, 1]
        for m in ("mIoU", "mAcc", "pixel_acc"):
            values = [r[m] for r in s["runs"]]
            assert s["mean"][m] == pytest.approx(np.mean(values), abs=1e-12)
            assert s["std"][m] == pytest.approx(np.std(values, ddof=1), abs=1e-12)
            assert 0.0 <= s["mean"][m] <= 1.0
        assert set(s["per_class_mean"]) == {"background", "road", "marking", "person", "car"}
    assert table["mIoU"] == table["sources"]["a"]["mean"]["mIoU"]  # the first source's shortcut
    printed = capsys.readouterr().out
    assert "±" in printed and "per class" in printed


def test_summary_against_numpy_and_spread_marks():
    runs = [{"seed": 0, "mIoU": 0.5}, {"seed": 1, "mIoU": 0.7}, {"seed": 2, "mIoU": 0.6}]
    s = summarize(runs, ["mIoU"])
    assert s["mean"]["mIoU"] == pytest.approx(0.6) and s["std"]["mIoU"] == pytest.approx(0.1)
    summary = {
        "top": {"mean": {"m": 0.80}, "std": {"m": 0.02}, "runs": [{}, {}]},
        "close": {"mean": {"m": 0.77}, "std": {"m": 0.02}, "runs": [{}, {}]},   # 0.03 < 0.04: within
        "far": {"mean": {"m": 0.70}, "std": {"m": 0.03}, "runs": [{}, {}]},     # 0.10 > 0.05: below
    }
    mark_spread(summary, ["m"])
    assert [summary[n]["vs_best"]["m"] for n in ("top", "close", "far")] == ["best", "within spread", "below best"]
    assert separated(0.8, 0.02, 0.7, 0.03) and not separated(0.8, 0.02, 0.77, 0.02)
    single = {"x": {"mean": {"m": 0.9}, "std": {"m": 0.0}, "runs": [{}]},
              "y": {"mean": {"m": 0.1}, "std": {"m": 0.0}, "runs": [{}]}}
    mark_spread(single, ["m"])  # one seed: no spread to compare with
    assert single["y"]["vs_best"]["m"] == "no spread (one seed)"


# -- a task network is really trained per source ---------------------------------------------------------------
def _blob_dataset(root, n_train=8, n_test=4, size=(32, 40)):
    """Warm discs on a cold background: the infrared image alone shows the 'object' class
    (its label), the visible image is noise, a third 'method' writes constant grey."""
    import cv2
    import yaml

    rng = np.random.default_rng(0)
    h, w = size
    for split, n in (("train", n_train), ("test", n_test)):
        for i in range(n):
            label = np.zeros(size, np.uint8)
            for _ in range(3):
                cv2.circle(label, (int(rng.integers(4, w - 4)), int(rng.integers(4, h - 4))), int(rng.integers(3, 7)),
                           1, -1)
            ir = np.where(label == 1, 220, 40).astype(np.uint8)
            write_image(root / split / "ir" / f"{i:03d}.png", ir)
            write_image(root / split / "vi" / f"{i:03d}.png", rng.integers(0, 256, size, dtype=np.uint8))
            write_image(root / split / "label" / f"{i:03d}.png", label)
            write_image(root / "constant" / split / f"{i:03d}.png", np.full(size, 128, np.uint8))
    (root / "data.yaml").write_text(yaml.safe_dump({"classes": ["background", "object"]}))
    return root


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = _blob_dataset(tmp_path_factory.mktemp("blobs"))
    train = build_dataset("seg_folder", str(root), "train")
    test = build_dataset("seg_folder", str(root), "test")
    sources = [ImageSource("ir", "input", "a"), ImageSource("vis", "input", "b"),
               ImageSource("constant", "folder", str(root / "constant"))]
    return prepare_sources(sources, train, test, root / "prepared", log=lambda *_: None)


def _settings(**changes):
    return with_overrides(downstream_settings({"preset": "fast"}, "seg"), **changes)


def test_training_depends_on_the_source_and_is_repeatable(folders):
    s = _settings(epochs=2, batch_size=2)
    nets = {}
    for name in ("ir", "ir_again", "vis"):
        data = SourceFolderDataset(folders[name.replace("_again", "")], "train")
        nets[name] = train_downstream(build_task(TINY_TASK, data), data, s, seed=0, device="cpu",
                                      show_progress=False).state_dict()
    same = all(torch.equal(nets["ir"][k], nets["ir_again"][k]) for k in nets["ir"])
    differ = any(not torch.equal(nets["ir"][k], nets["vis"][k]) for k in nets["ir"])
    assert same and differ


def test_a_source_without_the_objects_scores_clearly_below_one_with_them(folders):
    from tdfusion.evaluation.comparison import run_seeds

    # balanced class weights: the tiny network otherwise settles on 'background' in 15 epochs
    s = _settings(epochs=15, batch_size=4, lr=3e-3, class_weights="balanced")
    runs = run_seeds(TINY_TASK, s, {k: folders[k] for k in ("ir", "constant")}, [0], device="cpu", log=lambda *_: None)
    ir, constant = runs["ir"][0], runs["constant"][0]
    # Only the infrared images show the objects; a constant image carries no information.
    assert ir["per_class"]["object"]["IoU"] > 0.5
    assert ir["mIoU"] > constant["mIoU"] + 0.2


# -- every source through the same path --------------------------------------------------------------------------
def test_a_checkpoint_and_a_folder_of_its_fuse_outputs_give_equal_images_and_metrics(synth_root, tmp_path):
    ckpt = _checkpoint(tmp_path / "net.pt", 3)
    fused = tmp_path / "fused"
    for split in ("train", "test"):
        rc = main(["fuse", "--checkpoint", str(ckpt), "--a", str(synth_root / split / "ir"),
                   "--b", str(synth_root / split / "vi"), "--out", str(fused / split), "--device", "cpu"])
        assert rc == 0
    out, work = tmp_path / "same.json", tmp_path / "work"
    rc = main(["compare", "--task", "seg", "--dataset", "seg_folder", "--data-root", str(synth_root),
               "--checkpoint", str(ckpt), "--checkpoint-names", "ckpt", "--fused", str(fused), "--names", "folder",
               "--no-baselines", "--seeds", "0", "--preset", "fast", "--epochs", "1", "--device", "cpu",
               "--work-dir", str(work), "--json", str(out), TINY_SEG])
    assert rc == 0
    for split in ("train", "test"):
        for png in sorted((work / "ckpt" / split / "images").iterdir()):
            other = work / "folder" / split / "images" / png.name
            assert png.read_bytes() == other.read_bytes(), png.name
    sources = json.loads(out.read_text())["sources"]
    assert sources["ckpt"]["runs"][0]["mIoU"] == sources["folder"]["runs"][0]["mIoU"]
    assert sources["ckpt"]["mean"] == sources["folder"]["mean"]


def test_compare_detection_with_ultralytics_augmentation(tmp_path):
    out = tmp_path / "det.json"
    rc = main(["compare", "--task", "det", "--dataset", "synthetic", "--seeds", "0", "--preset", "fast",
               "--epochs", "2", "--device", "cpu", "--json", str(out), "dataset.options.length=4",
               "dataset.options.size=[64,64]", "downstream.batch_size=2"])
    assert rc == 0
    table = json.loads(out.read_text())
    assert list(table["sources"]) == ["ir", "vis"] and table["metrics"] == ["mAP50", "mAP75", "mAP50_95"]
    for s in table["sources"].values():
        assert all(0.0 <= s["mean"][m] <= 1.0 for m in table["metrics"])
        assert set(s["per_class_mean"]) == {"person", "car"}


# -- the regime ----------------------------------------------------------------------------------------------------
def test_presets_and_overrides():
    seg, det = downstream_settings({}, "seg"), downstream_settings({}, "det")
    # the downstream code TDFusion names (docs/fidelity.md): SegFormer AdamW, YOLOv8 SGD
    assert (seg.optimizer, seg.weight_decay, seg.input_size, seg.epochs) == ("adamw", 1e-2, 512, 300)
    assert (det.optimizer, det.momentum, det.input_size, det.mosaic, det.ema) == ("sgd", 0.937, 640, 0.5, 0.9999)
    fast = downstream_settings({"preset": "fast", "epochs": 3, "input_size": [32, 48]}, "seg")
    assert fast.epochs == 3 and fast.input_size == (32, 48) and fast.lr == PRESETS["fast"]["*"]["lr"]
    with pytest.raises(TDFusionError, match="unknown downstream key"):
        downstream_settings({"epoch": 3}, "seg")
    with pytest.raises(TDFusionError, match="downstream.optimizer"):
        downstream_settings({"optimizer": "lion"}, "seg")
    with pytest.raises(TDFusionError, match="downstream.preset"):
        downstream_settings({"preset": "slow"}, "seg")


def test_learning_rate_schedule_against_closed_forms():
    s = _settings(epochs=10, warmup_epochs=2, hold_epochs=2, min_lr_ratio=0.01, schedule="cosine")
    per = 5  # iterations per epoch: warm-up 0..9, cosine 10..39, hold 40..49
    assert lr_factor(0, per, s) == pytest.approx(0.1 + 0.9 * (1 / 10) ** 2)
    assert lr_factor(9, per, s) == pytest.approx(1.0)
    assert lr_factor(10, per, s) == pytest.approx(1.0)
    assert lr_factor(25, per, s) == pytest.approx(0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 15 / 30)))
    assert lr_factor(40, per, s) == pytest.approx(0.01) and lr_factor(49, per, s) == pytest.approx(0.01)
    poly = with_overrides(s, schedule="poly")
    assert lr_factor(25, per, poly) == pytest.approx(0.01 + 0.99 * (1 - 15 / 30) ** 0.9)


def test_segmentation_augmentation_keeps_image_and_mask_aligned():
    from tdfusion.data.base import Sample

    rng = np.random.default_rng(0)
    mask = rng.integers(0, 5, (8, 10))
    mask = np.kron(mask, np.ones((16, 16), np.int64))        # 128x160, blocks of 16 px
    image = (mask * 50 + 10).astype(np.float32) / 255.0      # the class is readable from the image
    s = _settings(scale=(0.5, 2.0), aspect_jitter=0.3, hflip=0.5)
    for k in range(20):
        view = seg_train_view(Sample(image, image, "x", {"mask": mask}), np.random.default_rng(k), (64, 96), s, 255)
        img, m = view["a"][0].numpy(), view["mask"].numpy()
        assert img.shape == (64, 96) and m.shape == (64, 96)
        inside = m != 255
        assert np.all(img[~inside] == 0.5)  # padding: grey image, ignored label
        # away from block edges (interpolation mixes neighbours), image and mask agree
        expected = (m * 50 + 10) / 255.0
        close = np.abs(img - expected) < 1e-3
        assert close[inside].mean() > 0.6


# -- the diagnostic says what it is --------------------------------------------------------------------------------
def test_eval_json_and_note_name_it_a_diagnostic(tmp_path, capsys, synth_root):
    run = tmp_path / "run"
    rc = main(["train", "--task", "seg", "--dataset", "seg_folder", "--data-root", str(synth_root), "--out", str(run),
               "--device", "cpu", TINY_SEG, "fusion.dim=8", "fusion.num_blocks=1", "lossgen.dim=8",
               "lossgen.num_blocks=1", "data.crop_size=32", "data.task_size=[48,64]", "train.epochs=1",
               "train.meta_steps=1", "train.fusion_steps=1", "run.samples=1", "run.eval_every=0"])
    assert rc == 0
    capsys.readouterr()
    out = tmp_path / "eval.json"
    rc = main(["eval", "--checkpoint", str(run / "last.pt"), "--device", "cpu", "--fused",
               str(synth_root / "test" / "ir"), "--names", "other", "--json", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert json.loads(out.read_text())["protocol"] == "checkpoint-task-network"
    assert "favours the checkpoint" in printed and "tdfusion compare" in printed
