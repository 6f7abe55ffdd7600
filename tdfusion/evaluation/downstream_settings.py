"""The regime of a downstream training: the ``downstream:`` config section and its presets.

TDFusion (CVPR 2025, Sec. 4.3) compares fusion methods by "retrain[ing] the task networks
for each fusion method over 300 epochs"; its README names the downstream code used
(bubbliiiing/segformer-pytorch and bubbliiiing/yolov8-pytorch) and says nothing in it was
modified "except for hyperparameters such as epoch and batch size". The ``paper`` preset
below takes that code's defaults (each value and its source: ``docs/fidelity.md``); the
``fast`` preset is a CPU-sized schedule that still learns the object classes of small
datasets. The regime is separate from the fusion phase's ``optim.*``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any, Mapping, Sequence

from ..errors import TDFusionError

__all__ = ["DownstreamSettings", "PRESETS", "downstream_settings", "input_hw", "lr_factor", "with_overrides"]


@dataclass(frozen=True)
class DownstreamSettings:
    """The regime of one downstream training (keys of the ``downstream:`` config section)."""

    epochs: int
    batch_size: int
    optimizer: str            # adamw | sgd | adam
    lr: float
    min_lr_ratio: float       # the schedule ends at lr * min_lr_ratio
    weight_decay: float
    momentum: float           # SGD momentum (Nesterov) / Adam beta1
    schedule: str             # cosine | poly | step | none (per iteration, after the warm-up)
    warmup_epochs: float
    hold_epochs: float        # last epochs held at the minimum lr (bubbliiiing's cosine holds 15)
    input_size: Any           # None (native size) | int (long side, aspect kept) | [H, W]
    scale: tuple[float, float]  # seg: random rescale range; det: ultralytics scale gain (lo only: 1 - gain)
    aspect_jitter: float      # seg: aspect-ratio jitter
    hflip: float              # probability
    mosaic: float             # det: probability (ultralytics Mosaic)
    mixup: float              # det: probability (ultralytics MixUp)
    close_mosaic: float       # det: last fraction of the epochs without mosaic/mixup
    ema: float | None         # det: EMA decay (ultralytics ModelEMA), None: no EMA
    clip_grad: float | None   # max gradient norm, None: no clipping
    no_decay_norm_bias: bool  # no weight decay on norm weights and biases (YOLO convention)
    freeze_epochs: int        # epochs with the backbone frozen; only with pretrained weights
    amp: str                  # auto (CUDA only) | on | off
    class_weights: Any        # seg: None | "balanced" (median frequency, from the training masks) | K floats
                              # ("none" in a config: no weighting, whatever the preset)
    variant: str | None       # task network variant (None: the task config's)
    weights: str | None       # local pretrained weights of the task network
    workers: int              # data-loader processes


#: Values of each preset, per task (``"*"``: every task). Sources: docs/fidelity.md.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "paper": {
        "*": dict(epochs=300, batch_size=8, optimizer="adamw", lr=5e-5, min_lr_ratio=0.01, weight_decay=1e-2,
                  momentum=0.9, schedule="cosine", warmup_epochs=3, hold_epochs=15, input_size=512,
                  scale=(0.5, 2.0), aspect_jitter=0.3, hflip=0.5, mosaic=0.0, mixup=0.0, close_mosaic=0.0,
                  ema=None, clip_grad=None, no_decay_norm_bias=False, freeze_epochs=50, amp="auto",
                  class_weights=None, variant=None, weights=None, workers=0),
        "det": dict(batch_size=16, optimizer="sgd", lr=2.5e-3, weight_decay=5e-4, momentum=0.937, input_size=640,
                    scale=(0.25, 1.75), mosaic=0.5, mixup=0.25, close_mosaic=0.3, ema=0.9999, clip_grad=10.0,
                    no_decay_norm_bias=True, variant="s"),
    },
    "fast": {
        "*": dict(epochs=40, batch_size=4, optimizer="adamw", lr=1e-3, min_lr_ratio=0.01, weight_decay=1e-2,
                  momentum=0.9, schedule="cosine", warmup_epochs=1, hold_epochs=0, input_size=None,
                  scale=(0.75, 1.5), aspect_jitter=0.1, hflip=0.5, mosaic=0.0, mixup=0.0, close_mosaic=0.0,
                  ema=None, clip_grad=10.0, no_decay_norm_bias=False, freeze_epochs=0, amp="auto",
                  class_weights=None, variant=None, weights=None, workers=0),
        "det": dict(lr=2e-3, weight_decay=5e-4, scale=(0.5, 1.5), mosaic=1.0, mixup=0.0, close_mosaic=0.2,
                    ema=0.999, no_decay_norm_bias=True),
    },
}
_CHOICES = {"optimizer": ("adamw", "sgd", "adam"), "schedule": ("cosine", "poly", "step", "none"),
            "amp": ("auto", "on", "off")}


def downstream_settings(section: Mapping[str, Any], task_name: str) -> DownstreamSettings:
    """Resolve the ``downstream:`` config section: the preset's values for ``task_name``,
    overridden by every key that is not null. Raises :class:`TDFusionError` on bad values."""
    section = dict(section or {})
    preset = section.pop("preset", "paper")
    if preset not in PRESETS:
        raise TDFusionError(f"config key 'downstream.preset': {preset!r} is not one of {', '.join(PRESETS)}")
    values = {**PRESETS[preset]["*"], **PRESETS[preset].get(task_name, {})}
    names = {f.name for f in fields(DownstreamSettings)}
    unknown = sorted(set(section) - names)
    if unknown:
        raise TDFusionError(f"unknown downstream key(s) {', '.join(unknown)}; known: preset, {', '.join(sorted(names))}")
    values.update({k: v for k, v in section.items() if v is not None})
    for key, choices in _CHOICES.items():
        if values[key] not in choices:
            raise TDFusionError(f"config key 'downstream.{key}': {values[key]!r} is not one of {', '.join(choices)}")
    for key in ("epochs", "batch_size"):
        if isinstance(values[key], bool) or not isinstance(values[key], int) or values[key] < 1:
            raise TDFusionError(f"config key 'downstream.{key}': expected a whole number >= 1, got {values[key]!r}")
    scale = values["scale"]
    if not (isinstance(scale, (list, tuple)) and len(scale) == 2 and 0 < scale[0] <= scale[1]):
        raise TDFusionError(f"config key 'downstream.scale': expected [low, high] with 0 < low <= high, got {scale!r}")
    values["scale"] = (float(scale[0]), float(scale[1]))
    size = values["input_size"]
    ok = size is None or (isinstance(size, int) and not isinstance(size, bool) and size >= 32) or (
        isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(v, int) and v >= 32 for v in size))
    if not ok:
        raise TDFusionError(f"config key 'downstream.input_size': expected null (native), a long side >= 32 or "
                            f"[height, width], got {size!r}")
    if isinstance(size, (list, tuple)):
        values["input_size"] = tuple(size)
    cw = values["class_weights"]
    if cw == "none":  # null means "the preset's value"; "none" switches weighting off
        cw = values["class_weights"] = None
    if not (cw is None or cw == "balanced" or (isinstance(cw, (list, tuple)) and all(
            isinstance(v, (int, float)) and v >= 0 for v in cw))):
        raise TDFusionError(f"config key 'downstream.class_weights': expected null, balanced or a list of "
                            f"weights >= 0, got {cw!r}")
    return DownstreamSettings(**values)


def input_hw(size_setting: Any, native_hw: Sequence[int], multiple: int = 1) -> tuple[int, int]:
    """The ``(H, W)`` a task network sees for an image of ``native_hw``: the native size,
    a long side (aspect kept), or an explicit size; rounded to ``multiple``."""
    h, w = int(native_hw[0]), int(native_hw[1])
    if size_setting is None:
        out = (h, w)
    elif isinstance(size_setting, int):
        s = size_setting / max(h, w)
        out = (max(1, round(h * s)), max(1, round(w * s)))
    else:
        out = (int(size_setting[0]), int(size_setting[1]))
    return tuple(max(multiple, int(round(v / multiple)) * multiple) for v in out)  # type: ignore[return-value]


def lr_factor(iteration: int, iters_per_epoch: int, s: DownstreamSettings) -> float:
    """Learning-rate multiplier at ``iteration`` (0-based): a quadratic warm-up from 0.1
    (bubbliiiing's warm cosine), then the schedule down to ``min_lr_ratio``, held for the
    last ``hold_epochs``."""
    total = s.epochs * iters_per_epoch
    warm = min(int(s.warmup_epochs * iters_per_epoch), total)
    hold = min(int(s.hold_epochs * iters_per_epoch), max(0, total - warm))
    lo = s.min_lr_ratio
    if iteration < warm:
        return 0.1 + 0.9 * ((iteration + 1) / warm) ** 2
    span = max(1, total - warm - hold)
    t = min(1.0, (iteration - warm) / span)
    if s.schedule == "cosine":
        return lo + 0.5 * (1 - lo) * (1 + math.cos(math.pi * t))
    if s.schedule == "poly":
        return lo + (1 - lo) * (1 - t) ** 0.9
    if s.schedule == "step":  # x0.1 after each third
        return max(lo, 0.1 ** min(2, int(3 * t)))
    return 1.0


def with_overrides(s: DownstreamSettings, **changes: Any) -> DownstreamSettings:
    """A copy of ``s`` with some keys changed (e.g. ``epochs`` from ``--epochs``)."""
    return replace(s, **{k: v for k, v in changes.items() if v is not None})
