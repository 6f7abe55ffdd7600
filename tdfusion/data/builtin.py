"""Built-in datasets that need no task-specific parsing: synthetic scenes and pair folders."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..colour import split_luma
from ..errors import TDFusionError
from ..io import Image
from ..synthetic import DET_CLASSES, SEG_CLASSES, make_pair
from .base import PairDataset, PairFolderDataset, Sample
from .registry import register_dataset

__all__ = ["SyntheticDataset"]

_SPLIT_STREAM = {"train": 0, "test": 1_000_003, "val": 2_000_003}


class SyntheticDataset(PairDataset):
    """Synthetic scenes generated on the fly (see :mod:`tdfusion.synthetic`).

    Args:
        target: ``"mask"`` (segmentation), ``"boxes"`` (detection) or ``"none"``.
        length: number of scenes; ``seed`` picks the stream, and each split has its own.
    """

    def __init__(self, split: str = "train", length: int = 200, seed: int = 0,
                 size: tuple[int, int] = (256, 256), night_prob: float = 0.5,
                 target: str = "mask", cache: bool = True):
        super().__init__(cache)
        if split not in _SPLIT_STREAM:
            raise TDFusionError(f"synthetic dataset: unknown split {split!r} (train, val, test)")
        if target not in ("mask", "boxes", "none"):
            raise TDFusionError(f"synthetic dataset: unknown target {target!r} (mask, boxes, none)")
        self.stream = seed + _SPLIT_STREAM[split]
        self.length, self.size, self.night_prob = length, tuple(size), night_prob
        self.target_kind = target
        self.classes = list(SEG_CLASSES) if target == "mask" else list(DET_CLASSES) if target == "boxes" else []

    def __len__(self) -> int:
        return self.length

    def source_images(self, index: int) -> tuple[Image, Image]:
        p = make_pair(self.stream, index, self.size, self.night_prob)
        return Image(p.ir, 8), Image(p.vis, 8)

    def load(self, index: int) -> Sample:
        p = make_pair(self.stream, index, self.size, self.night_prob)
        target: dict[str, np.ndarray] = {}
        if self.target_kind == "mask":
            target["mask"] = p.mask.astype(np.int64)
        elif self.target_kind == "boxes":
            h, w = self.size
            cls, x1, y1, x2, y2 = p.boxes.T
            target["boxes"] = np.stack([cls, (x1 + x2) / 2 / w, (y1 + y2) / 2 / h,
                                        (x2 - x1) / w, (y2 - y1) / h], 1).astype(np.float32)
        return Sample(p.ir, split_luma(p.vis)[0], f"{index:05d}{'N' if p.night else 'D'}", target)


@register_dataset("synthetic", serves="seg, det, recon (option target: mask, boxes, none)")
def _synthetic(root, split, **options) -> PairDataset:
    """Built-in synthetic road scenes generated on the fly (no files); options: length, size, seed, target."""
    return SyntheticDataset(split, **options)


_synthetic.options_of = SyntheticDataset.__init__


@register_dataset("pairs", serves="recon (fusion pairs, no labels)")
def _pairs(root, split, dir_a: str = "ir", dir_b: str = "vi", cache: bool = False) -> PairDataset:
    """Fusion-only pairs: ``<root>/<split>/<dir_a>`` and ``<root>/<split>/<dir_b>``.

    If ``<root>/<split>`` does not exist, ``<root>/<dir_a>`` and ``<root>/<dir_b>`` are used.
    """
    if root is None:
        raise TDFusionError("dataset 'pairs' needs --data-root")
    base = Path(root) / split
    if not base.is_dir():
        base = Path(root)
    return PairFolderDataset(base / dir_a, base / dir_b, cache=cache)
