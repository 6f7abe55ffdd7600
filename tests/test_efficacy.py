"""The efficacy driver (scripts/efficacy.py, `make efficacy`) end to end, in its smoke mode:
tiny networks and one step of everything, so only the pipeline and the files are checked;
docs/results.md holds the measured tables of the real modes."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_efficacy_smoke_writes_both_tables_and_charts(tmp_path):
    spec = importlib.util.spec_from_file_location("efficacy", REPO / "scripts" / "efficacy.py")
    efficacy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(efficacy)
    out = tmp_path / "results"
    assert efficacy.main(["--mode", "smoke", "--out", str(out), "--work", str(tmp_path / "runs"), "--jobs", "1"]) == 0
    for task, metrics in (("seg", ["mIoU", "mAcc", "pixel_acc"]), ("det", ["mAP50", "mAP75", "mAP50_95"])):
        table = json.loads((out / f"efficacy_{task}.json").read_text())
        assert table["protocol"] == "retrain-per-source" and table["seeds"] == [0, 1]
        assert list(table["sources"]) == ["fixed", "recon", task, f"{task}_steer", "ir", "vis"]
        assert table["metrics"] == metrics
        for name, s in table["sources"].items():
            runs = [(r["fusion_run"], r["seed"]) for r in s["runs"]]
            assert runs == ([(0, 0), (0, 1)] if name in ("ir", "vis") else [(0, 0), (0, 1), (1, 0), (1, 1)])
            assert set(s["mean"]) == set(metrics)
        # fusion run i of every method was trained with seed i, in its own folder
        for name in ("fixed", task, f"{task}_steer"):
            folders = [Path(p).parent.name for p in table["sources"][name]["fusion_runs"]]
            assert folders == [f"{name}_s0", f"{name}_s1"]
        paired = table["paired"]
        assert paired["baseline"] == "fixed" and paired["sources"][f"{task}_steer"]["n"] == 4
        assert paired["sources"]["ir"]["n"] == 4  # one source, paired on the seed with each fusion run
        # G's weights per class: none for the fixed ablation, every class for the learned losses
        profiles = table["lossgen_per_class"]
        assert profiles["fixed"] == [{}, {}] and len(profiles[f"{task}_steer"]) == 2
        assert 0.0 < profiles[task][0]["w_a_per_class"]["person"] < 1.0
        assert table["environment"]["packages"]["torch"] and table["environment"]["threads_per_job"] >= 1
        png = (out / f"efficacy_{task}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
    commands = (out / "efficacy_smoke_commands.txt").read_text().splitlines()
    assert len(commands) == 14 and all(c.startswith("tdfusion ") for c in commands)  # 6 methods x 2 seeds, 2 compares
    assert sum("--preset steer" in c for c in commands) == 4


def test_meta_credit_probe_reports_every_class_in_both_settings(tmp_path):
    import torch

    from tdfusion.checkpoint import module_record, save_checkpoint
    from tdfusion.nets import create_model

    spec = importlib.util.spec_from_file_location("meta_credit", REPO / "scripts" / "meta_credit.py")
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    torch.manual_seed(0)
    ckpt = tmp_path / "f.pt"
    save_checkpoint({"fusion": module_record("fusion", create_model("fusion", dim=8, num_blocks=1))}, ckpt)
    out = tmp_path / "credit.json"
    assert probe.main([str(ckpt), "--size", "64", "80", "--pairs", "2", "--json", str(out)]) == 0
    table = json.loads(out.read_text())
    assert set(table) == {"same image", "other image"}
    for row in table.values():
        assert {"background", "road"} <= set(row)
        for r in row.values():
            assert r["of"] >= 1 and 0 <= r["rewards_ir"] <= r["of"] and r["mean_per_pixel"] != 0.0
