"""scripts/pair_tables.py: sources from several compare files paired run by run, and a later
file's fusion runs of a method pooled with an earlier file's (--pool). Hand-computed values."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location("pair_tables", REPO / "scripts" / "pair_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _payload(sources: dict[str, list[tuple[int, int, float]]]) -> dict:
    """``{name: [(fusion_run, seed, mIoU), ...]}`` as a compare JSON."""
    out = {"task": "seg", "dataset": "synthetic", "seeds": [0, 1], "downstream": {"epochs": 25}, "metrics": ["mIoU"],
           "sources": {}}
    for name, runs in sources.items():
        rs = [{"fusion_run": f, "seed": s, "mIoU": v, "train_seconds": 1.0} for f, s, v in runs]
        out["sources"][name] = {"mean": {"mIoU": sum(v for *_, v in runs) / len(runs)}, "std": {"mIoU": 0.0},
                                "runs": rs}
    return out


def test_a_later_fusion_seed_is_pooled_and_paired_run_by_run(tmp_path, capsys):
    first = _payload({"fixed": [(0, 0, 0.40), (0, 1, 0.42), (1, 0, 0.44), (1, 1, 0.46)],
                      "steer": [(0, 0, 0.41), (0, 1, 0.45), (1, 0, 0.44), (1, 1, 0.50)],
                      "ir": [(0, 0, 0.30), (0, 1, 0.31)]})
    later = _payload({"fixed": [(0, 0, 0.50), (0, 1, 0.52)], "steer": [(0, 0, 0.49), (0, 1, 0.56)],
                      "ir": [(0, 0, 0.30), (0, 1, 0.31)]})  # the same input images: the same runs
    paths = []
    for k, pl in enumerate((first, later)):
        paths.append(tmp_path / f"t{k}.json")
        paths[-1].write_text(json.dumps(pl))
    out = tmp_path / "merged.json"
    assert _module().main([*map(str, paths), "--baseline", "fixed", "--pool", "--json", str(out)]) == 0
    merged = json.loads(out.read_text())
    steer = merged["paired"]["sources"]["steer"]
    # differences per (fusion run, seed): 0.01, 0.03, 0.00, 0.04 | 0.04 - ... later: -0.01, 0.04
    diffs = [0.01, 0.03, 0.00, 0.04, -0.01, 0.04]
    assert steer["n"] == 6 and steer["positive"]["mIoU"] == 4
    assert steer["mean"]["mIoU"] == pytest.approx(sum(diffs) / 6)
    assert sorted({r["fusion_run"] for r in merged["sources"]["fixed"]["runs"]}) == [0, 1, 2]
    assert len(merged["sources"]["ir"]["runs"]) == 2


def test_different_runs_without_pool_are_refused(tmp_path):
    a = _payload({"fixed": [(0, 0, 0.40), (0, 1, 0.42)]})
    b = _payload({"fixed": [(0, 0, 0.50), (0, 1, 0.52)]})
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    with pytest.raises(SystemExit, match="--pool"):
        _module().main([str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--baseline", "fixed"])
