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
    for task, driven, metrics in (("seg", "seg", ["mIoU", "mAcc", "pixel_acc"]),
                                  ("det", "det", ["mAP50", "mAP75", "mAP50_95"])):
        table = json.loads((out / f"efficacy_{task}.json").read_text())
        assert table["protocol"] == "retrain-per-source" and table["seeds"] == [0, 1]
        assert list(table["sources"]) == ["fixed", "recon", driven, "ir", "vis"]
        assert table["metrics"] == metrics
        for s in table["sources"].values():
            assert [r["seed"] for r in s["runs"]] == [0, 1] and set(s["mean"]) == set(metrics)
        # G's weights per class: none for the fixed ablation, every class for the learned losses
        assert table["g_weight_ir_per_class"]["fixed"] == {}
        assert 0.0 < table["g_weight_ir_per_class"][driven]["person"] < 1.0
        png = (out / f"efficacy_{task}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
    commands = (out / "efficacy_smoke_commands.txt").read_text().splitlines()
    assert len(commands) == 6 and all(c.startswith("tdfusion ") for c in commands)  # 4 trainings, 2 compares


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
    dtype = torch.get_default_dtype()
    try:
        assert probe.main([str(ckpt), "--size", "64", "80", "--pairs", "2", "--json", str(out)]) == 0
    finally:
        torch.set_default_dtype(dtype)
    table = json.loads(out.read_text())
    assert set(table) == {"same image", "other image"}
    for row in table.values():
        assert {"background", "road"} <= set(row)
        for r in row.values():
            assert r["of"] >= 1 and 0 <= r["rewards_ir"] <= r["of"] and r["mean_per_pixel"] != 0.0


def test_fused_range_reports_a_saturated_loss_generator():
    """scripts/fused_range.py's G figures against known weights: a G whose last convolution is
    zero gives w_a = 0.5 everywhere (none at a bound); scaled by 1e4, its softmax sits at 0 or
    1 almost everywhere."""
    import numpy as np
    import torch

    from tdfusion.nets import create_model

    spec = importlib.util.spec_from_file_location("fused_range", REPO / "scripts" / "fused_range.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    torch.manual_seed(0)
    g = create_model("lossgen", dim=8, num_blocks=1, heads=2).eval()
    rng = np.random.default_rng(0)
    sources = [(rng.random((24, 32), dtype=np.float32), rng.random((24, 32), dtype=np.float32)) for _ in range(2)]
    last = g.head[-1].weight
    with torch.no_grad():
        saved = last.clone()
        last.zero_()
        assert script.lossgen_figures(g, sources) == (0.5, 0.0)
        last.copy_(saved * 1e4)
        mean_wa, at_bounds = script.lossgen_figures(g, sources)
    assert at_bounds > 0.95 and 0.0 <= mean_wa <= 1.0
