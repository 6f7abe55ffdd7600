"""A task with its own kind of target, in one file: fuse for local-contrast estimation.

The task network regresses a dense map, the local contrast (standard deviation over a
7x7 window) of the brighter source, from the fused image; a fusion loss learned for it
keeps the structure of whichever source has it. What a plug-in needs, all here:

* a target kind: ``DenseMap("contrast")`` makes crops, resizes, flips, batching and the
  source swap carry ``target["contrast"]`` along with the images;
* a dataset giving that target: the synthetic scenes with the map computed per sample;
* the task head: network, loss, prediction, evaluator.

Use it with ``imports: [contrast_task]`` in a config (``examples/contrast_task.yaml``)
with this folder on ``PYTHONPATH``, or from an installed package's entry points
(``[project.entry-points."tdfusion.tasks"] contrast = "mypkg.contrast_task"``).
"""
from __future__ import annotations

from typing import Any, Mapping

import cv2
import numpy as np
import torch
from torch import nn

from tdfusion.data import build_dataset, register_dataset
from tdfusion.data.base import PairDataset, Sample
from tdfusion.data.targets import DenseMap, register_target_kind
from tdfusion.tasks import Evaluator, TaskHead, register_task

register_target_kind(DenseMap("contrast"))


def local_contrast(a: np.ndarray, b: np.ndarray, window: int = 7) -> np.ndarray:
    """``(H, W) x2 -> (H, W)`` float32: local standard deviation of ``max(a, b)``."""
    x = np.maximum(a, b).astype(np.float32)
    mean = cv2.blur(x, (window, window), borderType=cv2.BORDER_REFLECT)
    sq = cv2.blur(x * x, (window, window), borderType=cv2.BORDER_REFLECT)
    return np.sqrt(np.maximum(sq - mean * mean, 0.0))


class ContrastScenes(PairDataset):
    """The synthetic scenes with ``target["contrast"]``."""

    target_kind = "contrast"

    def __init__(self, split: str, length: int = 16, size: tuple[int, int] = (64, 64), seed: int = 0):
        super().__init__()
        self.scenes = build_dataset("synthetic", None, split, length=length, size=tuple(size), seed=seed,
                                    target="none")

    def __len__(self) -> int:
        return len(self.scenes)

    @property
    def stems(self) -> list[str]:
        return self.scenes.stems

    def load(self, index: int) -> Sample:
        s = self.scenes[index]
        return Sample(s.a, s.b, s.stem, {"contrast": local_contrast(s.a, s.b)})


@register_dataset("contrast_scenes", serves="contrast")
def contrast_scenes(root: str | None, split: str, length: int = 16, size: tuple[int, int] = (64, 64),
                    seed: int = 0) -> ContrastScenes:
    return ContrastScenes(split, length, size, seed)


class _MeanAbsoluteError(Evaluator):
    def __init__(self) -> None:
        self.total, self.count = 0.0, 0

    def update(self, predictions: torch.Tensor, batch: Mapping[str, Any]) -> None:
        target = batch["contrast"].to(predictions)
        if predictions.shape[-2:] != target.shape[-2:]:  # evaluation targets stay at native size
            predictions = nn.functional.interpolate(predictions, size=target.shape[-2:], mode="bilinear")
        self.total += float((predictions[:, 0] - target).abs().mean()) * len(target)
        self.count += len(target)

    def compute(self) -> dict[str, Any]:
        return {"mae": self.total / max(self.count, 1)}


@register_task
class ContrastTask(TaskHead):
    name = "contrast"
    target_kind = "contrast"
    defaults = {"width": 8, "weights": None}

    def build_network(self) -> nn.Module:
        w = self.config["width"]
        return nn.Sequential(nn.Conv2d(1, w, 3, padding=1), nn.ReLU(), nn.Conv2d(w, 1, 3, padding=1))

    def loss(self, net: nn.Module, params: Mapping[str, torch.Tensor], fused: torch.Tensor,
             batch: Mapping[str, Any]) -> torch.Tensor:
        prediction = self.forward(net, params, fused)[:, 0]
        return ((prediction - batch["contrast"].to(prediction)) ** 2).mean()

    @torch.no_grad()
    def predict(self, net: nn.Module, fused: torch.Tensor) -> torch.Tensor:
        return net(fused)

    def evaluator(self) -> Evaluator:
        return _MeanAbsoluteError()

    def fitness(self, metrics: Mapping[str, Any]) -> float | None:
        return -metrics["mae"] if "mae" in metrics else None
