"""Training and evaluation views of a sample, and batching.

Geometry (crops, resizes, flips) is applied here to images and targets together, so
that tasks never see misaligned targets and never deal with geometry themselves.

Training view (TDFusion/ReFusion Algorithm 1 inputs), from one :class:`Sample`:
* ``crop_a``, ``crop_b``: ``(1, c, c)`` random crop at native resolution, for the
  fusion loss L_f (TDFusion 256, ReFusion 128);
* ``a``, ``b`` (+ targets): the whole image resized to the task input size ``(Ht, Wt)``
  for the task loss L_t; with ``task_size=None`` the task sees the crop itself
  (ReFusion's reconstruction task).
"""
from __future__ import annotations

from typing import Any, Sequence

import cv2
import numpy as np
import torch

from .base import Sample

__all__ = ["collate", "eval_view", "swap_sources", "to_device", "train_view"]


def _resize(img: np.ndarray, size: tuple[int, int], nearest: bool = False) -> np.ndarray:
    h, w = size
    if img.shape[:2] == (h, w):
        return img
    if nearest:
        interp = cv2.INTER_NEAREST
    else:
        interp = cv2.INTER_AREA if h * w < img.shape[0] * img.shape[1] else cv2.INTER_LINEAR
    return cv2.resize(img, (w, h), interpolation=interp)


def _resize_sample(s: Sample, size: tuple[int, int]) -> Sample:
    target = dict(s.target)
    if "mask" in target:
        target["mask"] = _resize(target["mask"].astype(np.int32), size, nearest=True)
    # Normalised boxes are invariant under a plain resize.
    return Sample(_resize(s.a, size), _resize(s.b, size), s.stem, target)


def _hflip(s: Sample) -> Sample:
    target = dict(s.target)
    if "mask" in target:
        target["mask"] = target["mask"][:, ::-1]
    if "boxes" in target and len(target["boxes"]):
        boxes = target["boxes"].copy()
        boxes[:, 1] = 1.0 - boxes[:, 1]
        target["boxes"] = boxes
    return Sample(s.a[:, ::-1], s.b[:, ::-1], s.stem, target)


def _crop_boxes(boxes: np.ndarray, size: tuple[int, int], top: int, left: int, c: int,
                min_visible: float = 0.2) -> np.ndarray:
    """Clip normalised boxes to a crop window; drop boxes mostly outside it."""
    if not len(boxes):
        return boxes.reshape(0, 5)
    h, w = size
    x1 = (boxes[:, 1] - boxes[:, 3] / 2) * w - left
    y1 = (boxes[:, 2] - boxes[:, 4] / 2) * h - top
    x2 = (boxes[:, 1] + boxes[:, 3] / 2) * w - left
    y2 = (boxes[:, 2] + boxes[:, 4] / 2) * h - top
    area = np.maximum(x2 - x1, 1e-9) * np.maximum(y2 - y1, 1e-9)
    cx1, cy1, cx2, cy2 = (np.clip(v, 0, c) for v in (x1, y1, x2, y2))
    kept = ((cx2 - cx1) * (cy2 - cy1) >= min_visible * area) & (cx2 - cx1 >= 2) & (cy2 - cy1 >= 2)
    out = np.stack([boxes[:, 0], (cx1 + cx2) / 2 / c, (cy1 + cy2) / 2 / c,
                    (cx2 - cx1) / c, (cy2 - cy1) / c], axis=1)
    return out[kept].astype(np.float32)


def _crop(s: Sample, c: int, rng: np.random.Generator) -> Sample:
    h, w = s.a.shape
    if h < c or w < c:  # too small for the crop: enlarge so the short side fits
        scale = c / min(h, w)
        s = _resize_sample(s, (max(c, round(h * scale)), max(c, round(w * scale))))
        h, w = s.a.shape
    top = int(rng.integers(0, h - c + 1))
    left = int(rng.integers(0, w - c + 1))
    target = dict(s.target)
    if "mask" in target:
        target["mask"] = target["mask"][top:top + c, left:left + c]
    if "boxes" in target:
        target["boxes"] = _crop_boxes(target["boxes"], (h, w), top, left, c)
    win = (slice(top, top + c), slice(left, left + c))
    return Sample(s.a[win], s.b[win], s.stem, target)


def _tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))[None]


def _pack(s: Sample, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {f"{prefix}a": _tensor(s.a), f"{prefix}b": _tensor(s.b)}
    if not prefix:
        if "mask" in s.target:
            out["mask"] = torch.from_numpy(np.ascontiguousarray(s.target["mask"], dtype=np.int64))
        if "boxes" in s.target:
            out["boxes"] = torch.from_numpy(np.asarray(s.target["boxes"], np.float32).reshape(-1, 5))
    return out


def train_view(sample: Sample, rng: np.random.Generator, crop_size: int,
               task_size: Sequence[int] | None, hflip: bool = True) -> dict[str, Any]:
    """Random crop (for L_f) and task-size view (for L_t) of one sample; see module doc."""
    if hflip and rng.random() < 0.5:
        sample = _hflip(sample)
    crop = _crop(sample, crop_size, rng)
    task = crop if task_size is None else _resize_sample(sample, tuple(task_size))
    return {**_pack(crop, "crop_"), **_pack(task), "stem": sample.stem}


def eval_view(sample: Sample, task_size: Sequence[int] | None) -> dict[str, Any]:
    """Deterministic view for evaluation: the whole image resized to the task size.

    Targets stay at the native resolution (``size``), so metrics are computed against the
    original labels; evaluators bring predictions to that size.
    """
    view = sample if task_size is None else _resize_sample(sample, tuple(task_size))
    images = _pack(Sample(view.a, view.b, sample.stem, sample.target))
    return {**images, "stem": sample.stem, "size": tuple(sample.a.shape)}


def collate(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack views into a batch; boxes become ``(N, 6)`` rows ``(image, class, cx, cy, w, h)``."""
    batch: dict[str, Any] = {"stems": [it["stem"] for it in items]}
    for key in ("crop_a", "crop_b", "a", "b", "mask"):
        if key in items[0]:
            batch[key] = torch.stack([it[key] for it in items])
    if "boxes" in items[0]:
        rows = [torch.cat([torch.full((len(it["boxes"]), 1), float(i)), it["boxes"]], 1)
                for i, it in enumerate(items)]
        batch["boxes"] = torch.cat(rows) if rows else torch.zeros(0, 6)
    if "size" in items[0]:
        batch["sizes"] = [it["size"] for it in items]
    return batch


def swap_sources(batch: dict[str, Any]) -> dict[str, Any]:
    """Append the swapped pairs ``(b, a)`` to a batch, duplicating the targets.

    The reference training does this to every batch so the fusion network learns to be
    indifferent to the order of its inputs.
    """
    n = len(batch["stems"])
    out = dict(batch)
    for x, y in (("a", "b"), ("crop_a", "crop_b")):
        if x in batch:
            out[x] = torch.cat([batch[x], batch[y]])
            out[y] = torch.cat([batch[y], batch[x]])
    if "mask" in batch:
        out["mask"] = torch.cat([batch["mask"], batch["mask"]])
    if "boxes" in batch:
        shifted = batch["boxes"].clone()
        shifted[:, 0] += n
        out["boxes"] = torch.cat([batch["boxes"], shifted])
    out["stems"] = list(batch["stems"]) * 2
    if "sizes" in batch:
        out["sizes"] = list(batch["sizes"]) * 2
    return out


def to_device(batch: dict[str, Any], device: torch.device | str) -> dict[str, Any]:
    """Move the tensors of a batch to ``device`` (non-blocking from pinned memory)."""
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
