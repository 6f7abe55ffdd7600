"""The training diagnostic: the task network's metrics on the fused images of the test split.

The fused images come from the fusion network at the task input size, as during training;
the loop is the one every evaluation shares (:func:`tdfusion.evaluation.loop.evaluate_views`).
Because the task network was trained jointly with this fusion network, the figure favours
it: it tracks a run, it does not compare methods (``tdfusion compare`` does).
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import nn

from ..data.base import PairDataset
from ..evaluation.loop import eval_mode, eval_views, evaluate_views

__all__ = ["BestFitness", "Validator"]


class Validator:
    """``validator(fusion, task_net)`` -> the task's metrics over the first ``limit`` test pairs."""

    def __init__(self, task, dataset: PairDataset, task_size, device: torch.device, limit: int | None = None):
        self.task, self.dataset, self.task_size, self.device, self.limit = task, dataset, task_size, device, limit

    @torch.no_grad()
    def __call__(self, fusion: nn.Module, task_net: nn.Module,
                 observe: Callable[[dict[str, Any], torch.Tensor], None] | None = None) -> dict[str, Any]:
        """The task metrics; ``observe(view, fused)`` also sees each fused image (the run's
        health, :class:`~tdfusion.training.health.HealthStats`)."""
        def fused(view: dict[str, Any]) -> torch.Tensor:
            out = fusion(view["a"], view["b"])
            if observe is not None:
                observe(view, out)
            return out

        with eval_mode(fusion):
            views = eval_views(self.dataset, self.task_size, self.device, self.limit)
            return evaluate_views(self.task, task_net, views, fused)


class BestFitness:
    """Which epoch's checkpoint is ``best.pt``: the best task fitness so far (ultralytics'
    rule), as ``{"fitness", "epoch"}``; it is stored in checkpoints, so a resumed run
    compares against the best of the epochs before it."""

    def __init__(self, task, record: dict[str, Any] | None = None):
        self.task, self.record = task, record

    def update(self, metrics: dict[str, Any], epoch: int) -> bool:
        """Record ``epoch`` when its metrics improve the fitness; True if they did."""
        fitness = self.task.fitness(metrics)
        if fitness is None or not math.isfinite(fitness):
            return False
        if self.record is not None and fitness <= self.record["fitness"]:
            return False
        self.record = {"fitness": float(fitness), "epoch": epoch}
        return True
