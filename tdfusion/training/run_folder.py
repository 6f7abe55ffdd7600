"""The file names of a run folder, defined once.

The trainer writes them (and truncates and summarises its logs with the functions
below); ``--resume``, ``eval``, ``compare``, the report and the scripts read them.

A run folder holds::

    config.yaml          the resolved config (after inheritance and overrides)
    last.pt              latest checkpoint (F, G, T, optimisers, position) -> tdfusion fuse accepts it
    best.pt              the checkpoint of the epoch with the best task fitness on the test split
    step_<k>.pt          rolling step checkpoints (run.keep most recent; hard links to the
                         last.pt written at that step, so no checkpoint is stored twice)
    epoch_<e>.pt         weights at the end of each epoch (no optimiser state)
    train_log.jsonl      one JSON object per step (phase, losses, learning rates)
    train_log.csv, eval_log.csv, tensorboard/   the same, as run.loggers asks (tdfusion.training.runlog)
    eval_log.jsonl       task metrics on the test split, per evaluated epoch, and F/G health (training.health)
    samples/epoch_<e>.png  sources, fused image and G's weight maps for a few pairs
    report/              the last epoch's samples as a tdfusion report page, with metrics
    summary.json         final losses and metrics
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

__all__ = ["BEST", "CONFIG", "EVAL_LOG", "EVAL_LOG_CSV", "LAST", "REPORT", "SAMPLES", "SUMMARY", "TRAIN_LOG", "TRAIN_LOG_CSV",
           "clear_run", "epoch_checkpoint", "epoch_sheet", "read_log", "step_checkpoint", "truncate_logs", "write_summary"]

LAST = "last.pt"                  # latest full checkpoint (what --resume and tdfusion fuse take)
BEST = "best.pt"                  # the epoch with the best task fitness
CONFIG = "config.yaml"            # the resolved run config
SUMMARY = "summary.json"          # final losses and metrics
TRAIN_LOG = "train_log.jsonl"     # one JSON object per step
TRAIN_LOG_CSV = "train_log.csv"
EVAL_LOG = "eval_log.jsonl"       # task metrics per evaluated epoch
EVAL_LOG_CSV = "eval_log.csv"
SAMPLES = "samples"               # sample sheets, one per epoch
REPORT = "report"                 # the HTML report of the last evaluation


def step_checkpoint(global_step: int) -> str:
    return f"step_{global_step:07d}.pt"


def epoch_checkpoint(epoch: int) -> str:
    return f"epoch_{epoch:03d}.pt"


def epoch_sheet(epoch: int) -> str:
    return f"epoch_{epoch:03d}.png"


def truncate_logs(run_dir: Path, global_step: int, epoch: int) -> None:
    """Drop the log lines written after a checkpoint at ``(global_step, epoch)``: a resumed
    run logs those steps again."""
    # Imported here: the command line imports this module for --help, and io pulls in OpenCV.
    from ..io import atomic_write

    for name, key, limit in ((TRAIN_LOG, "global_step", global_step), (EVAL_LOG, "epoch", epoch)):
        path = Path(run_dir) / name
        if not path.exists():
            continue
        kept = []
        for line in path.read_text().splitlines():
            try:
                if json.loads(line).get(key, 0) <= limit:
                    kept.append(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill
        with atomic_write(path, "w") as fh:
            fh.write("".join(line + "\n" for line in kept))


def clear_run(run_dir: Path) -> None:
    """Delete the files a run writes (the layout above) from ``run_dir``, and nothing else:
    ``train --exist-ok`` starts afresh in a folder that held a run."""
    import shutil

    run_dir = Path(run_dir)
    names = [LAST, BEST, CONFIG, SUMMARY, TRAIN_LOG, TRAIN_LOG_CSV, EVAL_LOG, EVAL_LOG_CSV]
    for path in [*(run_dir / n for n in names), *run_dir.glob("step_*.pt"), *run_dir.glob("epoch_*.pt")]:
        path.unlink(missing_ok=True)
    for folder in (SAMPLES, REPORT, "tensorboard"):
        shutil.rmtree(run_dir / folder, ignore_errors=True)


def read_log(path: Path) -> list[dict[str, Any]]:
    """The records of a JSONL log (none when it does not exist)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_summary(run_dir: Path, epoch: int, global_step: int, phases: Sequence[str]) -> dict[str, Any]:
    """``summary.json``: the mean losses of each phase in the last epoch and the last
    evaluation, from the run's logs; returned as well."""
    import numpy as np

    from ..io import atomic_write

    run_dir = Path(run_dir)
    summary: dict[str, Any] = {"run": str(run_dir), "epochs": epoch, "global_steps": global_step}
    records = read_log(run_dir / TRAIN_LOG)
    for phase in phases:
        rows = [r for r in records if r["phase"] == phase and r["epoch"] == epoch]
        if rows:
            keys = [k for k in rows[0] if k.startswith("loss")]
            summary[f"last_epoch_{phase}"] = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    evaluations = read_log(run_dir / EVAL_LOG)
    if evaluations:
        summary["eval"] = evaluations[-1]
    with atomic_write(run_dir / SUMMARY, "w") as fh:
        json.dump(summary, fh, indent=2)
    return summary
