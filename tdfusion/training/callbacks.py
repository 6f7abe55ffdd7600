"""Callbacks: what a training run does besides training, at fixed points of the loop.

A callback subclasses :class:`Callback` and overrides the hooks it needs; the trainer
calls every hook on rank 0 only (where files are written). The default callbacks
(:func:`default_callbacks`) write the sample sheets and the training report after each
epoch. Tests add their own (e.g. a fault injected while a checkpoint is written).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..data import eval_view
from ..errors import TDFusionError
from ..evaluation.loop import eval_mode
from ..meta import objectives
from . import run_folder
from .health import HEALTH_KEYS

if TYPE_CHECKING:  # the trainer imports this module
    from .trainer import MetaTrainer

__all__ = ["Callback", "EpochLine", "SampleReport", "default_callbacks", "epoch_line"]


class Callback:
    """Hooks of a training run; each does nothing unless overridden."""

    def on_fit_start(self, trainer: "MetaTrainer") -> None:
        """Before the first step (after a resume: before the first step still to run)."""

    def on_checkpoint_write(self, trainer: "MetaTrainer", ckpt: dict, path: Path) -> None:
        """Before ``ckpt`` is written (atomically) to ``path``."""

    def on_epoch_end(self, trainer: "MetaTrainer", epoch: int, metrics: dict[str, Any] | None) -> None:
        """After epoch ``epoch`` (1-based) was evaluated and its checkpoints were written."""

    def on_fit_end(self, trainer: "MetaTrainer", summary: dict[str, Any]) -> None:
        """After the last epoch, with the run's summary."""


def default_callbacks() -> list[Callback]:
    return [EpochLine(), SampleReport()]


class EpochLine(Callback):
    """One printed line per evaluated epoch: the task's test metrics and what ``best.pt``
    now holds (the same figures as ``eval_log.jsonl``)."""

    def on_epoch_end(self, trainer: "MetaTrainer", epoch: int, metrics: dict[str, Any] | None) -> None:
        if metrics is None:
            return
        print(epoch_line(epoch, trainer.cfg["train"]["epochs"], metrics, trainer.best.record), flush=True)


def epoch_line(epoch: int, epochs: int, metrics: dict[str, Any], best: dict[str, Any] | None) -> str:
    """``epoch 3/16 test: miou 0.4123, pixel_acc 0.8512; best.pt: this epoch (fitness 0.4123)``."""
    shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()
                      if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "epoch")
    if best is None:
        kept = "none yet (no finite fitness)"
    elif best["epoch"] == epoch:
        kept = f"this epoch (fitness {best['fitness']:.4g})"
    else:
        kept = f"epoch {best['epoch']} (fitness {best['fitness']:.4g})"
    return f"epoch {epoch}/{epochs} test: {shown or 'no scalar metrics'}; best.pt: {kept}"


class SampleReport(Callback):
    """``samples/epoch_<e>.png`` (one labelled row per pair: A | B | fused | w_A (| v_A), the
    maps in the report's colour map, with its colour bar) and ``report/``: the same pairs as a
    ``tdfusion report`` page with their fusion metrics, the task metrics of the epoch and the
    run's provenance. Written after the epoch's checkpoint: the page records its sha256."""

    def on_epoch_end(self, trainer: "MetaTrainer", epoch: int, metrics: dict[str, Any] | None) -> None:
        from ..io import write_image
        from ..report import sample_sheet

        samples = sample_panels(trainer)
        if not samples:
            return
        sheet = sample_sheet(samples)
        write_image(trainer.run_dir / run_folder.SAMPLES / run_folder.epoch_sheet(epoch), sheet)
        if trainer.loggers is not None:
            trainer.loggers.image("samples", sheet, trainer.pos.global_step)
            trainer.loggers.flush()
        _write_report(trainer, samples, epoch)


