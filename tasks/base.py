"""The task-head protocol: what a downstream task gives the meta-learning engine.

A task owns its network T, its loss L_t and its evaluation. It knows nothing about
meta-learning: the engine decides which parameters the loss is evaluated with (the
module's own, or a one-step-updated copy), and passes them in. That is why
:meth:`TaskHead.loss` takes a parameter dict and must run the network through
:func:`torch.func.functional_call` (see :meth:`TaskHead.forward`).

Batches are dicts (built by :mod:`tdfusion.data`):

* ``"a"``, ``"b"``: ``(B, 1, H, W)`` source luminance in [0, 1] at the task input size;
* ``"mask"`` (tasks with ``target_kind == "mask"``): ``(B, H, W)`` int64 class ids;
* ``"boxes"`` (``target_kind == "boxes"``): ``(N, 6)`` float rows
  ``(image_index, class, cx, cy, w, h)``, centre/size normalised to [0, 1];
* ``"stems"``: list of ``B`` sample names.

The fused image handed to a task is ``(B, 1, H, W)`` in [0, 1]; :meth:`adapt_input`
turns it into what the network expects (channels, normalisation).
"""
from __future__ import annotations

from typing import Any, ClassVar, Mapping

import torch
from torch import nn
from torch.func import functional_call

from tdfusion.errors import TDFusionError

__all__ = ["Evaluator", "TaskHead"]


class Evaluator:
    """Streaming evaluation: ``update`` per batch, ``compute`` once at the end."""

    def update(self, predictions: Any, batch: Mapping[str, Any]) -> None:
        raise NotImplementedError

    def compute(self) -> dict[str, Any]:
        raise NotImplementedError


class TaskHead:
    """Base class of a downstream task. Subclasses set ``name`` and ``target_kind``.

    Args:
        config: the task section of the run config (``task:`` in YAML); unknown keys
            should be rejected by :meth:`__init__` of the subclass.
    """

    name: ClassVar[str] = ""
    #: "none" (targets are the sources themselves), "mask" or "boxes".
    target_kind: ClassVar[str] = "none"
    #: Config keys and their defaults; the run config may override any of them.
    defaults: ClassVar[dict[str, Any]] = {}
    #: Keys every task accepts (``task:`` of configs/base.yaml). ``trust_weights``: a task
    #: that can read pickled checkpoints (det: ultralytics') unpickles them only when true.
    common: ClassVar[dict[str, Any]] = {"trust_weights": False}
    #: Whether :meth:`build_network` honours ``trust_weights`` when it reads ``weights``
    #: (the built-in det, seg and recon do). A task that does not refuses the option rather
    #: than ignore it.
    honours_trust_weights: ClassVar[bool] = False

    def __init__(self, config: Mapping[str, Any] | None = None):
        config = dict(config or {})
        known = {**self.common, **self.defaults}
        unknown = sorted(set(config) - set(known))
        if unknown:
            raise ValueError(f"unknown {self.name} task option(s): {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(known))}")
        self.config = {**known, **config}
        if self.config.get("trust_weights") and not self.honours_trust_weights:
            raise ValueError("trust_weights (--trust-weights) does nothing here: this task reads no pickled weights "
                             "files; only the det, seg and recon tasks' weights (--task-weights) use it")

    @classmethod
    def for_dataset(cls, config: Mapping[str, Any] | None, dataset: Any = None) -> "TaskHead":
        """The task configured for ``dataset``: what the config leaves open and the dataset
        knows is taken from it (``num_classes`` and ``class_names`` from ``dataset.classes``,
        ``ignore_index`` from ``dataset.ignore_index``), for the keys this task has.

        A task with other dataset-given settings overrides this. Raises
        :class:`~tdfusion.errors.TDFusionError` when the config contradicts the dataset's
        label convention, ``ValueError`` for an unknown option.
        """
        cfg = dict(config or {})
        classes = list(getattr(dataset, "classes", []) or [])
        if "num_classes" in cls.defaults and cfg.get("num_classes") is None and classes:
            cfg["num_classes"] = len(classes)
        if "class_names" in cls.defaults and cfg.get("class_names") is None and classes:
            cfg["class_names"] = classes
        # The dataset's label convention is the one the labels were checked against: a task
        # that ignored another value would train on (or score) pixels the dataset marks void.
        if "ignore_index" in cls.defaults and hasattr(dataset, "ignore_index"):
            if "ignore_index" not in cfg:
                cfg["ignore_index"] = dataset.ignore_index
            elif cfg["ignore_index"] != dataset.ignore_index:
                raise TDFusionError(
                    f"task.ignore_index {cfg['ignore_index']} differs from the dataset's ignore_index "
                    f"{dataset.ignore_index} ({getattr(dataset, 'name', type(dataset).__name__)}): set one value "
                    f"for both, or leave task.ignore_index out to take the dataset's")
        return cls(cfg)

    # -- network ----------------------------------------------------------------
    def build_network(self) -> nn.Module:
        """A freshly initialised task network T."""
        raise NotImplementedError

    def adapt_input(self, fused: torch.Tensor) -> torch.Tensor:
        """``(B, 1, H, W)`` fused image -> the network's input. Default: unchanged."""
        return fused

    def forward(self, net: nn.Module, params: Mapping[str, torch.Tensor], fused: torch.Tensor) -> Any:
        """Run ``net`` with the given parameters (and buffers) on a fused batch."""
        return functional_call(net, dict(params), (self.adapt_input(fused),))

    # -- learning ---------------------------------------------------------------
    def loss(self, net: nn.Module, params: Mapping[str, torch.Tensor], fused: torch.Tensor,
             batch: Mapping[str, Any]) -> torch.Tensor:
        """Scalar task loss L_t of ``net`` under ``params`` on ``fused``.

        Must be differentiable with respect to both ``params`` and ``fused``: the outer
        update backpropagates through ``fused`` into the loss generator.
        """
        raise NotImplementedError

    # -- evaluation -------------------------------------------------------------
    @torch.no_grad()
    def predict(self, net: nn.Module, fused: torch.Tensor) -> Any:
        """Predictions for a fused batch in the form :meth:`evaluator` consumes."""
        raise NotImplementedError

    def evaluator(self) -> Evaluator:
        raise NotImplementedError

    def fitness(self, metrics: Mapping[str, Any]) -> float | None:
        """One number, higher is better, from :meth:`evaluator`'s metrics: what ``best.pt``
        is chosen by. ``None`` (the default, or a metric missing): no ``best.pt``."""
        return None
