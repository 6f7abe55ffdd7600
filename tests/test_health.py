"""Run health: F's collapse and G's saturation are measured on the test split and warned about."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from tdfusion.training.health import HealthStats, health_warnings

OPTIM = {"lr_fusion": 1e-3, "lr_lossgen": 3e-4}


def test_health_figures_match_numpy_over_all_batches():
    rng = np.random.default_rng(0)
    fused = [rng.random((2, 1, 5, 7)), rng.random((1, 1, 5, 7))]
    # G's weights: pairs (w_a, w_b) summing to 1, some pinned near 0 or 1
    w_a = [np.clip(rng.normal(0.5, 0.6, (2, 1, 5, 7)), 0, 1), np.clip(rng.normal(0.5, 0.6, (1, 1, 5, 7)), 0, 1)]
    stats = HealthStats()
    for f, w in zip(fused, w_a):
        stats.add_fused(torch.from_numpy(f).float())
        stats.add_weights(torch.from_numpy(np.concatenate([w, 1 - w], axis=1)).float())
    figures = stats.figures()
    flat = np.concatenate([f.ravel() for f in fused]).astype(np.float32).astype(np.float64)
    assert figures["fused_mean"] == pytest.approx(flat.mean(), abs=1e-9)
    assert figures["fused_std"] == pytest.approx(flat.std(), abs=1e-9)
    wa = np.concatenate([w.ravel() for w in w_a]).astype(np.float32)
    assert figures["lossgen_at_bounds"] == pytest.approx(np.mean((wa < 1e-3) | (wa > 1 - 1e-3)))


def test_no_weights_seen_gives_no_lossgen_figure():
    stats = HealthStats()
    stats.add_fused(torch.full((1, 1, 4, 4), 0.25))
    assert stats.figures() == {"fused_mean": 0.25, "fused_std": 0.0}


def test_warnings_name_the_learning_rate_to_lower():
    collapsed = health_warnings({"fused_mean": 0.0004, "fused_std": 2e-5}, OPTIM)
    assert len(collapsed) == 1 and "collapsed" in collapsed[0] and "optim.lr_fusion (now 0.001)" in collapsed[0]
    saturated = health_warnings({"fused_mean": 0.3, "fused_std": 0.1, "lossgen_at_bounds": 0.995}, OPTIM)
    assert len(saturated) == 1 and "99.5%" in saturated[0] and "optim.lr_lossgen (now 0.0003)" in saturated[0]
    assert health_warnings({"fused_mean": 0.3, "fused_std": 0.1, "lossgen_at_bounds": 0.4}, OPTIM) == []


def _run(tmp_path, *extra, callbacks=()):
    """A tiny one-epoch run; its RuntimeWarnings and its last eval_log record."""
    from test_house import _tiny_config
    from tdfusion.training.trainer import train

    run = tmp_path / "run"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(_tiny_config("run.samples=0", "train.epochs=1", *extra), run, callbacks=list(callbacks))
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    return messages, json.loads((run / "eval_log.jsonl").read_text().splitlines()[-1])


def test_a_run_whose_fusion_output_is_constant_warns_and_logs_it(tmp_path):
    from tdfusion.training.callbacks import Callback

    class Freeze(Callback):  # F's head zeroed and not trained: sigmoid(0) = 0.5 on every pixel
        def on_fit_start(self, trainer):
            with torch.no_grad():
                trainer.fusion.head[-1].weight.zero_()
            trainer.fusion.head[-1].weight.requires_grad_(False)

    messages, record = _run(tmp_path, callbacks=[Freeze()])
    assert any(m.startswith("epoch 1: ") and "collapsed" in m for m in messages), messages
    assert record["fused_mean"] == pytest.approx(0.5) and record["fused_std"] < 1e-6
    assert not any("loss generator" in m for m in messages)


def test_a_run_whose_loss_generator_saturates_warns_and_logs_it(tmp_path):
    from tdfusion.training.callbacks import Callback

    class Saturate(Callback):  # G's logits scaled far beyond the softmax's range, and frozen
        def on_fit_start(self, trainer):
            last = trainer.lossgen.head[-1].weight
            with torch.no_grad():
                last.mul_(1e6)
            last.requires_grad_(False)

    messages, record = _run(tmp_path, callbacks=[Saturate()])
    assert any("loss generator" in m and "optim.lr_lossgen" in m for m in messages), messages
    assert record["lossgen_at_bounds"] >= 0.99


def test_the_fixed_weight_ablation_reports_no_loss_generator_figure(tmp_path):
    """G is not used there: its share at the bounds would describe a network that does nothing."""
    messages, record = _run(tmp_path, "loss.fixed_weights=true")
    assert "lossgen_at_bounds" not in record and "fused_std" in record
