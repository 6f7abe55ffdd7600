"""Source folders: one image source of ``tdfusion compare`` on disk, and its training views.

A *source folder* (written by :mod:`tdfusion.evaluation.comparison`) holds one image
source, grey 8-bit luminance at native resolution, with the dataset's targets::

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
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
import yaml

from ..data.base import PairListDataset, Sample, luminance
from ..data.targets import resize_image
from ..data.views import collate, to_device
from ..errors import TDFusionError
from ..io import list_images
from .downstream_settings import DownstreamSettings, input_hw

__all__ = ["SourceFolderDataset", "balanced_class_weights", "read_classes", "seg_train_view", "TrainViews"]


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
        from ..data.det_labels import parse_yolo_labels
        from ..data.seg import read_label

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
    img = resize_image(img, (nh, nw))
    mask = resize_image(mask.astype(np.int32), (nh, nw), nearest=True)
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


class TrainViews:
    """A source folder's training split as task batches, epoch by epoch (shuffled by a
    generator seeded with ``seed``; the augmentation of each sample is keyed by
    ``(seed, epoch, index)`` for segmentation, ultralytics' own RNG for detection)."""

    def __init__(self, data: SourceFolderDataset, s: DownstreamSettings, seed: int):
        self.boxes = data.target_kind == "boxes"
        self.settings = s
        self.out_hw = input_hw(s.input_size, data.native_hw(), 32 if self.boxes else 1)
        generator = torch.Generator().manual_seed(seed)
        if self.boxes:
            self.views = _det_dataset(data.folder, data.split, data.classes, s, max(self.out_hw))
            collate_fn = self.views.collate_fn
        else:
            ignore = data.ignore_index if data.ignore_index is not None else -100
            self.views = _SegTrainViews(data, self.out_hw, s, ignore, seed)
            collate_fn = collate
        self.loader = torch.utils.data.DataLoader(self.views, batch_size=s.batch_size, shuffle=True,
                                                  drop_last=len(self.views) > s.batch_size, num_workers=s.workers,
                                                  collate_fn=collate_fn, generator=generator)
        mixing = self.boxes and (s.mosaic or s.mixup)
        self.close_at = s.epochs - int(round(s.close_mosaic * s.epochs)) if mixing else None

    def __len__(self) -> int:
        return len(self.loader)

    def epoch(self, epoch: int, device: torch.device) -> Iterator[dict[str, Any]]:
        """The batches of ``epoch`` on ``device``: ``{"a": (B, 1, H, W), <targets>, "stems"}``."""
        if epoch == self.close_at:  # ultralytics' close_mosaic: the last epochs see plain images
            self.views.close_mosaic(_ultralytics_hyp(self.settings, max(self.out_hw)))
        if isinstance(self.views, _SegTrainViews):
            self.views.epoch = epoch
        for raw in self.loader:
            yield _det_batch(raw, device) if self.boxes else to_device(raw, device)


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
