"""The downstream protocol: train a task network on one image source, then score it.

TDFusion (CVPR 2025, Sec. 4.3) compares fusion methods by "retrain[ing] the task networks
for each fusion method over 300 epochs"; its README names the downstream code used
(bubbliiiing/segformer-pytorch and bubbliiiing/yolov8-pytorch) and says nothing in it was
modified "except for hyperparameters such as epoch and batch size". The ``paper`` preset
below takes that code's defaults (each value and its source: ``docs/fidelity.md``); the
``fast`` preset is a CPU-sized schedule that still learns the object classes of small
datasets. The regime is the ``downstream:`` section of a config, separate from the
fusion phase's ``optim.*``.

A *source folder* (written by :mod:`tdfusion.comparison`) holds one image source, grey
8-bit luminance at native resolution, with the dataset's targets::

    <folder>/<split>/images/<stem>.png
    <folder>/<split>/masks/<stem>.png      segmentation (class ids; ignore_index kept)
    <folder>/<split>/labels/<stem>.txt     detection (YOLO: class cx cy w h, normalised)
    <folder>/classes.yaml                   {"classes": [...], "ignore_index": ..., "kind": ...}

Augmentation: segmentation uses a random rescale with aspect jitter, a random crop or
pad to the input size, and a horizontal flip (images and masks together, written here:
a dozen lines of OpenCV); detection uses ultralytics' own dataset and transforms
(mosaic, mixup, random affine, flips; HSV off, the images are grey), so the regime is
the one YOLOv8 users know.
"""
from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import cv2
import numpy as np
import torch
import yaml
from torch import nn

from .data.base import PairListDataset, Sample, luminance
from .data.views import collate, eval_view, to_device
from .errors import TDFusionError
from .io import list_images
from .progress import progress_bar

__all__ = ["DownstreamSettings", "PRESETS", "SourceFolderDataset", "downstream_settings", "evaluate_downstream",
           "input_hw", "lr_factor", "seg_train_view", "train_downstream"]


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


def balanced_class_weights(data: "SourceFolderDataset") -> list[float]:
    """Median-frequency balancing (Eigen & Fergus, ICCV 2015): ``w_c = median(f) / f_c``
    with ``f_c`` the fraction of labelled training pixels of class ``c``; classes absent
    from the training masks get 1 (they never occur in the loss).

    Why: on small data the pixel cross-entropy is dominated by the large classes (sky,
    road) and a short schedule never learns the small objects the comparison is about.
    """
    k = len(data.classes)
    counts = np.zeros(k, np.float64)
    for i in range(len(data)):
        m = data[i].target["mask"]
        m = m[(m >= 0) & (m < k)]
        counts += np.bincount(m.ravel(), minlength=k)[:k]
    present = counts > 0
    if not present.any():
        return [1.0] * k
    freq = counts / counts.sum()
    weights = np.ones(k)
    weights[present] = np.median(freq[present]) / freq[present]
    return weights.tolist()


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


# -- source folders ----------------------------------------------------------------------------------
def read_classes(folder: str | os.PathLike) -> dict[str, Any]:
    path = Path(folder) / "classes.yaml"
    try:
        meta = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise TDFusionError(f"{path}: cannot read the source folder's class list ({exc})") from None
    return meta


class SourceFolderDataset(PairListDataset):
    """One split of a source folder: ``Sample(a=image, b=image, target)``, native resolution."""

    def __init__(self, folder: str | os.PathLike, split: str, cache: bool = True):
        from .data.det_labels import parse_yolo_labels
        from .data.seg import read_label

        self.folder = Path(folder)
        meta = read_classes(folder)
        self.classes = list(meta["classes"])
        self.target_kind = meta["kind"]
        self.ignore_index = meta.get("ignore_index")
        images = list_images(self.folder / split / "images")
        super().__init__([(stem, path, path) for stem, path in sorted(images.items())], cache)
        self._read_label, self._parse_boxes = read_label, parse_yolo_labels
        self.split = split

    def load(self, index: int) -> Sample:
        stem, path, _ = self.pairs[index]
        image = luminance(path)
        target: dict[str, np.ndarray] = {}
        if self.target_kind == "mask":
            target["mask"] = self._read_label(self.folder / self.split / "masks" / f"{stem}.png")
        elif self.target_kind == "boxes":
            rows = self._parse_boxes(self.folder / self.split / "labels" / f"{stem}.txt", len(self.classes))
            target["boxes"] = rows
        return Sample(image, image, stem, target)

    def native_hw(self) -> tuple[int, int]:
        return tuple(self[0].a.shape) if len(self) else (0, 0)  # type: ignore[return-value]


