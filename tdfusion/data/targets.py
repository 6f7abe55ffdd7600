"""Target kinds: how each kind of label follows the images through views and batches.

A sample's ``target`` dict holds one entry per kind, under the kind's name (``"mask"``,
``"boxes"``, ``"dense"``, or a plug-in's own). :mod:`tdfusion.data.views` crops,
resizes and flips the two sources and asks each kind to do the same to its target, so
that a task never sees a misaligned label; batching and the source swap go through the
kind too. A new kind is one small class registered here::

    from tdfusion.data.targets import DenseMap, register_target_kind
    register_target_kind(DenseMap("depth"))      # (H, W) float maps under target["depth"]

Kinds (per sample -> per batch):

* ``mask``: ``(H, W)`` class ids -> ``(B, H, W)`` int64; nearest-neighbour resizing;
* ``boxes``: ``(N, 5)`` rows ``(class, cx, cy, w, h)`` normalised to [0, 1] -> ``(N, 6)``
  rows with the image index first; crops clip them and drop boxes mostly outside;
* ``dense`` (:class:`DenseMap`): ``(H, W)`` float maps (depth, saliency, edge strength)
  -> ``(B, H, W)`` float32; area/bilinear resizing like the images.
"""
from __future__ import annotations

from typing import Any, Sequence

import cv2
import numpy as np
import torch

from ..registry import Registry

__all__ = ["TARGET_KINDS", "Boxes", "DenseMap", "Mask", "TargetKind", "register_target_kind", "resize_image"]

TARGET_KINDS: Registry["TargetKind"] = Registry("target kind", entry_point_group="tdfusion.target_kinds")


def register_target_kind(kind: "TargetKind") -> "TargetKind":
    """Make ``kind`` handle ``target[kind.name]`` (also a class decorator for a kind
    without constructor arguments)."""
    if isinstance(kind, type):
        TARGET_KINDS.add(kind.name, kind())
        return kind
    TARGET_KINDS.add(kind.name, kind)
    return kind


def resize_image(img: np.ndarray, size: tuple[int, int], nearest: bool = False) -> np.ndarray:
    """``(H, W) -> size``: area averaging when shrinking, bilinear when enlarging; nearest for labels."""
    h, w = size
    if img.shape[:2] == (h, w):
        return img
    if nearest:
        interp = cv2.INTER_NEAREST
    else:
        interp = cv2.INTER_AREA if h * w < img.shape[0] * img.shape[1] else cv2.INTER_LINEAR
    return cv2.resize(img, (w, h), interpolation=interp)


class TargetKind:
    """One kind of target. Geometry methods take and return one sample's numpy target;
    ``pack`` makes it a tensor, ``collate`` a batch, ``swap`` doubles a batch's targets for
    the swapped source pairs (:func:`tdfusion.data.views.swap_sources`)."""

    name = ""

    def resize(self, value: Any, size: tuple[int, int]) -> Any:
        """The target of the whole image resized to ``size`` ``(H, W)``."""
        raise NotImplementedError

    def hflip(self, value: Any) -> Any:
        raise NotImplementedError

    def crop(self, value: Any, image_hw: tuple[int, int], top: int, left: int, size: int) -> Any:
        """The target of the ``size`` x ``size`` window at ``(top, left)`` of an ``image_hw`` image."""
        raise NotImplementedError

    def pack(self, value: Any) -> torch.Tensor:
        raise NotImplementedError

    def collate(self, values: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.stack(list(values))

    def swap(self, batch_value: torch.Tensor, n: int) -> torch.Tensor:
        """Targets of a batch of ``n`` pairs followed by the same ``n`` pairs swapped."""
        return torch.cat([batch_value, batch_value])


class _PixelMap(TargetKind):
    """A per-pixel map: follows the image pixel for pixel."""

    nearest = False
    dtype: Any = np.float32

    def resize(self, value: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        work = value.astype(np.int32) if self.nearest else value.astype(np.float32)
        return resize_image(work, size, nearest=self.nearest)

    def hflip(self, value: np.ndarray) -> np.ndarray:
        return value[:, ::-1]

    def crop(self, value: np.ndarray, image_hw: tuple[int, int], top: int, left: int, size: int) -> np.ndarray:
        return value[top:top + size, left:left + size]

    def pack(self, value: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(value, dtype=self.dtype))


class Mask(_PixelMap):
    """Class-id maps (segmentation); resized nearest-neighbour so no new ids appear."""

    name = "mask"
    nearest = True
    dtype = np.int64


class DenseMap(_PixelMap):
    """Real-valued maps (depth, saliency, edge strength), resized like the images."""

    def __init__(self, name: str = "dense"):
        self.name = name


class Boxes(TargetKind):
    """Normalised boxes ``(N, 5)``: ``(class, cx, cy, w, h)``."""

    name = "boxes"
    min_visible = 0.2  # a cropped box keeps at least this share of its area, or is dropped

    def resize(self, value: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        return value  # normalised coordinates do not change under a plain resize

    def hflip(self, value: np.ndarray) -> np.ndarray:
        if not len(value):
            return value
        boxes = value.copy()
        boxes[:, 1] = 1.0 - boxes[:, 1]
        return boxes

    def crop(self, value: np.ndarray, image_hw: tuple[int, int], top: int, left: int, size: int) -> np.ndarray:
        if not len(value):
            return value.reshape(0, 5)
        h, w = image_hw
        x1 = (value[:, 1] - value[:, 3] / 2) * w - left
        y1 = (value[:, 2] - value[:, 4] / 2) * h - top
        x2 = (value[:, 1] + value[:, 3] / 2) * w - left
        y2 = (value[:, 2] + value[:, 4] / 2) * h - top
        area = np.maximum(x2 - x1, 1e-9) * np.maximum(y2 - y1, 1e-9)
        cx1, cy1, cx2, cy2 = (np.clip(v, 0, size) for v in (x1, y1, x2, y2))
        kept = ((cx2 - cx1) * (cy2 - cy1) >= self.min_visible * area) & (cx2 - cx1 >= 2) & (cy2 - cy1 >= 2)
        out = np.stack([value[:, 0], (cx1 + cx2) / 2 / size, (cy1 + cy2) / 2 / size,
                        (cx2 - cx1) / size, (cy2 - cy1) / size], axis=1)
        return out[kept].astype(np.float32)

    def pack(self, value: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.asarray(value, np.float32).reshape(-1, 5))

    def collate(self, values: Sequence[torch.Tensor]) -> torch.Tensor:
        rows = [torch.cat([torch.full((len(v), 1), float(i)), v], 1) for i, v in enumerate(values)]
        return torch.cat(rows) if rows else torch.zeros(0, 6)

    def swap(self, batch_value: torch.Tensor, n: int) -> torch.Tensor:
        shifted = batch_value.clone()
        shifted[:, 0] += n  # the swapped copy of image i is image n + i
        return torch.cat([batch_value, shifted])


for _kind in (Mask(), Boxes(), DenseMap("dense")):
    register_target_kind(_kind)
