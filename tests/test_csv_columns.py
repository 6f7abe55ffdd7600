"""Every column a CSV of ``tdfusion metrics``/``report``, ``eval`` or ``compare`` can write is
in the docs' column tables, and the task CSVs carry the protocol (issue 24, item 4).

The columns are taken from what the code writes (the commands' files, the task metric
functions through the CSV writers), not from a list kept here: a new column without a
row in docs/metrics.md or docs/evaluation.md fails.
"""
from __future__ import annotations

import csv
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from tdfusion.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]


def _doc_columns(doc: str, heading: str) -> set[str]:
    """The backticked names in the first cell of each row of the first table under ``heading``."""
    text = (REPO / "docs" / doc).read_text()
    start = text.index(f"\n{heading}\n")
    lines = text[start:].splitlines()[2:]
    rows, in_table = [], False
    for line in lines:
        if line.startswith("#"):
            break
        if line.startswith("|"):
            in_table = True
            rows.append(line)
        elif in_table:
            break
    names = set()
    for row in rows[2:]:  # header and separator
        names.update(re.findall(r"`([^`]+)`", row.split("|")[1]))
    assert names, f"no column table under {heading!r} in docs/{doc}"
    return names


def _header(path: Path) -> list[str]:
    with path.open(newline="") as fh:
        return next(csv.reader(fh))


def _generic(column: str) -> str:
    """``per_class.person.IoU`` -> ``per_class.<class>.IoU`` (class names come from the data)."""
    return re.sub(r"^per_class\.(.+)\.([^.]+)$", r"per_class.<class>.\2", column)


def _undocumented(columns, documented: set[str]) -> list[str]:
    return [c for c in columns if _generic(c) not in documented]


# -- tdfusion metrics / report ----------------------------------------------------------------------------------

