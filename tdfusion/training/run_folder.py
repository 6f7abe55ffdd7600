"""The file names of a run folder, defined once.

The trainer writes them; ``--resume``, ``eval``, ``compare``, the report and the scripts
read them. The layout is described in :mod:`tdfusion.training.trainer`.
"""
from __future__ import annotations

__all__ = ["BEST", "CONFIG", "EVAL_LOG", "EVAL_LOG_CSV", "LAST", "REPORT", "SAMPLES", "SUMMARY", "TRAIN_LOG", "TRAIN_LOG_CSV",
           "epoch_checkpoint", "epoch_sheet", "step_checkpoint"]

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
