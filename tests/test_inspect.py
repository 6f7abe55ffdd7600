"""``tdfusion inspect``: G's per-class weights, its saturation and agreement with a known map,
F's output range and the meta-gradient scale, each against an independent computation."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from tdfusion.checkpoint import module_record, save_checkpoint
from tdfusion.cli import main
from tdfusion.data.det_labels import paint_boxes
from tdfusion.inspection.figures import meta_gradient_scale
from tdfusion.inspection.inspector import inspect_run, pairs_from_folders
from tdfusion.io import write_image
from tdfusion.nets import create_model
from tdfusion.nets.registry import register_model

pytestmark = pytest.mark.usefixtures("one_thread")


@register_model("test_intensity_g")
class IntensityG(nn.Module):
    """A G with known output: w_a = the first source's intensity, w_b = 1 - w_a."""

    def __init__(self, pairs: int = 1):
        super().__init__()
        self.config, self.pairs = {"pairs": pairs}, pairs
        self.unused = nn.Parameter(torch.zeros(1))  # a module with no parameter would have no device

    def forward(self, a, b):
        return torch.cat([a, 1 - a] * self.pairs, 1)


def _pairs_on_disk(root, n=3, size=(24, 32)):
    rng = np.random.default_rng(0)
    masks, boxes = [], []
    for i in range(n):
        a = rng.integers(0, 256, size, dtype=np.uint8)
        a[0, :4] = 0  # some pixels exactly at G's bounds
        a[1, :4] = 255
        write_image(root / "ir" / f"{i}.png", a)
        write_image(root / "vi" / f"{i}.png", rng.integers(0, 256, size, dtype=np.uint8))
        mask = rng.integers(0, 3, size).astype(np.uint8)
        mask[2, 2] = 255  # ignored
        write_image(root / "masks" / f"{i}.png", mask)
        masks.append(mask)
        rows = np.array([[1, 0.5, 0.5, 0.5, 0.5], [0, 0.25, 0.3, 0.2, 0.2]], np.float32)
        (root / "labels").mkdir(exist_ok=True)
        (root / "labels" / f"{i}.txt").write_text("\n".join(" ".join(f"{v:g}" for v in r) for r in rows) + "\n")
        boxes.append(rows)
    return masks, boxes


def _checkpoint(path, fixed=False):
    torch.manual_seed(0)
    fusion = create_model("fusion", dim=8, num_blocks=1)
    ckpt = {"fusion": module_record("fusion", fusion), "lossgen": module_record("test_intensity_g", IntensityG()),
            "extra": {"config": {"loss": {"fixed_weights": fixed, "form": "tdfusion", "alpha": 1.0}}}}
    save_checkpoint(ckpt, path)
    return path, fusion


def test_per_class_weights_bounds_and_oracle_against_numpy(tmp_path):
    masks, _ = _pairs_on_disk(tmp_path)
    ckpt, fusion = _checkpoint(tmp_path / "g.pt")
    data = pairs_from_folders(tmp_path / "ir", tmp_path / "vi", tmp_path / "masks", ["sky", "road", "person"], None)
    report = inspect_run(ckpt, None, data, ["person"])
    a = [np.asarray(p.a, np.float64) for p in data.pairs]  # G's w_a, by construction
    g = report["lossgen"]
    for k, name in enumerate(["sky", "road", "person"]):
        expected = np.concatenate([x[m == k] for x, m in zip(a, masks)]).mean()
        assert g["per_class"][name]["w_a"] == pytest.approx(expected, rel=1e-6)
    all_a = np.concatenate([x.ravel() for x in a])
    assert g["at_bounds"] == pytest.approx(np.mean((all_a < 1e-3) | (all_a > 1 - 1e-3)))
    assert g["mean"]["w_a"] == pytest.approx(np.mean([x.mean() for x in a]), rel=1e-6)
    # agreement with "infrared on person, visible elsewhere": w_a > 1/2 exactly on person pixels
    hit = np.concatenate([((x > 0.5) == (m == 2))[m != 255] for x, m in zip(a, masks)])
    assert g["oracle"]["agreement"] == pytest.approx(hit.mean(), rel=1e-9)
    person = np.concatenate([(x > 0.5)[m == 2] for x, m in zip(a, masks)])
    assert g["oracle"]["per_class"]["person"] == pytest.approx(person.mean(), rel=1e-9)
    # F's raw output: the module's own forward pass on each pair
    with torch.no_grad():
        raw = [fusion(*(torch.from_numpy(x)[None, None] for x in (p.a, p.b)))[0, 0].numpy() for p in data.pairs]
    assert report["fusion_raw"]["mean"] == pytest.approx(np.mean([r.mean() for r in raw]), abs=1e-5)
    assert report["fusion_raw"]["max"] == pytest.approx(max(r.max() for r in raw), abs=1e-5)