# -- segmentation augmentation -------------------------------------------------------------------------
def seg_train_view(sample: Sample, rng: np.random.Generator, out_hw: Sequence[int], s: DownstreamSettings,
                   ignore_index: int) -> dict[str, Any]:
    """Random rescale (``s.scale`` of the size that fits ``out_hw``, aspect jitter), random
    crop or pad to ``out_hw`` (padding: grey image, ``ignore_index`` mask), horizontal flip.

    Returns ``{"a": (1, H, W), "mask": (H, W), "stem"}`` tensors at ``out_hw``.
    """
    oh, ow = int(out_hw[0]), int(out_hw[1])
    img, mask = sample.a, sample.target["mask"]
    h, w = img.shape
    fit = min(oh / h, ow / w)
    scale = fit * rng.uniform(*s.scale)
    jitter = rng.uniform(1 - s.aspect_jitter, 1 + s.aspect_jitter) / rng.uniform(1 - s.aspect_jitter,
                                                                                 1 + s.aspect_jitter)
    nh, nw = max(1, round(h * scale / math.sqrt(jitter))), max(1, round(w * scale * math.sqrt(jitter)))
    img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA if nh * nw < h * w else cv2.INTER_LINEAR)
    mask = cv2.resize(mask.astype(np.int32), (nw, nh), interpolation=cv2.INTER_NEAREST)
    if rng.random() < s.hflip:
        img, mask = img[:, ::-1], mask[:, ::-1]
    canvas = np.full((oh, ow), 0.5, np.float32)
    target = np.full((oh, ow), ignore_index, np.int64)
    # Offsets place the resized image anywhere it fits (a crop where it is larger).
    dy = int(rng.integers(min(0, oh - nh), max(0, oh - nh) + 1))
    dx = int(rng.integers(min(0, ow - nw), max(0, ow - nw) + 1))
    ys, xs = slice(max(0, dy), min(oh, dy + nh)), slice(max(0, dx), min(ow, dx + nw))
    src = (slice(ys.start - dy, ys.stop - dy), slice(xs.start - dx, xs.stop - dx))
    canvas[ys, xs] = img[src]
    target[ys, xs] = mask[src]
    return {"a": torch.from_numpy(canvas)[None], "mask": torch.from_numpy(target), "stem": sample.stem}


class _SegTrainViews(torch.utils.data.Dataset):
    def __init__(self, data: SourceFolderDataset, out_hw, settings: DownstreamSettings, ignore_index: int, seed: int):
        self.data, self.out_hw, self.settings, self.ignore, self.seed = data, out_hw, settings, ignore_index, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> dict[str, Any]:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        return seg_train_view(self.data[index], rng, self.out_hw, self.settings, self.ignore)


# -- detection data (ultralytics) ----------------------------------------------------------------------
def _ultralytics_hyp(s: DownstreamSettings, imgsz: int):
    from ultralytics.cfg import get_cfg
    from ultralytics.utils import DEFAULT_CFG

    # Grey images: HSV jitter would act on a fake colour image; no rotation/shear (the
    # downstream code the paper names has none).
    return get_cfg(DEFAULT_CFG, dict(imgsz=imgsz, mosaic=s.mosaic, mixup=s.mixup, scale=1 - s.scale[0],
                                     fliplr=s.hflip, flipud=0.0, hsv_h=0.0, hsv_s=0.0, hsv_v=0.0, degrees=0.0,
                                     shear=0.0, perspective=0.0, translate=0.1, copy_paste=0.0, cutmix=0.0,
                                     cache=False, rect=False, fraction=1.0, single_cls=False, classes=None,
                                     task="detect", mode="train"))


def _det_dataset(folder: Path, split: str, classes: Sequence[str], s: DownstreamSettings, imgsz: int):
    from ultralytics.data.build import build_yolo_dataset
    from ultralytics.utils import LOGGER

    data = {"names": dict(enumerate(classes)), "nc": len(classes), "channels": 1}
    level = LOGGER.level
    LOGGER.setLevel(40)  # its scan messages would interleave with our progress lines
    try:
        return build_yolo_dataset(_ultralytics_hyp(s, imgsz), str(folder / split / "images"), s.batch_size, data,
                                  mode="train")
    finally:
        LOGGER.setLevel(level)


