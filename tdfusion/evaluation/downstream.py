"""The downstream protocol: train a task network on one image source, then score it.

The regime comes from :mod:`.downstream_settings`, the data from :mod:`.source_folder`;
scoring is the evaluation loop every evaluation shares (:mod:`.loop`).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..precision import autocast, grad_scaler
from ..progress import progress_bar
from ..reproducibility import seed_everything
from .downstream_settings import DownstreamSettings, input_hw, lr_factor
from .loop import eval_views, evaluate_views
from .source_folder import SourceFolderDataset, TrainViews

__all__ = ["evaluate_downstream", "make_downstream_optimizer", "train_downstream"]


def _backbone(net: nn.Module) -> list[nn.Parameter]:
    if hasattr(net, "segformer"):
        return list(net.segformer.parameters())
    layers = getattr(net, "model", None)
    if isinstance(layers, nn.Sequential) and len(layers) > 10:  # YOLOv8: layers 0-9 are the backbone
        return [p for m in layers[:10] for p in m.parameters()]
    return []


def make_downstream_optimizer(net: nn.Module, s: DownstreamSettings) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for module in net.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            norm = isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm))
            (no_decay if s.no_decay_norm_bias and (norm or name == "bias") else decay).append(p)
    groups = [{"params": decay, "weight_decay": s.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    if s.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=s.lr, momentum=s.momentum, nesterov=True)
    cls = torch.optim.AdamW if s.optimizer == "adamw" else torch.optim.Adam
    return cls(groups, lr=s.lr, betas=(s.momentum, 0.999))


def amp_precision(s: DownstreamSettings, device: torch.device) -> str:
    """``downstream.amp`` as a :mod:`tdfusion.precision` name: bf16 where the device has
    it (no gradient scaler needed), fp16 on older GPUs, fp32 when AMP is off."""
    if not (s.amp == "on" or (s.amp == "auto" and device.type == "cuda")):
        return "fp32"
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return "fp16"
    return "bf16"


def train_downstream(task, data: SourceFolderDataset, s: DownstreamSettings, *, seed: int, device,
                     show_progress: bool = True, label: str = "", max_iterations: int | None = None) -> nn.Module:
    """Train a fresh (or ``s.weights``-initialised) task network on one source's training split.

    Returns the network to evaluate (the EMA copy when ``s.ema`` is set). ``max_iterations``
    stops early (timing a few iterations: ``compare``'s estimate).
    """
    device = torch.device(device)
    seed_everything(seed)
    net = task.build_network().to(device)
    frozen = _backbone(net) if (s.freeze_epochs > 0 and s.weights) else []
    opt = make_downstream_optimizer(net, s)
    base_lrs = [g["lr"] for g in opt.param_groups]
    precision = amp_precision(s, device)
    scaler = grad_scaler(precision, device)
    ema = None
    if s.ema:
        from ultralytics.utils.torch_utils import ModelEMA

        ema = ModelEMA(net, decay=float(s.ema))
    views = TrainViews(data, s, seed)
    per_epoch = len(views)
    iteration = 0
    net.train()
    with progress_bar(s.epochs * per_epoch, f"training on {label}".strip(), enabled=show_progress) as advance:
        # the module's own tensors, updated in place by the optimiser (built once, not per step)
        params = {**dict(net.named_parameters()), **dict(net.named_buffers())}
        for epoch in range(s.epochs):
            if max_iterations is not None and iteration >= max_iterations:
                break
            for p in frozen:
                p.requires_grad_(epoch >= s.freeze_epochs)
            for batch in views.epoch(epoch, device):
                factor = lr_factor(iteration, per_epoch, s)
                for g, lr in zip(opt.param_groups, base_lrs):
                    g["lr"] = lr * factor
                with autocast(precision, device):
                    loss = task.loss(net, params, batch["a"], batch)
                opt.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.unscale_(opt)
                else:
                    loss.backward()
                if s.clip_grad:
                    nn.utils.clip_grad_norm_(net.parameters(), s.clip_grad)
                if scaler is not None:
                    scaler.step(opt)
                    scaler.update()
                else:
                    opt.step()
                if ema is not None:
                    ema.update(net)
                iteration += 1
                advance(1, loss=float(loss.detach()))
                if max_iterations is not None and iteration >= max_iterations:
                    break
    final = ema.ema if ema is not None else net
    final.eval()
    return final


def evaluate_downstream(task, net: nn.Module, data: SourceFolderDataset, s: DownstreamSettings, device,
                        limit: int | None = None) -> dict[str, Any]:
    """Task metrics of ``net`` on a source's test split: each whole image resized to the
    input size; targets at native resolution (evaluators bring predictions to it)."""
    multiple = 32 if data.target_kind == "boxes" else 1
    return evaluate_views(task, net, eval_views(data, lambda sample: input_hw(s.input_size, sample.a.shape, multiple),
                                                device, limit))
