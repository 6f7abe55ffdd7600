"""What a trained run's G and F do, as numbers: pure functions over arrays.

Used by ``tdfusion inspect`` (:mod:`.inspect`) and the efficacy harness. Labels are class
maps ``(H, W)`` of integers; where targets are boxes they are painted into such a map
(:func:`tdfusion.data.det_labels.paint_boxes`), with 0 for the pixels outside every box.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

__all__ = ["ClassMeans", "RangeStats", "meta_gradient_scale", "oracle_agreement"]


class ClassMeans:
    """Running per-class means of a per-pixel value (``add`` per image, ``means`` at the end).

    ``n_classes``: label values ``0 .. n_classes - 1`` count; others (an ignore index) do not.
    """

    def __init__(self, n_classes: int):
        self.sums = np.zeros(n_classes, np.float64)
        self.counts = np.zeros(n_classes, np.int64)

    def add(self, values: np.ndarray, labels: np.ndarray) -> None:
        """``values``, ``labels``: ``(H, W)``."""
        k = len(self.sums)
        keep = (labels >= 0) & (labels < k)
        lab = labels[keep].astype(np.int64)
        self.sums += np.bincount(lab, weights=np.asarray(values, np.float64)[keep], minlength=k)
        self.counts += np.bincount(lab, minlength=k)

    def means(self, names: Sequence[str]) -> dict[str, dict[str, float]]:
        """``{name: {"mean", "pixels"}}`` for the classes that occurred."""
        return {name: {"mean": float(self.sums[i] / self.counts[i]), "pixels": int(self.counts[i])}
                for i, name in enumerate(names) if i < len(self.counts) and self.counts[i]}


def oracle_agreement(w_a: np.ndarray, labels: np.ndarray, ir_classes: Iterable[int],
                     n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Where G agrees with the map "first source (infrared) on ``ir_classes``, second
    elsewhere": ``(agree, valid)`` boolean ``(H, W)`` maps, ``agree`` where ``w_a > 1/2``
    exactly on those classes' pixels; ``valid`` where the label is a class."""
    valid = (labels >= 0) & (labels < n_classes)
    oracle = np.isin(labels, list(ir_classes))
    return ((w_a > 0.5) == oracle) & valid, valid


class RangeStats:
    """Running mean, std, min and max of an image stream (F's raw output)."""

    def __init__(self) -> None:
        self.n = 0
        self.total = self.squares = 0.0
        self.lo, self.hi = math.inf, -math.inf

    def add(self, image: np.ndarray) -> None:
        x = np.asarray(image, np.float64)
        self.n += x.size
        self.total += float(x.sum())
        self.squares += float((x * x).sum())
        self.lo, self.hi = min(self.lo, float(x.min())), max(self.hi, float(x.max()))

    def figures(self) -> dict[str, float]:
        mean = self.total / self.n
        return {"mean": mean, "std": math.sqrt(max(self.squares / self.n - mean * mean, 0.0)),
                "min": self.lo, "max": self.hi}


def meta_gradient_scale(run_dir: str | Path) -> list[dict[str, float]] | None:
    """Per epoch, the mean (and smallest and largest) ``meta_grad_scale`` of a run's
    ``train_log.jsonl``: the size of the meta-gradient G learned from before its update
    rule rescaled it. None when the folder has no log or the run had no meta phase."""
    path = Path(run_dir) / "train_log.jsonl"
    if not path.is_file():
        return None
    by_epoch: dict[int, list[float]] = {}
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
        scale = record.get("meta_grad_scale")
        if isinstance(scale, (int, float)):
            by_epoch.setdefault(int(record.get("epoch", 0)), []).append(float(scale))
    if not by_epoch:
        return None
    return [{"epoch": e, "mean": float(np.mean(v)), "min": float(np.min(v)), "max": float(np.max(v)), "steps": len(v)}
            for e, v in sorted(by_epoch.items())]
