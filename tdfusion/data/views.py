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

import numpy as np
import torch

from .base import Sample
from .targets import TARGET_KINDS, resize_image

__all__ = ["collate", "eval_view", "swap_sources", "to_device", "train_view"]


def _kinds(target: dict) -> dict:
    """The target kind of each entry of a sample's target dict."""
    return {key: TARGET_KINDS.get(key) for key in target}


def _resize_sample(s: Sample, size: tuple[int, int]) -> Sample:
    target = {k: kind.resize(s.target[k], size) for k, kind in _kinds(s.target).items()}
    return Sample(resize_image(s.a, size), resize_image(s.b, size), s.stem, target)


def _hflip(s: Sample) -> Sample:
    target = {k: kind.hflip(s.target[k]) for k, kind in _kinds(s.target).items()}
    return Sample(s.a[:, ::-1], s.b[:, ::-1], s.stem, target)


def _crop(s: Sample, c: int, rng: np.random.Generator) -> Sample:
    h, w = s.a.shape
    if h < c or w < c:  # too small for the crop: enlarge so the short side fits
        scale = c / min(h, w)
        s = _resize_sample(s, (max(c, round(h * scale)), max(c, round(w * scale))))
        h, w = s.a.shape
    top = int(rng.integers(0, h - c + 1))
    left = int(rng.integers(0, w - c + 1))
    target = {k: kind.crop(s.target[k], (h, w), top, left, c) for k, kind in _kinds(s.target).items()}
    win = (slice(top, top + c), slice(left, left + c))
    return Sample(s.a[win], s.b[win], s.stem, target)


def _tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))[None]


def _pack(s: Sample, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {f"{prefix}a": _tensor(s.a), f"{prefix}b": _tensor(s.b)}
    if not prefix:  # targets go with the task view only
        out.update({k: kind.pack(s.target[k]) for k, kind in _kinds(s.target).items()})
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
    """Stack views into a batch; each target kind batches its own (boxes become ``(N, 6)``
    rows ``(image, class, cx, cy, w, h)``)."""
    batch: dict[str, Any] = {"stems": [it["stem"] for it in items]}
    for key in ("crop_a", "crop_b", "a", "b"):
        if key in items[0]:
            batch[key] = torch.stack([it[key] for it in items])
    for key in items[0]:
        if key in TARGET_KINDS:
            batch[key] = TARGET_KINDS.get(key).collate([it[key] for it in items])
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
    for key in batch:
        if key in TARGET_KINDS:
            out[key] = TARGET_KINDS.get(key).swap(batch[key], n)
    out["stems"] = list(batch["stems"]) * 2
    if "sizes" in batch:
        out["sizes"] = list(batch["sizes"]) * 2
    return out


def to_device(batch: dict[str, Any], device: torch.device | str) -> dict[str, Any]:
    """Move the tensors of a batch to ``device`` (non-blocking from pinned memory)."""
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
