"""Detection-driven fusion end to end through the command line: train, eval (compare: test_compare.py).

Tiny schedules (one meta iteration, two F/T steps): these tests check the wiring, files
and result formats, not accuracy. Ground-truth counts are checked against the label
files themselves.
"""
from __future__ import annotations

import json

import pytest

from tdfusion.cli import main

TINY = ["train.epochs=1", "train.meta_steps=1", "train.fusion_steps=2", "data.crop_size=32", "run.eval_limit=2",
        "run.samples=1", "run.save_every=100"]
SYNTH = ["dataset.options={length: 4, target: boxes, size: [64, 96]}", "data.task_size=[64, 96]"]


def check_metrics(m: dict, classes: list[str]) -> None:
    for key in ("mAP50", "mAP75", "mAP50_95"):
        assert 0.0 <= m[key] <= 1.0, key
    assert list(m["per_class"]) == classes
    assert m["mAP50"] >= m["mAP50_95"]


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "synthetic_det"
    rc = main(["train", "--task", "det", "--dataset", "synthetic", "--out", str(out), "--device", "cpu",
               *TINY, *SYNTH])
    assert rc == 0
    return out


def test_train_on_synthetic_writes_checkpoint_and_map(synthetic_run):
    assert (synthetic_run / "last.pt").is_file()
    summary = json.loads((synthetic_run / "summary.json").read_text())
    check_metrics(summary["eval"], ["person", "car"])


def test_eval_checkpoint_with_baselines_json(synthetic_run, tmp_path, capsys):
    out = tmp_path / "det.json"
    rc = main(["eval", "--checkpoint", str(synthetic_run / "last.pt"), "--device", "cpu", "--limit", "2",
               "--json", str(out), "--csv", str(tmp_path / "det.csv")])
    assert rc == 0
    result = json.loads(out.read_text())
    check_metrics(result, ["person", "car"])                      # top level: the fused images
    assert result["source"] == "fused" and list(result["sources"]) == ["fused", "ir", "vis"]
    for metrics in result["sources"].values():
        check_metrics(metrics, ["person", "car"])
    assert "mAP50_95" in capsys.readouterr().out                  # the printed table
    header = (tmp_path / "det.csv").read_text().splitlines()[0]
    assert "per_class.person.AP50" in header


def test_train_and_eval_on_real_msrs_det(shared_data, tmp_path):
    root = shared_data / "msrs_det"
    out = tmp_path / "msrs_det"
    rc = main(["train", "--task", "det", "--dataset", "msrs_det", "--data-root", str(root), "--out", str(out),
               "--device", "cpu", *TINY, "data.task_size=[96, 128]"])
    assert rc == 0
    result_path = tmp_path / "msrs.json"
    assert main(["eval", "--checkpoint", str(out / "last.pt"), "--device", "cpu", "--limit", "3",
                 "--no-baselines", "--json", str(result_path)]) == 0
    result = json.loads(result_path.read_text())
    check_metrics(result, ["person", "bicycle", "car"])
    # instances per class = the lines of the first three test label files (stems in sorted order)
    counts = [0, 0, 0]
    for label in sorted((root / "test" / "labels").glob("*.txt"))[:3]:
        for line in label.read_text().split("\n"):
            if line.strip():
                counts[int(line.split()[0])] += 1
    assert [result["per_class"][c]["instances"] for c in ("person", "bicycle", "car")] == counts
    assert result["images"] == 3


def test_bad_label_stops_training_with_one_line(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path / "d"), "--train", "2", "--test", "1", "--size", "64", "64"]) == 0
    label = sorted((tmp_path / "d" / "train" / "labels").glob("*.txt"))[1]
    label.write_text(label.read_text() + "7 0.5 0.5 0.1\n")
    rc = main(["train", "--task", "det", "--dataset", "yolo", "--data-root", str(tmp_path / "d"),
               "--out", str(tmp_path / "run"), "--device", "cpu", *TINY])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert f"{label}:" in err and "expected 5 fields" in err
    assert not (tmp_path / "run" / "last.pt").exists()
