"""Segmentation datasets: infrared/visible pairs with per-pixel class masks.

Three layouts (see ``datasets/segmentation.md`` for where to get the data):

* ``msrs``: MSRS as published, ``<root>/{train,test}/{ir,vi,Segmentation_labels}``;
  the label folder may also be named ``Label/`` or ``label/`` (common re-distributions).
  9 classes, 0 = unlabeled.
* ``fmb``: FMB as published, ``<root>/{train,test}/{Infrared,Visible,Label}``.
  15 classes, 0 = unlabeled.
* ``seg_folder``: any ``<root>/<split>/{ir,vi,label}`` folder; class names come from an
  option, a descriptor YAML (``datasets/seg_folder.yaml`` is the template) or the
  ``dataset.yaml`` / ``data.yaml`` in ``<root>`` (``tdfusion synth`` writes one).

Validation happens when a dataset is built (every image has its partner and its label,
the three have the same size, read from the file headers) and when a sample is loaded
(label values lie in ``[0, num_classes)`` or equal ``ignore_index``). Every error is a
one-line :class:`~tdfusion.errors.TDFusionError` that names the offending file.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import yaml
from PIL import Image as PILImage, UnidentifiedImageError

from ..errors import TDFusionError
from ..io import image_size, list_images, match_pairs, pil_open
from .base import PairListDataset
from .registry import register_dataset

__all__ = ["FMB_CLASSES", "MSRS_CLASSES", "SegPairDataset", "read_label"]

# Class ids as in the MFNet/MSRS label PNGs (MFNet, Ha et al. IROS 2017; MSRS keeps them).
MSRS_CLASSES = ("unlabeled", "car", "person", "bike", "curve", "car_stop", "guardrail", "color_cone", "bump")
# Class ids as in the FMB label PNGs (SegMiF, Liu et al. ICCV 2023): 14 classes + unlabeled 0.
# The order is the one shared by several independent public FMB loaders; see
# datasets/segmentation.md for the sources and the caveat.
FMB_CLASSES = ("unlabeled", "Road", "Sidewalk", "Building", "Lamp", "Sign", "Vegetation", "Sky",
               "Person", "Car", "Truck", "Bus", "Motorcycle", "Bicycle", "Pole")

_MSRS_DIRS = {"a": ("ir",), "b": ("vi",), "label": ("Segmentation_labels", "Label", "label")}
_FMB_DIRS = {"a": ("Infrared",), "b": ("Visible",), "label": ("Label",)}
_ROLE = {"a": "infrared", "b": "visible", "label": "label"}


def read_label(path: str | os.PathLike) -> np.ndarray:
    """Decode a class-id mask ``(H, W)`` int64.

    PIL rather than OpenCV: palette PNGs (mode ``P``) store class ids as palette
    indices, which OpenCV would expand to colours. A 3-channel image is accepted only
    if its channels are identical (a grey mask saved as RGB); a colour rendering of the
    classes (e.g. MSRS ``Segmentation_visualize/``) is rejected.
    """
    path = Path(path)
    if not path.is_file():
        raise TDFusionError(f"{path}: no such file")
    try:
        with pil_open(path) as im:
            mode = im.mode
            arr = np.asarray(im)
    # Pillow's decoders report damaged data as SyntaxError ("broken PNG file"), EOFError or
    # struct.error besides OSError.
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, struct.error,
            PILImage.DecompressionBombError) as exc:
        raise TDFusionError(f"{path}: not a readable label image ({exc})") from None
    if arr.ndim == 3:
        if arr.shape[2] == 4:
            arr = arr[:, :, :3]
        if arr.shape[2] == 2:  # grey + alpha
            arr = arr[:, :, :1]
        if not (arr == arr[:, :, :1]).all():
            raise TDFusionError(f"{path}: colour label image (mode {mode}); expected single-channel class ids "
                                f"(is this a colour visualisation of the classes?)")
        arr = arr[:, :, 0]
    if arr.dtype.kind == "b":
        arr = arr.astype(np.uint8)
    if arr.dtype.kind not in "ui":
        raise TDFusionError(f"{path}: label pixels are {arr.dtype} (mode {mode}); expected integer class ids")
    return arr.astype(np.int64)


def check_label_values(mask: np.ndarray, num_classes: int, ignore_index: int | None, path: os.PathLike) -> None:
    """Raise naming ``path`` if ``mask`` holds a value outside ``[0, num_classes)`` other than ``ignore_index``."""
    bad = (mask < 0) | (mask >= num_classes)
    if ignore_index is not None:
        bad &= mask != ignore_index
    if bad.any():
        values = np.unique(mask[bad])
        shown = ", ".join(str(v) for v in values[:5]) + (", ..." if len(values) > 5 else "")
        ignore = f" or {ignore_index} (ignore)" if ignore_index is not None else ""
        raise TDFusionError(f"{path}: label value(s) {shown} outside the class range 0..{num_classes - 1}{ignore}")


def _size_text(hw: tuple[int, int]) -> str:
    return f"{hw[1]}x{hw[0]}"


class SegPairDataset(PairListDataset):
    """Source pairs with class-id masks: ``dir_a/<stem>.*``, ``dir_b/<stem>.*``, ``dir_label/<stem>.*``.

    Args:
        classes: class names, index = class id (label pixel value).
        ignore_index: label value that marks pixels to ignore (loss and metrics); ``None``
            allows none.
        check_sizes: compare the three images' sizes from their headers when built.
        name: the dataset's name, used in error messages.

    Samples carry ``target["mask"]`` ``(H, W)`` int64.
    """

    target_kind = "mask"

    def __init__(self, dir_a: str | os.PathLike, dir_b: str | os.PathLike, dir_label: str | os.PathLike,
                 classes: Sequence[str], ignore_index: int | None = 255, check_sizes: bool = True,
                 cache: bool = False, name: str = "segmentation"):
        super().__init__(match_pairs(dir_a, dir_b), cache)
        self.name = name
        self.classes = [str(c) for c in classes]
        if not self.classes:
            raise TDFusionError(f"{name}: empty class list")
        self.ignore_index = ignore_index
        self.dir_a, self.dir_b, self.dir_label = Path(dir_a), Path(dir_b), Path(dir_label)
        if not self.dir_label.is_dir():
            raise TDFusionError(f"{self.dir_label}: no such label folder")
        labels = list_images(self.dir_label)
        stems = set(self.stems)
        for stem, pa, _ in self.pairs:
            if stem not in labels:
                raise TDFusionError(f"{pa}: no label named {stem}.* in {self.dir_label}")
        for stem, pl in labels.items():
            if stem not in stems:
                raise TDFusionError(f"{pl}: label without an image pair (no {stem}.* in {self.dir_a})")
        self.labels = [labels[s] for s in self.stems]
        if check_sizes:
            for (_, pa, pb), pl in zip(self.pairs, self.labels):
                sa = image_size(pa)
                for p in (pb, pl):
                    s = image_size(p)
                    if s != sa:
                        raise TDFusionError(f"{p}: size {_size_text(s)} differs from {pa} ({_size_text(sa)})")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def label_path(self, index: int) -> Path:
        return self.labels[index]

    def load_target(self, index: int, a: np.ndarray) -> dict[str, np.ndarray]:
        pl = self.labels[index]
        mask = read_label(pl)
        if mask.shape != a.shape:
            raise TDFusionError(f"{pl}: size {_size_text(mask.shape)} differs from {self.pairs[index][1]} "
                                f"({_size_text(a.shape)})")
        check_label_values(mask, len(self.classes), self.ignore_index, pl)
        return {"mask": mask}


def _split_folder(root: str | os.PathLike | None, split: str, name: str, layout: str) -> Path:
    if root is None:
        raise TDFusionError(f"dataset {name!r} needs --data-root (layout: {layout})")
    root = Path(root)
    if not root.is_dir():
        raise TDFusionError(f"{root}: no such folder")
    base = root / split
    if not base.is_dir():
        found = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise TDFusionError(f"{base}: no such split folder (expected layout {layout}; "
                            f"{root} has: {', '.join(found) or 'no folders'})")
    return base


def _pick(base: Path, candidates: Sequence[str], role: str, override: str | None) -> Path:
    if override is not None:
        return base / override
    for c in candidates:
        if (base / c).is_dir():
            return base / c
    raise TDFusionError(f"{base}: no {role} folder (looked for {', '.join(c + '/' for c in candidates)})")


def _layout_dataset(name: str, dirs: dict[str, tuple[str, ...]], classes: Sequence[str], root, split: str,
                    a_dir: str | None, b_dir: str | None, label_dir: str | None, ignore_index: int | None,
                    check_sizes: bool, cache: bool) -> SegPairDataset:
    layout = f"<root>/{{train,test}}/{{{dirs['a'][0]},{dirs['b'][0]},{dirs['label'][0]}}}"
    base = _split_folder(root, split, name, layout)
    paths = {role: _pick(base, dirs[role], _ROLE[role], override)
             for role, override in (("a", a_dir), ("b", b_dir), ("label", label_dir))}
    return SegPairDataset(paths["a"], paths["b"], paths["label"], classes, ignore_index, check_sizes, cache, name)


@register_dataset("msrs", serves="seg")
def _msrs(root, split, a_dir: str | None = None, b_dir: str | None = None, label_dir: str | None = None,
          ignore_index: int | None = 255, check_sizes: bool = True, cache: bool = False) -> SegPairDataset:
    """MSRS: ``<root>/<split>/{ir, vi, Segmentation_labels | Label | label}``; source a = infrared."""
    return _layout_dataset("msrs", _MSRS_DIRS, MSRS_CLASSES, root, split, a_dir, b_dir, label_dir,
                           ignore_index, check_sizes, cache)


@register_dataset("fmb", serves="seg")
def _fmb(root, split, a_dir: str | None = None, b_dir: str | None = None, label_dir: str | None = None,
         ignore_index: int | None = 255, check_sizes: bool = True, cache: bool = False) -> SegPairDataset:
    """FMB: ``<root>/<split>/{Infrared, Visible, Label}``; source a = infrared."""
    return _layout_dataset("fmb", _FMB_DIRS, FMB_CLASSES, root, split, a_dir, b_dir, label_dir,
                           ignore_index, check_sizes, cache)


def _classes_from(value: Any, where: str) -> list[str]:
    """A class list from YAML: a list of names, or a mapping ``id -> name`` with ids 0..K-1."""
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, (str, int)) for v in value):
        return [str(v) for v in value]
    if isinstance(value, dict) and value:
        try:
            ids = sorted(int(k) for k in value)
        except (TypeError, ValueError):
            ids = []
        if ids == list(range(len(value))):
            return [str(value[k] if k in value else value[str(k)]) for k in ids]
    raise TDFusionError(f"{where}: classes must be a list of names or a mapping 0..K-1 -> name")


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except OSError as exc:
        raise TDFusionError(f"{path}: cannot read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise TDFusionError(f"{path}: invalid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise TDFusionError(f"{path}: expected a mapping at the top level")
    return data


@register_dataset("seg_folder", serves="seg")
def _seg_folder(root, split, classes: Sequence[str] | dict | None = None, descriptor: str | None = None,
                a_dir: str | None = None, b_dir: str | None = None, label_dir: str | None = None,
                ignore_index: int | None = None, check_sizes: bool = True, cache: bool = False) -> SegPairDataset:
    """Generic ``<root>/<split>/{ir, vi, label}``.

    Settings are taken, first found wins, from the options, from ``descriptor`` (a YAML
    file like ``datasets/seg_folder.yaml``), then from ``<root>/dataset.yaml`` or
    ``<root>/data.yaml`` (keys ``classes`` or ``seg_classes``, ``dirs: {a, b, label}``,
    ``ignore_index``). Class names are required; folders default to ``ir``, ``vi``,
    ``label`` and ``ignore_index`` to 255.
    """
    if root is None:
        raise TDFusionError("dataset 'seg_folder' needs --data-root (layout: <root>/<split>/{ir,vi,label})")
    desc: dict[str, Any] = {}
    desc_path: Path | None = None
    if descriptor is not None:
        desc_path = Path(descriptor)
        if not desc_path.is_file():
            raise TDFusionError(f"{desc_path}: no such descriptor file")
    else:
        for cand in ("dataset.yaml", "data.yaml"):
            if (Path(root) / cand).is_file():
                desc_path = Path(root) / cand
                break
    if desc_path is not None:
        desc = _read_yaml(desc_path)
    where = str(desc_path) if desc_path is not None else "seg_folder"
    if classes is not None:
        names = _classes_from(classes, "seg_folder option 'classes'")
    elif desc.get("classes") is not None:
        names = _classes_from(desc["classes"], where)
    elif desc.get("seg_classes") is not None:
        names = _classes_from(desc["seg_classes"], where)
    else:
        raise TDFusionError(f"{root}: seg_folder needs class names: pass classes=[...] or descriptor=PATH, "
                            f"or put a dataset.yaml with 'classes:' in the dataset root")
    dirs = desc.get("dirs") or {}
    if not isinstance(dirs, dict):
        raise TDFusionError(f"{where}: 'dirs' must be a mapping with keys a, b, label")
    if ignore_index is None:
        ignore_index = desc.get("ignore_index", 255)
    folders = {"a": a_dir or dirs.get("a", "ir"), "b": b_dir or dirs.get("b", "vi"),
               "label": label_dir or dirs.get("label", "label")}
    layout = f"<root>/<split>/{{{folders['a']},{folders['b']},{folders['label']}}}"
    base = _split_folder(root, split, "seg_folder", layout)
    for role, sub in folders.items():
        if not (base / sub).is_dir():
            raise TDFusionError(f"{base / sub}: no such {_ROLE[role]} folder (expected layout {layout})")
    return SegPairDataset(base / folders["a"], base / folders["b"], base / folders["label"], names,
                          ignore_index, check_sizes, cache, "seg_folder")