@torch.no_grad()
def sample_panels(trainer: "MetaTrainer") -> list[tuple[str, list[tuple[str, np.ndarray]]]]:
    """``[(stem, [(label, (H, W) in [0, 1]), ...])]`` for the first ``run.samples`` training
    pairs: A, B, the fused image as ``tdfusion fuse`` writes it (min-max stretched) and G's
    weight maps for A (w_A, and v_A for the ReFusion form)."""
    from ..inference import normalize_minmax

    count = min(trainer.cfg["run"]["samples"], len(trainer.train_set))
    size = trainer.cfg["data"]["task_size"]
    fusion, lossgen = trainer.fusion, trainer.lossgen
    out = []
    with eval_mode(fusion, lossgen):
        for i in range(max(0, count)):
            sample = trainer.train_set[i]
            view = eval_view(sample, size)
            a, b = view["a"][None].to(trainer.device), view["b"][None].to(trainer.device)
            fused = normalize_minmax(fusion(a, b)[0, 0].float().cpu().numpy())
            weights = objectives.loss_weights(lossgen, objectives.params_of(lossgen), a, b, trainer.settings)
            panels = [(label, t[0, 0].float().cpu().numpy()) for label, t in (("A", a), ("B", b))]
            panels.append(("fused", fused))
            panels += [(name, weights[0, c].float().cpu().numpy())
                       for name, c in (("w_A", 0), ("v_A", 2)) if c < weights.shape[1]]
            out.append((sample.stem, panels))
    return out


def _write_report(trainer: "MetaTrainer", samples, epoch: int) -> None:
    from ..metrics import evaluate as fusion_metrics
    from ..metrics.evaluate import mean_metrics
    from ..report import ReportEntry, provenance, write_report

    cfg, run_dir = trainer.cfg, trainer.run_dir
    entries, per_image = [], {}
    for stem, panels in samples:
        imgs = {label: x for label, x in panels}
        try:
            values = fusion_metrics(*(np.clip(imgs[k], 0, 1).astype(np.float64) * 255 for k in ("fused", "A", "B")))
        except (TDFusionError, ValueError):  # e.g. smaller than VIF's minimum size: show the images anyway
            values = {}
        if values:
            per_image[stem] = values
        entries.append(ReportEntry(stem, panels, {"fused": values} if values else {}))
    summary = {"fused": {"mean": mean_metrics(per_image), "per_image": per_image}} if per_image else None
    notes = [f"epoch {epoch}/{cfg['train']['epochs']}, task {trainer.task.name}, "
             f"dataset {cfg['dataset']['name']}; training pairs at the task input size",
             "panels: sources A and B, the fused image as tdfusion fuse writes it (luminance, min-max "
             "stretched), and the loss generator's weight for A (w_A: intensity, v_A: gradient; "
             "1 = all weight on A)"]
    evals = run_folder.read_log(run_dir / run_folder.EVAL_LOG)
    if evals:
        scalars = {k: v for k, v in evals[-1].items() if isinstance(v, (int, float)) and k != "epoch"}
        health = {k: scalars.pop(k) for k in HEALTH_KEYS if k in scalars}
        notes.append(f"test-split task metrics (epoch {evals[-1].get('epoch')}): "
                     + ", ".join(f"{k} {v:.4g}" for k, v in scalars.items()))
        if health:
            notes.append("run health on the same pairs (F's output, share of G's weights at 0 or 1): "
                         + ", ".join(f"{k} {v:.4g}" for k, v in health.items()))
    best = trainer.best.record
    if best is not None:
        notes.append(f"best.pt: epoch {best['epoch']} (task fitness {best['fitness']:.4g})")
    task_size = cfg["data"]["task_size"]
    write_report(run_dir / run_folder.REPORT, entries, summary=summary,
                 title=f"training report: {run_dir.resolve().name}", notes=notes,
                 provenance=provenance(run_dir / run_folder.LAST),
                 height=cfg["data"]["crop_size"] if task_size is None else task_size[0],
                 columns=max(len(p) for _, p in samples))