def _det_batch(batch: Mapping[str, Any], device) -> dict[str, Any]:
    image = batch["img"].to(device).float() / 255.0
    boxes = torch.cat([batch["batch_idx"][:, None], batch["cls"].reshape(-1, 1), batch["bboxes"]], 1)
    return {"a": image, "boxes": boxes.to(device), "stems": list(batch["im_file"])}


# -- training ----------------------------------------------------------------------------------------------
def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)  # ultralytics' transforms draw from these
    np.random.seed(seed % 2**32)


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


def _autocast(s: DownstreamSettings, device: torch.device):
    use = s.amp == "on" or (s.amp == "auto" and device.type == "cuda")
    if not use:
        return None
    if device.type == "cuda":
        return torch.float16 if not torch.cuda.is_bf16_supported() else torch.bfloat16
    return torch.bfloat16


def train_downstream(task, data: SourceFolderDataset, s: DownstreamSettings, *, seed: int, device,
                     show_progress: bool = True, label: str = "") -> nn.Module:
    """Train a fresh (or ``s.weights``-initialised) task network on one source's training split.

    Returns the network to evaluate (the EMA copy when ``s.ema`` is set).
    """
    device = torch.device(device)
    _seed_everything(seed)
    net = task.build_network().to(device)
    frozen = _backbone(net) if (s.freeze_epochs > 0 and s.weights) else []
    opt = make_downstream_optimizer(net, s)
    base_lrs = [g["lr"] for g in opt.param_groups]
    dtype = _autocast(s, device)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    ema = None
    if s.ema:
        from ultralytics.utils.torch_utils import ModelEMA

        ema = ModelEMA(net, decay=float(s.ema))
    generator = torch.Generator().manual_seed(seed)
    out_hw = input_hw(s.input_size, data.native_hw(), 32 if data.target_kind == "boxes" else 1)
    if data.target_kind == "boxes":
        views = _det_dataset(data.folder, data.split, data.classes, s, max(out_hw))
        loader = torch.utils.data.DataLoader(views, batch_size=s.batch_size, shuffle=True, drop_last=len(views) > s.batch_size,
                                             num_workers=s.workers, collate_fn=views.collate_fn, generator=generator)
    else:
        views = _SegTrainViews(data, out_hw, s, data.ignore_index if data.ignore_index is not None else -100, seed)
        loader = torch.utils.data.DataLoader(views, batch_size=s.batch_size, shuffle=True,
                                             drop_last=len(views) > s.batch_size, num_workers=s.workers,
                                             collate_fn=collate, generator=generator)
    per_epoch = len(loader)
    close_at = s.epochs - int(round(s.close_mosaic * s.epochs))
    iteration = 0
    net.train()
    with progress_bar(s.epochs * per_epoch, f"training on {label}".strip(), enabled=show_progress) as advance:
        # the module's own tensors, updated in place by the optimiser (built once, not per step)
        params = {**dict(net.named_parameters()), **dict(net.named_buffers())}
        for epoch in range(s.epochs):
            for p in frozen:
                p.requires_grad_(epoch >= s.freeze_epochs)
            if data.target_kind == "boxes" and epoch == close_at and (s.mosaic or s.mixup):
                views.close_mosaic(_ultralytics_hyp(s, max(out_hw)))
            if hasattr(views, "epoch"):
                views.epoch = epoch
            for raw in loader:
                batch = _det_batch(raw, device) if data.target_kind == "boxes" else to_device(raw, device)
                factor = lr_factor(iteration, per_epoch, s)
                for g, lr in zip(opt.param_groups, base_lrs):
                    g["lr"] = lr * factor
                with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
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
    final = ema.ema if ema is not None else net
    final.eval()
    return final


@torch.no_grad()
def evaluate_downstream(task, net: nn.Module, data: SourceFolderDataset, s: DownstreamSettings, device,
                        limit: int | None = None) -> dict[str, Any]:
    """Task metrics of ``net`` on a source's test split: each whole image resized to the
    input size; targets at native resolution (evaluators bring predictions to it)."""
    evaluator = task.evaluator()
    net.eval()
    n = len(data) if limit is None else min(limit, len(data))
    for i in range(n):
        sample = data[i]
        size = input_hw(s.input_size, sample.a.shape, 32 if data.target_kind == "boxes" else 1)
        batch = to_device(collate([eval_view(sample, size)]), device)
        evaluator.update(task.predict(net, batch["a"]), batch)
    return evaluator.compute()


def with_overrides(s: DownstreamSettings, **changes: Any) -> DownstreamSettings:
    """A copy of ``s`` with some keys changed (e.g. ``epochs`` from ``--epochs``)."""
    return replace(s, **{k: v for k, v in changes.items() if v is not None})
