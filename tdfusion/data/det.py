"""Detection datasets: infrared/visible pairs with boxes, and their builders.

Three on-disk forms are read (see ``datasets/detection.md``):

* the YOLO layout ``<root>/{train,test}/{ir,vi,labels}`` with ``<root>/data.yaml`` giving the
  class names (``yolo``, and ``msrs_det`` for the MSRS detection subset);
* M3FD as published (``Ir/``, ``Vis/``, ``Annotation/*.xml``, split lists) (``m3fd``);
* LLVIP as published (``infrared/{train,test}``, ``visible/{train,test}``,
  ``Annotations/*.xml``) (``llvip``).

Every sample's boxes are ``(N, 5)`` float32 rows ``(class, cx, cy, w, h)``, normalised to
[0, 1] by the image WIDTH for x and the HEIGHT for y. All labels are parsed and validated
(by :mod:`tdfusion.data.det_labels`) when the dataset is built, so a bad line stops a run
before training starts, with an error naming the file and the line.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from ..errors import TDFusionError
from ..io import image_size, list_images, match_pairs
from .base import PairListDataset
from .det_labels import DEFAULT_TOLERANCE, parse_voc_xml, parse_yolo_labels, read_class_names, read_split_list
from .registry import register_dataset

__all__ = ["LLVIP_CLASSES", "M3FD_CLASSES", "MSRS_DET_CLASSES", "DetectionPairDataset"]

# Class order of TarDAL's M3FD loader (the dataset's authors), used by later M3FD work.
M3FD_CLASSES = ("People", "Car", "Bus", "Lamp", "Motorcycle", "Truck")
LLVIP_CLASSES = ("person",)
# classes.txt of the MSRS detection labels (Lele-3/MSRS-detection-label).
MSRS_DET_CLASSES = ("person", "bicycle", "car")


# -- the dataset ----------------------------------------------------------------------------

class DetectionPairDataset(PairListDataset):
    """Source pairs with pre-validated boxes.

    Args:
        pairs: ``[(stem, path_a, path_b), ...]``.
        boxes: ``{stem: (N, 5) float32}`` normalised rows for every stem.
        classes: class names, index = class id.
        task_size: the paper's task input size ``(H, W)`` for this dataset, if any
            (exposed as ``default_task_size`` for configs to use).
    """

    target_kind = "boxes"

    def __init__(self, pairs: Sequence[tuple[str, Path, Path]], boxes: Mapping[str, np.ndarray],
                 classes: Sequence[str], task_size: tuple[int, int] | None = None, cache: bool = False):
        super().__init__(pairs, cache)
        self.boxes = dict(boxes)
        self.classes = list(classes)
        self.default_task_size = task_size
        missing = [s for s, _, _ in self.pairs if s not in self.boxes]
        if missing:
            raise TDFusionError(f"no boxes given for {len(missing)} pair(s), e.g. {missing[0]}")

    def instances_per_class(self) -> list[int]:
        counts = np.zeros(len(self.classes), np.int64)
        for b in self.boxes.values():
            np.add.at(counts, b[:, 0].astype(np.int64), 1)
        return counts.tolist()

    def load_target(self, index: int, a: np.ndarray) -> dict[str, np.ndarray]:
        return {"boxes": self.boxes[self.pairs[index][0]].copy()}


def _need_root(name: str, root) -> Path:
    if root is None:
        raise TDFusionError(f"dataset {name!r} needs --data-root")
    root = Path(root)
    if not root.is_dir():
        raise TDFusionError(f"{root}: no such folder (--data-root of dataset {name!r})")
    return root


def _find_dir(root: Path, *names: str) -> Path:
    """The first of ``names`` that exists under ``root`` (published archives vary in case)."""
    for n in names:
        if (root / n).is_dir():
            return root / n
    raise TDFusionError(f"{root}: no {' or '.join(names)} folder")


def _yolo_pairs(base: Path, dir_a: str, dir_b: str, labels: str, classes: Sequence[str], tolerance: float,
                missing_labels: str, stems: Iterable[str] | None = None, list_file: Path | None = None):
    if missing_labels not in ("error", "empty"):
        raise TDFusionError(f"missing_labels must be 'error' or 'empty', not {missing_labels!r}")
    pairs = match_pairs(base / dir_a, base / dir_b)
    label_dir = base / labels
    if not label_dir.is_dir():
        raise TDFusionError(f"{label_dir}: no such label folder")
    label_files = {p.stem: p for p in label_dir.iterdir() if p.suffix == ".txt" and not p.name.startswith(".")}
    by_stem = {s: (s, pa, pb) for s, pa, pb in pairs}
    for stem, p in sorted(label_files.items()):
        if stem not in by_stem:
            raise TDFusionError(f"{p}: label file without an image pair named {stem}.* in {base / dir_a}")
    if stems is not None:
        chosen = []
        for stem in stems:
            if stem not in by_stem:
                raise TDFusionError(f"{list_file}: lists {stem!r}, which has no image pair in {base}")
            chosen.append(by_stem[stem])
        pairs = chosen
    boxes = {}
    for stem, pa, _ in pairs:
        if stem in label_files:
            boxes[stem] = parse_yolo_labels(label_files[stem], len(classes), tolerance)
        elif missing_labels == "empty":
            boxes[stem] = np.zeros((0, 5), np.float32)
        else:
            raise TDFusionError(f"{pa}: no label file {label_dir / (stem + '.txt')} "
                                "(an image without objects needs an empty label file)")
    return pairs, boxes


@register_dataset("yolo", serves="det")
def build_yolo(root, split, dir_a: str = "ir", dir_b: str = "vi", labels: str = "labels",
               names: Sequence[str] | None = None, split_list: str | None = None,
               tolerance: float = DEFAULT_TOLERANCE, missing_labels: str = "error",
               task_size: Sequence[int] | None = None, cache: bool = False) -> DetectionPairDataset:
    """YOLO layout: ``<root>/<split>/{ir,vi,labels}``; class names from ``<root>/data.yaml``.

    Args:
        names: class names, overriding ``data.yaml``.
        split_list: optional file of stems restricting the split.
        missing_labels: ``"error"`` (default) or ``"empty"`` (no label file = no objects).
    """
    root = _need_root("yolo", root)
    classes = list(names) if names else read_class_names(root / "data.yaml")
    base = root / split
    if not base.is_dir():
        raise TDFusionError(f"{base}: no such split folder (expected <root>/{split}/{{{dir_a},{dir_b},{labels}}})")
    stems = list_file = None
    if split_list is not None:
        list_file = Path(split_list)
        stems = read_split_list(list_file)
    pairs, boxes = _yolo_pairs(base, dir_a, dir_b, labels, classes, tolerance, missing_labels, stems, list_file)
    return DetectionPairDataset(pairs, boxes, classes, tuple(task_size) if task_size else None, cache)


@register_dataset("msrs_det", serves="det")
def build_msrs_det(root, split, labels: str = "labels", tolerance: float = DEFAULT_TOLERANCE,
                   cache: bool = False) -> DetectionPairDataset:
    """MSRS infrared/visible pairs with the public detection labels, YOLO layout.

    ``labels`` picks the annotation set: ``labels`` (annotated on fused images, the
    default), ``labels_ir`` or ``labels_vi``. Classes: person, bicycle, car.
    """
    root = _need_root("msrs_det", root)
    classes = list(MSRS_DET_CLASSES)
    if (root / "data.yaml").is_file():
        found = read_class_names(root / "data.yaml")
        if [n.lower() for n in found] != list(MSRS_DET_CLASSES):
            raise TDFusionError(f"{root / 'data.yaml'}: classes {found} are not MSRS detection's "
                                f"{list(MSRS_DET_CLASSES)}; use --dataset yolo for other label sets")
    base = root / split
    if not base.is_dir():
        raise TDFusionError(f"{base}: no such split folder (expected <root>/{split}/{{ir,vi,{labels}}})")
    pairs, boxes = _yolo_pairs(base, "ir", "vi", labels, classes, tolerance, "error")
    return DetectionPairDataset(pairs, boxes, classes, (240, 320), cache)


def _voc_dataset(name: str, stems: Sequence[str], list_file: Path | str, dir_a: Path, dir_b: Path,
                 ann_dir: Path, classes: Sequence[str], tolerance: float, drop_difficult: bool,
                 task_size: tuple[int, int], cache: bool) -> DetectionPairDataset:
    imgs_a, imgs_b = list_images(dir_a), list_images(dir_b)
    pairs, boxes = [], {}
    for stem in stems:
        if stem not in imgs_a:
            raise TDFusionError(f"{list_file}: {stem!r} has no image {stem}.* in {dir_a}")
        if stem not in imgs_b:
            raise TDFusionError(f"{imgs_a[stem]}: no partner named {stem}.* in {dir_b}")
        xml = ann_dir / f"{stem}.xml"
        if not xml.is_file():
            raise TDFusionError(f"{imgs_a[stem]}: no annotation {xml}")
        boxes[stem], _ = parse_voc_xml(xml, classes, partial(image_size, imgs_a[stem]), tolerance, drop_difficult)
        pairs.append((stem, imgs_a[stem], imgs_b[stem]))
    if not pairs:
        raise TDFusionError(f"dataset {name!r}: {list_file} selects no pairs")
    return DetectionPairDataset(pairs, boxes, classes, task_size, cache)


@register_dataset("m3fd", serves="det")
def build_m3fd(root, split, split_list: str | None = None, tolerance: float = DEFAULT_TOLERANCE,
               drop_difficult: bool = False, cache: bool = False) -> DetectionPairDataset:
    """M3FD detection set as published: ``Ir/``, ``Vis/``, ``Annotation/*.xml``.

    M3FD has no official split; the split list is ``split_list`` if given, else
    ``<root>/meta/<split>.txt`` (TarDAL's layout), else ``<root>/<split>.txt``. TDFusion
    used 3150 training / 1050 test pairs. Classes: People, Car, Bus, Lamp, Motorcycle, Truck.
    """
    root = _need_root("m3fd", root)
    if split_list is None:
        for cand in (root / "meta" / f"{split}.txt", root / f"{split}.txt"):
            if cand.is_file():
                split_list = cand
                break
        else:
            raise TDFusionError(
                f"{root}: M3FD has no official split; put the stems of the {split!r} split in "
                f"{root / 'meta' / (split + '.txt')} or pass split_list (see datasets/detection.md)")
    stems = read_split_list(split_list)
    return _voc_dataset("m3fd", stems, split_list, _find_dir(root, "Ir", "ir", "infrared"),
                        _find_dir(root, "Vis", "vi", "visible"), _find_dir(root, "Annotation", "Annotations"),
                        M3FD_CLASSES, tolerance, drop_difficult, (192, 256), cache)


@register_dataset("llvip", serves="det")
def build_llvip(root, split, every: int = 10, split_list: str | None = None,
                tolerance: float = DEFAULT_TOLERANCE, cache: bool = False) -> DetectionPairDataset:
    """LLVIP as published: ``infrared/<split>``, ``visible/<split>``, ``Annotations/*.xml``.

    ``every`` keeps every n-th pair of the official split in stem order, starting with the
    first: TDFusion's subset (n = 10: 1203 training / 347 test pairs). ``every=1`` keeps
    all; ``split_list`` replaces the rule with an explicit list of stems.
    """
    root = _need_root("llvip", root)
    dir_a, dir_b = _find_dir(root, "infrared") / split, _find_dir(root, "visible") / split
    ann_dir = _find_dir(root, "Annotations", "Annotation")
    if split_list is not None:
        stems, source = read_split_list(split_list), split_list
    else:
        if not isinstance(every, int) or every < 1:
            raise TDFusionError(f"llvip: 'every' must be a positive integer, not {every!r}")
        stems, source = sorted(list_images(dir_a))[::every], f"{dir_a} (every {every})"
    return _voc_dataset("llvip", stems, source, dir_a, dir_b, ann_dir, LLVIP_CLASSES, tolerance,
                        False, (256, 320), cache)
