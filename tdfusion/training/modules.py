"""What a run config builds before training: the dataset splits, the task, the
fusion-loss settings and the networks F, G and T. The trainer and ``tdfusion bench`` build them with the same function."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..data import build_split
from ..data.base import PairDataset
from ..errors import TDFusionError
from ..meta import objectives
from ..meta.losses import FUSION_LOSSES
from ..nets import create_model
from ..tasks import build_task

__all__ = ["META_OBJECTIVES", "Modules", "build_modules", "build_splits", "meta_gradient_function"]

#: ``meta.objective`` -> what G learns from (``meta.gradient`` picks how one_step is computed).
META_OBJECTIVES = ("one_step", "target")


def meta_gradient_function(meta_cfg: dict):
    """The meta-gradient of G the ``meta:`` section asks for: Eq. 11's one-step objective in
    first-order (``jvp``) or second-order form, or the target-space objective; all take the
    same arguments (:func:`tdfusion.meta.jvp.meta_gradient_jvp`)."""
    from ..meta.jvp import meta_gradient_jvp
    from ..meta.target import meta_gradient_target

    if meta_cfg["objective"] == "target":
        return meta_gradient_target
    return meta_gradient_jvp if meta_cfg["gradient"] == "jvp" else objectives.meta_gradient_second_order


@dataclass
class Modules:
    """The task head, the fusion-loss settings, and the networks F (fusion), G (loss
    generator) and T (task network)."""

    task: Any
    settings: objectives.LossSettings
    fusion: torch.nn.Module
    lossgen: torch.nn.Module
    task_net: torch.nn.Module


def build_modules(cfg: dict, dataset: PairDataset | None, device: torch.device | str) -> Modules:
    """The modules of a run config on ``device``, the task configured for ``dataset``.
    Networks are created in the order F, G, T (the order fixes what a seed gives each)."""
    task = build_task(cfg["task"], dataset)
    if dataset is not None and task.target_kind != "none" and dataset.target_kind != task.target_kind:
        raise TDFusionError(f"dataset {cfg['dataset']['name']!r} provides {dataset.target_kind!r} targets "
                            f"but task {task.name!r} needs {task.target_kind!r}")
    lc = cfg["loss"]
    if lc["form"] not in FUSION_LOSSES:
        raise TDFusionError(f"loss.form {lc['form']!r}: expected one of {', '.join(FUSION_LOSSES)}")
    settings = objectives.LossSettings(lc["form"], float(lc["alpha"]), lc["intensity"], bool(lc["fixed_weights"]),
                                       lc["gradient_target"])
    fusion = _build_net(cfg["fusion"], device)
    lossgen = _build_net({**cfg["lossgen"], "pairs": FUSION_LOSSES[lc["form"]][1]}, device)
    try:
        task_net = task.build_network().to(device)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TDFusionError(f"task {task.name!r}: cannot build its network ({exc})") from None
    return Modules(task, settings, fusion, lossgen, task_net)


def _build_net(net_cfg: dict, device: torch.device | str) -> torch.nn.Module:
    net_cfg = dict(net_cfg)
    arch = net_cfg.pop("arch")
    try:
        return create_model(arch, **net_cfg).to(device)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TDFusionError(f"cannot build {arch!r}: {exc}") from None


def build_splits(cfg: dict) -> tuple[PairDataset, PairDataset | None]:
    """The training split of the run's dataset (not empty) and its test split (None when
    the config names none or the dataset has none: training works, evaluation is skipped)."""
    ds_cfg = cfg["dataset"]
    train_set = build_split(cfg, "train_split")
    if len(train_set) == 0:
        raise TDFusionError(f"dataset {ds_cfg['name']!r} ({ds_cfg['root']}): the {ds_cfg['train_split']} split is empty")
    if not ds_cfg.get("test_split"):
        return train_set, None
    try:
        test_set = build_split(cfg, "test_split")
    except TDFusionError:
        return train_set, None
    return train_set, (test_set if len(test_set) else None)