def test_metrics_csv_columns_are_documented(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("ir", "vi", "fused"):
        (tmp_path / name).mkdir()
        cv2.imwrite(str(tmp_path / name / "1.png"), rng.integers(0, 256, (48, 48), dtype=np.uint8))
    out = tmp_path / "m.csv"
    assert main(["metrics", "--a", str(tmp_path / "ir"), "--b", str(tmp_path / "vi"), "--fused",
                 str(tmp_path / "fused"), "--quiet", "--workers", "1", "--csv", str(out)]) == 0
    columns = _header(out)
    assert _undocumented(columns, _doc_columns("metrics.md", "### CSV")) == []
    assert columns[:3] == ["method", "kind", "image"]


# -- tdfusion eval / compare ------------------------------------------------------------------------------------

def _seg_metrics() -> dict:
    from tdfusion.tasks.seg import segmentation_metrics

    confusion = np.array([[5, 1, 0], [2, 7, 0], [0, 1, 0]])
    return segmentation_metrics(confusion, ["background", "person", "car"], ignore_index=255)


def _det_metrics() -> dict:
    pytest.importorskip("pycocotools")
    from tdfusion.tasks.det import coco_map

    box = np.array([[2.0, 2.0, 12.0, 12.0]])
    gt = [{"boxes": box, "classes": np.array([0]), "image_size": (16, 16)}]
    det = [{"boxes": box + 1, "scores": np.array([0.9]), "classes": np.array([0])}]
    return coco_map(gt, det, ["person", "car"], max_det=300)


@pytest.mark.parametrize("task", ["seg", "det"])
def test_eval_csv_columns_of_seg_and_det_are_documented(task, tmp_path):
    from tdfusion.evaluation.results import write_csv

    metrics = _seg_metrics() if task == "seg" else _det_metrics()
    out = tmp_path / "e.csv"
    write_csv(out, {"fused": metrics, "ir": metrics}, "checkpoint-task-network")
    columns = _header(out)
    assert columns[:2] == ["source", "protocol"]
    assert any(c.startswith("per_class.person.") for c in columns)
    assert _undocumented(columns, _doc_columns("evaluation.md", "## CSV columns")) == []


@pytest.fixture(scope="module")
def recon_run(tmp_path_factory):
    """A tiny reconstruction (ReFusion) run on the synthetic scenes: its last.pt."""
    run = tmp_path_factory.mktemp("recon") / "run"
    assert main(["train", "--task", "recon", "--dataset", "synthetic", "--out", str(run), "--device", "cpu",
                 "train.epochs=1", "train.meta_steps=1", "train.fusion_steps=1", "fusion.dim=8",
                 "fusion.num_blocks=1", "lossgen.dim=8", "lossgen.num_blocks=1", "task.dim=8", "task.num_blocks=1",
                 "data.crop_size=32", "dataset.options.size=[48,48]", "dataset.options.length=2",
                 "run.eval_limit=1", "run.samples=0", "run.eval_every=0"]) == 0
    return run / "last.pt"


def test_eval_csv_carries_the_protocol_and_documented_columns(recon_run, tmp_path, capsys):
    import json

    out_csv, out_json = tmp_path / "e.csv", tmp_path / "e.json"
    assert main(["eval", "--checkpoint", str(recon_run), "--device", "cpu", "--limit", "2",
                 "--csv", str(out_csv), "--json", str(out_json)]) == 0
    capsys.readouterr()
    with out_csv.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    protocol = json.loads(out_json.read_text())["protocol"]
    assert protocol == "checkpoint-task-network"
    assert [r["source"] for r in rows] == ["fused", "ir", "vis"]
    assert all(r["protocol"] == protocol for r in rows)
    columns = list(rows[0])
    assert {"psnr_a", "psnr_b", "loss"} <= set(columns)
    assert _undocumented(columns, _doc_columns("evaluation.md", "## CSV columns")) == []


def test_compare_csv_carries_the_protocol_and_documented_columns(tmp_path):
    from tdfusion.evaluation.comparison import HEADLINE_METRICS, ImageSource, pool_runs
    from tdfusion.evaluation.results import write_summary_csv
    from tdfusion.evaluation.statistics import paired_differences, summarize

    pytest.importorskip("pycocotools")
    documented = _doc_columns("evaluation.md", "## CSV columns")
    for kind, metrics in (("mask", _seg_metrics()), ("boxes", _det_metrics())):
        sources = [ImageSource("a", "checkpoint", "a0.pt", 0), ImageSource("a", "checkpoint", "a1.pt", 1),
                   ImageSource("b", "checkpoint", "b.pt", 0)]
        # A run record as comparison._job returns it: the seed, the task's metrics, the time.
        runs = {s.label: [{"seed": seed, **metrics, "train_seconds": 1.5} for seed in (0, 1)] for s in sources}
        pooled, fusion_runs = pool_runs(sources, runs)
        headline = HEADLINE_METRICS[kind]
        summary = {name: {**summarize(r, headline), "fusion_runs": fusion_runs[name]} for name, r in pooled.items()}
        payload = {"protocol": "retrain-per-source", "sources": summary,
                   "paired": paired_differences(summary, "a", headline)}
        out = tmp_path / f"{kind}.csv"
        write_summary_csv(out, payload)
        with out.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
        assert {r["row"] for r in rows} >= {"fusion run 1 seed 0", "mean", "std", "paired mean", "paired std"}
        assert all(r["protocol"] == "retrain-per-source" for r in rows)
        assert _undocumented(list(rows[0]), documented) == []


def test_the_doc_tables_are_found_and_a_new_column_would_fail():
    documented = _doc_columns("evaluation.md", "## CSV columns")
    assert {"source", "protocol", "psnr_a", "psnr_b", "per_class.<class>.IoU"} <= documented
    assert _undocumented(["psnr_a", "per_class.car.AP50", "psnr_c"], documented) == ["psnr_c"]
    assert {"method", "kind", "image", "EN", "SSIM"} <= _doc_columns("metrics.md", "### CSV")
