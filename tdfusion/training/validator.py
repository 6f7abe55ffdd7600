"""The training diagnostic: the task network's metrics on the fused images of the test split.

The fused images come from the fusion network at the task input size, as during training;
the loop is the one every evaluation shares (:func:`tdfusion.evaluation.loop.evaluate_views`).
Because the task network was trained jointly with this fusion network, the figure favours
it: it tracks a run, it does not compare methods (``tdfusion compare`` does).
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..data.base import PairDataset
from ..evaluation.loop import eval_views, evaluate_views
from .health import HealthStats

__all__ = ["BestFitness", "Validator"]


class Validator:
    """``validator(fusion, task_net)`` -> the task's metrics over the first ``limit`` test pairs."""

    def __init__(self, task, dataset: PairDataset, task_size, device: torch.device, limit: int | None = None):
        self.task, self.dataset, self.task_size, self.device, self.limit = task, dataset, task_size, device, limit

    @torch.no_grad()
    def __call__(self, fusion: nn.Module, task_net: nn.Module, lossgen: nn.Module | None = None,
                 health: HealthStats | None = None) -> dict[str, Any]:
        """The task metrics; ``health`` (if given) also gathers F's output and, with
        ``lossgen``, G's weights on the same views (:mod:`.health`)."""
        nets = [fusion] + ([lossgen] if lossgen is not None and health is not None else [])
        modes = [net.training for net in nets]
        for net in nets:
            net.eval()

        def fused(view: dict[str, Any]) -> torch.Tensor:
            out = fusion(view["a"], view["b"])
            if health is not None:
                health.add_fused(out)
                if lossgen is not None:
                    health.add_weights(lossgen(view["a"], view["b"]))
            return out

        try:
            views = eval_views(self.dataset, self.task_size, self.device, self.limit)
            return evaluate_views(self.task, task_net, views, fused)
        finally:
            for net, mode in zip(nets, modes):
                net.train(mode)


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
