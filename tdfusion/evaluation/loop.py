"""The one evaluation loop: a task network's metrics over a stream of views.

The training diagnostic (:class:`tdfusion.training.validator.Validator`), ``tdfusion eval``
(:mod:`.sources`) and the downstream protocol of ``tdfusion compare`` (:mod:`.downstream`)
differ only in where the views come from and which image the task network sees; the loop
that feeds the task's evaluator is this one.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
from torch import nn

from ..data import collate, eval_view, to_device
from ..data.base import PairDataset, Sample
from ..progress import progress_bar

__all__ = ["eval_mode", "eval_views", "evaluate_views"]


@contextmanager
def eval_mode(*nets: nn.Module) -> Iterator[None]:
    """``nets`` in eval mode inside the block, each back in its former mode after it."""
    modes = [net.training for net in nets]
    for net in nets:
        net.eval()
    try:
        yield
    finally:
        for net, mode in zip(nets, modes):
            net.train(mode)


def eval_views(dataset: PairDataset, size: Sequence[int] | None | Callable[[Sample], Sequence[int] | None],
               device: torch.device | str, limit: int | None = None) -> Iterator[dict[str, Any]]:
    """One-sample batches of ``dataset`` (the first ``limit``), each whole image resized to
    ``size`` (or to ``size(sample)``; None keeps the native size), targets at native
    resolution: ``{"a", "b": (1, 1, H, W), "stems", <target keys>}`` on ``device``."""
    n = len(dataset) if limit is None else min(limit, len(dataset))
    for i in range(n):
        sample = dataset[i]
        hw = size(sample) if callable(size) else size
        yield to_device(collate([eval_view(sample, hw)]), device)


@torch.no_grad()
def evaluate_views(task, task_net: nn.Module, views: Iterable[dict[str, Any]],
                   image: Callable[[dict[str, Any]], torch.Tensor] | None = None, *,
                   total: int | None = None, label: str | None = None) -> dict[str, Any]:
    """The task's metrics of ``task_net`` over ``views``.

    ``image(view)`` is what the network looks at, ``(B, 1, H, W)`` in [0, 1] (default:
    ``view["a"]``); the task's evaluator compares its predictions with the view's targets.
    The network is in eval mode during the loop and back in its former mode after it.
    ``label`` shows a progress bar of ``total`` steps.
    """
    evaluator = task.evaluator()
    with eval_mode(task_net), progress_bar(total or 0, label or "",
                                          enabled=label is not None and (total or 0) > 1) as advance:
        for view in views:
            evaluator.update(task.predict(task_net, view["a"] if image is None else image(view)), view)
            advance()
    return evaluator.compute()
