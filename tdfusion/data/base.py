"""Datasets of source pairs, with optional task targets.

A dataset returns :class:`Sample` objects: the two sources' luminance at their native
resolution plus the targets. What the engine trains on is a *view* of a sample
(:mod:`tdfusion.data.views`): a random crop for the fusion loss and the whole image
resized to the task's input size, targets transformed alike.

Target conventions: one entry per target kind (:mod:`tdfusion.data.targets`, which
also says how each follows crops, resizes, flips and batching):
* ``"mask"``: ``(H, W)`` int64 class ids;
* ``"boxes"``: ``(N, 5)`` float32 rows ``(class, cx, cy, w, h)``, normalised to [0, 1];
* ``"dense"`` or a registered name: ``(H, W)`` float32 maps (depth, saliency, edges).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from torch.utils.data import Dataset

from ..colour import split_luma
from ..errors import TDFusionError
from ..io import Image, match_pairs, read_image

__all__ = ["PairDataset", "PairFolderDataset", "PairListDataset", "Sample", "luminance"]


@dataclass
class Sample:
    """One source pair: ``a``, ``b`` ``(H, W)`` float32 luminance in [0, 1]."""

    a: np.ndarray
    b: np.ndarray
    stem: str
    target: dict[str, np.ndarray] = field(default_factory=dict)


def luminance(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file and return its luminance ``(H, W)`` float32 in [0, 1]."""
    return split_luma(read_image(path).pixels)[0]


class PairDataset(Dataset):
    """Base class: subclasses implement ``__len__``, ``stems`` and ``load(i) -> Sample``.

    ``cache=True`` keeps decoded samples in memory (worth it when decoding, e.g. large
    JPEGs, is slower than a training step; each data-loader worker has its own cache).
    """

    #: "none", "mask", "boxes" or another registered target kind: the targets this dataset provides.
    target_kind: str = "none"

    def __init__(self, cache: bool = False):
        self.cache = cache
        self._cache: dict[int, Sample] = {}

    def __len__(self) -> int:
        raise NotImplementedError

    def load(self, index: int) -> Sample:
        raise NotImplementedError

    def source_images(self, index: int) -> tuple[Image, Image]:
        """The two decoded sources of pair ``index`` as ``tdfusion fuse`` reads them
        (colour kept), for producing fused images exactly as the CLI would."""
        raise TDFusionError(f"{type(self).__name__}: cannot give the source images of its pairs")

    def __getitem__(self, index: int) -> Sample:
        if not self.cache:
            return self.load(index)
        if index not in self._cache:
            self._cache[index] = self.load(index)
        return self._cache[index]


class PairListDataset(PairDataset):
    """Pairs ``[(stem, path_a, path_b), ...]``; subclasses add targets in :meth:`load_target`."""

    def __init__(self, pairs, cache: bool = False):
        super().__init__(cache)
        self.pairs = list(pairs)

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def stems(self) -> list[str]:
        return [s for s, _, _ in self.pairs]

    def source_images(self, index: int) -> tuple[Image, Image]:
        _, pa, pb = self.pairs[index]
        return read_image(pa), read_image(pb)

    def load_target(self, index: int, a: np.ndarray) -> dict[str, np.ndarray]:
        """Targets of pair ``index``; ``a`` is its decoded first source (for size checks)."""
        return {}

    def load(self, index: int) -> Sample:
        stem, pa, pb = self.pairs[index]
        a, b = luminance(pa), luminance(pb)
        if a.shape != b.shape:
            raise TDFusionError(f"{pb}: size {b.shape[1]}x{b.shape[0]} differs from {pa} "
                                f"({a.shape[1]}x{a.shape[0]})")
        return Sample(a, b, stem, self.load_target(index, a))


class PairFolderDataset(PairListDataset):
    """Two folders of images paired by file stem; fusion-only (no targets).

    Args:
        dir_a, dir_b: source folders (e.g. ``ir/`` and ``vi/``).
        target_loader: optional ``(stem) -> dict`` adding targets to each sample.
        target_kind: the kind ``target_loader`` produces.
    """

    def __init__(self, dir_a: str | os.PathLike, dir_b: str | os.PathLike,
                 target_loader: Callable[[str], dict[str, Any]] | None = None,
                 target_kind: str = "none", cache: bool = False):
        super().__init__(match_pairs(dir_a, dir_b), cache)
        self.target_loader = target_loader
        self.target_kind = target_kind
        self.dir_a, self.dir_b = Path(dir_a), Path(dir_b)

    def load_target(self, index: int, a: np.ndarray) -> dict[str, np.ndarray]:
        return self.target_loader(self.pairs[index][0]) if self.target_loader else {}
