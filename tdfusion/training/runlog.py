"""Run logs besides ``train_log.jsonl``: CSV tables and TensorBoard (``run.loggers``).

``run.loggers`` lists the sinks of a training run; ``jsonl`` is always written (resume
and the summary read it), ``csv`` adds ``train_log.csv`` / ``eval_log.csv``, and
``tensorboard`` adds ``tensorboard/`` event files: every step's losses and learning rate,
each evaluation's task metrics, and each epoch's sample sheet as an image. TensorBoard is
an optional dependency (``pip install 'tdfusion[tensorboard]'``); torch's own
``SummaryWriter`` writes the files.
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Iterable

import numpy as np

from . import run_folder
from ..errors import TDFusionError
from ..io import atomic_write

__all__ = ["LOGGERS", "RunLoggers"]

LOGGERS = ("jsonl", "csv", "tensorboard")


def _scalars(record: dict) -> dict[str, float]:
    return {k: float(v) for k, v in record.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))}


class _CsvTable:
    """A CSV file of records whose keys may grow: a new column rewrites the file with the
    wider header (rare: once per new kind of record), so every row stays aligned."""

    def __init__(self, path: Path):
        self.path = path
        self.columns: list[str] = []
        if path.exists():
            with open(path, newline="") as fh:
                self.columns = next(csv.reader(fh), [])

    def rows(self) -> list[dict[str, str]]:
        if not self.path.exists():
            return []
        with open(self.path, newline="") as fh:
            return list(csv.DictReader(fh))

    def rewrite(self, rows: Iterable[dict], columns: list[str]) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        with atomic_write(self.path, "w") as fh:
            fh.write(buf.getvalue())
        self.columns = columns

    def append(self, record: dict) -> None:
        new = [k for k in record if k not in self.columns]
        if new or not self.path.exists():
            self.rewrite(self.rows() + [record], self.columns + new)
            return
        with open(self.path, "a", newline="") as fh:
            csv.DictWriter(fh, fieldnames=self.columns, lineterminator="\n", extrasaction="ignore").writerow(record)

    def keep(self, predicate) -> None:
        """Drop the rows written after a checkpoint (resume)."""
        if self.path.exists():
            self.rewrite([r for r in self.rows() if predicate(r)], self.columns)


class RunLoggers:
    """The optional sinks of one run (rank 0 only). ``names``: ``run.loggers``."""

    def __init__(self, run_dir: str | Path, names: Iterable[str], resume_step: int | None = None):
        names = list(names)
        unknown = [n for n in names if n not in LOGGERS]
        if unknown:
            raise TDFusionError(f"config key 'run.loggers': unknown logger(s) {', '.join(map(repr, unknown))}; "
                                f"choose from {', '.join(LOGGERS)}")
        self.run_dir = Path(run_dir)
        self.csv = ({"train": _CsvTable(self.run_dir / run_folder.TRAIN_LOG_CSV),
                     "eval": _CsvTable(self.run_dir / run_folder.EVAL_LOG_CSV)} if "csv" in names else None)
        self.tb = None
        if "tensorboard" in names:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise TDFusionError("run.loggers: tensorboard needs the tensorboard package "
                                    "(pip install 'tdfusion[tensorboard]')") from None
            # purge_step: on resume, TensorBoard hides the events logged after the checkpoint.
            self.tb = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=resume_step)

    def train(self, record: dict) -> None:
        if self.csv is not None:
            self.csv["train"].append(record)
        if self.tb is not None:
            step = int(record["global_step"])
            for key, value in _scalars(record).items():
                if key.startswith(("loss", "lr", "meta_")):
                    self.tb.add_scalar(f"{record['phase']}/{key}" if key.startswith("loss") else f"train/{key}",
                                       value, step)

    def eval(self, record: dict, global_step: int) -> None:
        if self.csv is not None:
            self.csv["eval"].append({k: v for k, v in record.items() if not isinstance(v, (dict, list))})
        if self.tb is not None:
            for key, value in _scalars(record).items():
                if key != "epoch":
                    self.tb.add_scalar(f"eval/{key}", value, global_step)

    def image(self, tag: str, image: np.ndarray, global_step: int) -> None:
        """``image``: uint8 RGB ``(H, W, 3)``."""
        if self.tb is not None:
            self.tb.add_image(tag, image, global_step, dataformats="HWC")

    def truncate(self, global_step: int, epoch: int) -> None:
        """Drop CSV rows written after the checkpoint a run resumes from."""
        if self.csv is not None:
            self.csv["train"].keep(lambda r: int(float(r.get("global_step") or 0)) <= global_step)
            self.csv["eval"].keep(lambda r: int(float(r.get("epoch") or 0)) <= epoch)

    def flush(self) -> None:
        if self.tb is not None:
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None