def test_boxes_are_painted_smaller_on_top_and_counted_per_class(tmp_path):
    _pairs_on_disk(tmp_path)
    ckpt, _ = _checkpoint(tmp_path / "g.pt")
    data = pairs_from_folders(tmp_path / "ir", tmp_path / "vi", tmp_path / "labels", ["person", "car"], None)
    assert data.classes == ["background (no box)", "person", "car"]
    labels = data.pairs[0].labels
    # car (class 1): cx 0.5 w 0.5 on 32 px -> columns 8..23, rows 6..17 of 24; painted value 2
    assert (labels[6:18, 8:24] == 2).sum() > 0 and labels[0, 0] == 0
    # person (class 0, smaller, painted last): cx 0.25 w 0.2 -> columns 5..10, rows 5..9; value 1 on top of the car
    assert labels[7, 9] == 1 and labels[12, 12] == 2
    assert np.array_equal(labels, paint_boxes(np.array([[1, 0.5, 0.5, 0.5, 0.5], [0, 0.25, 0.3, 0.2, 0.2]]),
                                              (24, 32)))
    report = inspect_run(ckpt, None, data, ["person"])
    a = [np.asarray(p.a, np.float64) for p in data.pairs]
    expected = np.concatenate([x[p.labels == 1] for x, p in zip(a, data.pairs)]).mean()
    assert report["lossgen"]["per_class"]["person"]["w_a"] == pytest.approx(expected, rel=1e-6)


def test_fixed_weight_checkpoint_has_no_g_and_meta_gradient_scale_per_epoch(tmp_path):
    _pairs_on_disk(tmp_path)
    ckpt, _ = _checkpoint(tmp_path / "g.pt", fixed=True)
    data = pairs_from_folders(tmp_path / "ir", tmp_path / "vi", None, None, None)
    assert inspect_run(ckpt, None, data)["lossgen"] is None
    log = tmp_path / "train_log.jsonl"
    log.write_text("\n".join(json.dumps(r) for r in [
        {"epoch": 1, "phase": "meta", "meta_grad_scale": 1e-6}, {"epoch": 1, "phase": "meta", "meta_grad_scale": 3e-6},
        {"epoch": 1, "phase": "fusion", "loss_f": 0.2}, {"epoch": 2, "phase": "meta", "meta_grad_scale": 5e-7}]) + "\n{cut")
    scale = meta_gradient_scale(tmp_path)
    assert [(e["epoch"], e["steps"]) for e in scale] == [(1, 2), (2, 1)]
    assert scale[0]["mean"] == pytest.approx(2e-6) and scale[1]["max"] == pytest.approx(5e-7)


def test_inspect_a_run_folder_writes_table_json_and_png(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--task", "seg", "--dataset", "synthetic", "--out", str(run), "--device", "cpu",
                 "train.epochs=1", "train.meta_steps=1", "train.fusion_steps=1", "dataset.options.length=4",
                 "dataset.options.size=[48,64]", "data.task_size=[48,64]", "data.crop_size=32", "fusion.dim=8",
                 "fusion.num_blocks=1", "lossgen.dim=8", "lossgen.num_blocks=1", "run.eval_every=0",
                 "task.segformer={hidden_sizes: [8, 16, 16, 16], depths: [1, 1, 1, 1], num_attention_heads: "
                 "[1, 1, 1, 1], decoder_hidden_size: 16}"]) == 0
    out_json, out_png = tmp_path / "i.json", tmp_path / "i.png"
    assert main(["inspect", str(run), "--limit", "3", "--json", str(out_json), "--png", str(out_png),
                 "--device", "cpu"]) == 0
    report = json.loads(out_json.read_text())
    assert report["pairs"] == 3 and report["settings"]["objective"] == "one_step"
    assert set(report["lossgen"]["per_class"]) <= {"background", "road", "marking", "person", "car"}
    assert report["lossgen"]["oracle"]["ir_classes"] == ["person", "car"]  # the synthetic scenes' default
    assert len(report["meta_gradient_scale"]) == 1
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "G vs oracle" in capsys.readouterr().out
    assert main(["inspect", str(run), "--ir-classes", "dragon", "--device", "cpu"]) == 2
    assert "--ir-classes dragon: not among the targets' classes" in capsys.readouterr().err
