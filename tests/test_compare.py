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
from tdfusion.evaluation.comparison import ImageSource, prepare_sources
from tdfusion.evaluation.statistics import mark_spread, separated, summarize
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


# -- fusion seeds pooled, paired differences ---------------------------------------------------------------------
def test_paired_differences_against_hand_computed_values():
    from tdfusion.evaluation.comparison import pool_runs
    from tdfusion.evaluation.statistics import paired_differences

    def runs(values):
        return [{"seed": s, "mIoU": v} for s, v in zip((0, 1, 2), values)]

    sources = [ImageSource("fixed", "checkpoint", "f0.pt", 0), ImageSource("fixed", "checkpoint", "f1.pt", 1),
               ImageSource("seg", "checkpoint", "s0.pt", 0), ImageSource("seg", "checkpoint", "s1.pt", 1),
               ImageSource("ir", "input", "a")]
    by_label = {"fixed": runs([0.40, 0.42, 0.44]), "fixed#1": runs([0.41, 0.43, 0.45]),
                "seg": runs([0.42, 0.43, 0.47]), "seg#1": runs([0.40, 0.45, 0.46]), "ir": runs([0.45, 0.40, 0.50])}
    pooled, fusion_runs = pool_runs(sources, by_label)
    assert fusion_runs == {"fixed": ["f0.pt", "f1.pt"], "seg": ["s0.pt", "s1.pt"]}
    assert [(r["fusion_run"], r["seed"]) for r in pooled["seg"]] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    summary = {name: summarize(r, ["mIoU"]) for name, r in pooled.items()}
    assert summary["fixed"]["mean"]["mIoU"] == pytest.approx(0.425)  # (0.40+0.42+0.44+0.41+0.43+0.45) / 6
    paired = paired_differences(summary, "fixed", ["mIoU"])
    assert paired["baseline"] == "fixed" and set(paired["sources"]) == {"seg", "ir"}
    # seg - fixed on (fusion run, seed): +0.02 +0.01 +0.03 | -0.01 +0.02 +0.01
    seg = paired["sources"]["seg"]
    assert seg["n"] == 6 and seg["positive"]["mIoU"] == 5
    assert seg["mean"]["mIoU"] == pytest.approx(0.08 / 6)
    assert seg["std"]["mIoU"] == pytest.approx(0.0136626, abs=1e-6)  # sqrt(9.3333e-4 / 5)
    # t(0.975, 5) = 2.570582; half width 2.570582 * 0.0136626 / sqrt(6) = 0.014338: the interval holds 0
    assert seg["ci95"]["mIoU"] == pytest.approx([0.0133333 - 0.014338, 0.0133333 + 0.014338], abs=1e-5)
    assert seg["mark"]["mIoU"] == "="
    # ir (one source) - fixed on the seed alone: +0.05 -0.02 +0.06 | +0.04 -0.03 +0.05
    ir = paired["sources"]["ir"]
    assert ir["n"] == 6 and ir["positive"]["mIoU"] == 4 and ir["mean"]["mIoU"] == pytest.approx(0.025)
    # a clear, consistent difference is marked
    summary["up"] = summarize([{**r, "mIoU": r["mIoU"] + 0.02 + 0.001 * i} for i, r in enumerate(pooled["fixed"])],
                              ["mIoU"])
    assert paired_differences(summary, "fixed", ["mIoU"])["sources"]["up"]["mark"]["mIoU"] == ">"


def test_compare_pools_checkpoints_that_share_a_name_and_pairs_them(tmp_path, capsys):
    ckpts = [str(_checkpoint(tmp_path / f"{i}.pt", i)) for i in range(4)]
    out, csv_path = tmp_path / "x.json", tmp_path / "x.csv"
    rc = main(["compare", "--task", "seg", "--dataset", "synthetic", "--checkpoint", *ckpts,
               "--checkpoint-names", "fixed", "fixed", "seg", "seg", "--baseline", "fixed", "--seeds", "0", "1",
               "--preset", "fast", "--epochs", "1", "--device", "cpu", "--json", str(out), "--csv", str(csv_path),
               *SYNTH])
    assert rc == 0
    table = json.loads(out.read_text())
    assert list(table["sources"]) == ["fixed", "seg", "ir", "vis"]
    assert table["sources"]["seg"]["fusion_runs"] == ckpts[2:] and "fusion_runs" not in table["sources"]["ir"]
    seg, fixed = table["sources"]["seg"], table["sources"]["fixed"]
    assert [(r["fusion_run"], r["seed"]) for r in seg["runs"]] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    values = [r["mIoU"] for r in seg["runs"]]
    assert seg["mean"]["mIoU"] == pytest.approx(np.mean(values)) and seg["std"]["mIoU"] == pytest.approx(
        np.std(values, ddof=1))
    # two checkpoints of different weights give different images, hence different runs
    assert seg["runs"][0]["mIoU"] != seg["runs"][2]["mIoU"] or seg["runs"][1]["mIoU"] != seg["runs"][3]["mIoU"]
    paired = table["paired"]
    assert paired["baseline"] == "fixed" and set(paired["sources"]) == {"seg", "ir", "vis"}
    d = [s["mIoU"] - f["mIoU"] for s, f in zip(seg["runs"], fixed["runs"])]
    assert paired["sources"]["seg"]["mean"]["mIoU"] == pytest.approx(np.mean(d))
    assert paired["sources"]["seg"]["positive"]["mIoU"] == sum(x > 0 for x in d) and paired["sources"]["seg"]["n"] == 4
    ir = {r["seed"]: r["mIoU"] for r in table["sources"]["ir"]["runs"]}
    d_ir = [ir[f["seed"]] - f["mIoU"] for f in fixed["runs"]]
    assert paired["sources"]["ir"]["mean"]["mIoU"] == pytest.approx(np.mean(d_ir))
    printed = capsys.readouterr().out
    assert "paired differences to fixed" in printed and "fixed (baseline)" in printed
    assert "fusion run 1 seed 0" in csv_path.read_text() and "paired mean" in csv_path.read_text()


def test_compare_refuses_an_unknown_baseline(tmp_path, capsys):
    rc = main(["compare", "--task", "seg", "--dataset", "synthetic", "--checkpoint", str(_checkpoint(tmp_path / "a.pt", 0)),
               "--baseline", "nope", "--seeds", "0", "--preset", "fast", "--epochs", "1", "--device", "cpu", *SYNTH])
    assert rc == 2 and "--baseline 'nope' is not one of the sources" in capsys.readouterr().err
