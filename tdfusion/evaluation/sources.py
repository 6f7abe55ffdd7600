"""Scoring image sources with one given task network: ``tdfusion eval``, the training diagnostic.

A *source* is what the task network looks at: one of the two inputs (``ir``/``vis``),
the fused image of a tdfusion checkpoint computed on the fly from the task-size inputs
(as during training), or a folder of fused images made by any method. Every source is
brought to the task input size (the whole image resized); targets stay at their native
resolution.

:func:`evaluate_sources` scores several sources with one task network, typically the one
trained jointly with the fusion network. That favours the checkpoint it was trained
with, so it is a diagnostic of a run, not a comparison of methods: that is
:mod:`tdfusion.evaluation.comparison` (``tdfusion compare``), which retrains the task network per
source.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ..data.base import PairDataset, luminance
from ..data.targets import resize_image
from ..errors import TDFusionError
from ..io import list_images
from .loop import eval_views, evaluate_views

__all__ = ["ImageSource", "evaluate_sources", "fused_folder_source", "fused_image_lookup", "fusion_source",
           "input_source"]


@dataclass
class ImageSource:
    """A named way to turn a view ``{"a", "b", ...}`` (task size) into the task's input.

    ``image(view, split)`` returns ``(B, 1, H, W)`` in [0, 1] on the view's device.
    """

    name: str
    image: Callable[[dict[str, Any], str], torch.Tensor]


def input_source(name: str, key: str) -> ImageSource:
    """One of the sources themselves: ``key`` is ``"a"`` or ``"b"``."""
    return ImageSource(name, lambda view, split: view[key])


def fusion_source(name: str, fusion_net: nn.Module) -> ImageSource:
    """The fused image of ``fusion_net``, computed on the task-size sources (as in training)."""

    @torch.no_grad()
    def image(view: dict[str, Any], split: str) -> torch.Tensor:
        return fusion_net(view["a"], view["b"])

    return ImageSource(name, image)


def fused_image_lookup(folder: Path) -> Callable[[str, str], Path]:
    """``lookup(stem, split)``: another method's fused image for a pair, ``<folder>/<split>/<stem>.*``
    or else ``<folder>/<stem>.*`` (each folder listed once, when first needed)."""
    if not folder.is_dir():
        raise TDFusionError(f"{folder}: no such folder of fused images")
    index: dict[str, dict[str, Path]] = {}

    def lookup(stem: str, split: str) -> Path:
        for key in (split, ""):
            if key not in index:
                sub = folder / key if key else folder
                index[key] = list_images(sub) if sub.is_dir() else {}
            if stem in index[key]:
                return index[key][stem]
        raise TDFusionError(f"{folder}: no fused image for {stem!r} (looked in {folder / split} and {folder})")

    return lookup


def fused_folder_source(name: str, folder: str | os.PathLike) -> ImageSource:
    """Fused images of another method: ``<folder>/<split>/<stem>.*`` or ``<folder>/<stem>.*``."""
    lookup = fused_image_lookup(Path(folder))

    def image(view: dict[str, Any], split: str) -> torch.Tensor:
        out = []
        for stem, ref in zip(view["stems"], view["a"]):
            y = luminance(lookup(stem, split))
            h, w = ref.shape[-2:]
            y = resize_image(y, (h, w))
            out.append(torch.from_numpy(np.ascontiguousarray(y))[None])
        return torch.stack(out).to(view["a"].device)

    return ImageSource(name, image)


def evaluate_source(task, task_net: nn.Module, source: ImageSource, dataset: PairDataset, task_size,
                    device, split: str = "test", limit: int | None = None) -> dict[str, Any]:
    """Task metrics of ``task_net`` on one source over ``dataset``."""
    total = len(dataset) if limit is None else min(limit, len(dataset))
    return evaluate_views(task, task_net, eval_views(dataset, task_size, device, limit),
                          lambda view: source.image(view, split), total=total, label=f"evaluating {source.name}")


def evaluate_sources(task, task_net: nn.Module, sources: list[ImageSource], dataset: PairDataset, task_size,
                     device, split: str = "test", limit: int | None = None) -> dict[str, dict[str, Any]]:
    """``{source name: metrics}`` for one task network over several sources."""
    return {s.name: evaluate_source(task, task_net, s, dataset, task_size, device, split, limit) for s in sources}
