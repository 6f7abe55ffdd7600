"""Detection labels: reading, validating, writing and converting them.

* YOLO label files (``class cx cy w h`` per line): :func:`parse_yolo_labels`, and
  :func:`format_yolo_labels` to write them;
* Pascal VOC XML annotations (M3FD, LLVIP): :func:`parse_voc_xml`, and
  :func:`voc_to_yolo` to convert a folder of them (``tdfusion convert voc2yolo``);
* class names from a YOLO ``data.yaml``: :func:`read_class_names`;
* split lists of stems: :func:`read_split_list`.

Boxes are ``(N, 5)`` float32 rows ``(class, cx, cy, w, h)``, normalised to [0, 1] by the
image WIDTH for x and the HEIGHT for y (the reference loader swapped the two, DESIGN
§2.5). Every reader raises :class:`TDFusionError` naming the file (and the line or
object) for a malformed entry, an unknown class or a box outside the image. The datasets
that read their labels with these are in :mod:`tdfusion.data.det`.
"""
from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET
from functools import partial
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import yaml

from ..errors import TDFusionError
from ..io import atomic_write, image_size, list_images

__all__ = [
    "DEFAULT_TOLERANCE", "format_yolo_labels", "paint_boxes", "parse_voc_xml", "parse_yolo_labels",
    "read_class_names", "read_split_list", "voc_to_yolo", "yolo_to_masks",
]

#: How far (fraction of the image size) a box may reach past the border before it is an
#: error; boxes within the tolerance are clipped. Annotation tools round coordinates.
DEFAULT_TOLERANCE = 0.01


# -- parsing and validation -------------------------------------------------------------

def _check_box(where: str, x1: float, y1: float, x2: float, y2: float, tolerance: float) -> tuple[float, ...]:
    """Validate normalised corners; return them clipped to [0, 1]."""
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        raise TDFusionError(f"{where}: box coordinates must be finite numbers")
    if x2 <= x1 or y2 <= y1:
        raise TDFusionError(f"{where}: empty box (zero or negative width/height)")
    lo, hi = -tolerance, 1.0 + tolerance
    if x1 < lo or y1 < lo or x2 > hi or y2 > hi:
        raise TDFusionError(
            f"{where}: box (x {x1:.4f}..{x2:.4f}, y {y1:.4f}..{y2:.4f} as fractions of the image width/height) "
            f"extends beyond the image by more than the tolerance {tolerance:g}")
    c = [min(max(v, 0.0), 1.0) for v in (x1, y1, x2, y2)]
    if c[2] <= c[0] or c[3] <= c[1]:
        raise TDFusionError(f"{where}: box lies outside the image")
    return tuple(c)


def _corners_to_rows(rows: list[tuple[int, float, float, float, float]]) -> np.ndarray:
    if not rows:
        return np.zeros((0, 5), np.float32)
    a = np.asarray(rows, np.float64)
    cls, x1, y1, x2, y2 = a.T
    return np.stack([cls, (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], 1).astype(np.float32)


def parse_yolo_labels(path: str | os.PathLike, num_classes: int,
                      tolerance: float = DEFAULT_TOLERANCE) -> np.ndarray:
    """Read a YOLO label file: one ``class cx cy w h`` line per object, normalised.

    Returns ``(N, 5)`` float32 rows ``(class, cx, cy, w, h)``; boxes reaching past the
    border by at most ``tolerance`` are clipped. An empty file means "no objects".
    Raises :class:`TDFusionError` naming the file and line for malformed lines, class ids
    outside ``[0, num_classes)`` and boxes outside the image.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TDFusionError(f"{path}: no such label file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TDFusionError(f"{path}: cannot read label file ({exc})") from None
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        where = f"{path}:{lineno}"
        if len(fields) != 5:
            raise TDFusionError(f"{where}: expected 5 fields 'class cx cy w h', got {len(fields)}: {line.strip()!r}")
        try:
            values = [float(v) for v in fields]
        except ValueError:
            raise TDFusionError(f"{where}: not a number in {line.strip()!r}") from None
        cls = values[0]
        if not (math.isfinite(cls) and cls.is_integer() and 0 <= cls < num_classes):
            raise TDFusionError(f"{where}: class id {fields[0]} is not an integer in 0..{num_classes - 1}")
        cx, cy, w, h = values[1:]
        x1, y1, x2, y2 = _check_box(where, cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2, tolerance)
        rows.append((int(cls), x1, y1, x2, y2))
    return _corners_to_rows(rows)


def _xml_text(node: ET.Element, tag: str, where: str) -> str:
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise TDFusionError(f"{where}: missing <{tag}>")
    return child.text.strip()


def _xml_number(node: ET.Element, tag: str, where: str) -> float:
    text = _xml_text(node, tag, where)
    try:
        value = float(text)
    except ValueError:
        raise TDFusionError(f"{where}: <{tag}> is not a number: {text!r}") from None
    if not math.isfinite(value):
        raise TDFusionError(f"{where}: <{tag}> is not finite: {text!r}")
    return value


def parse_voc_xml(path: str | os.PathLike, classes: Sequence[str],
                  image_hw: tuple[int, int] | Callable[[], tuple[int, int]] | None = None,
                  tolerance: float = DEFAULT_TOLERANCE, drop_difficult: bool = False,
                  skip_unknown: bool = False) -> tuple[np.ndarray, tuple[int, int]]:
    """Read a Pascal VOC annotation and return normalised YOLO rows and the image size.

    Pixel corners are normalised with x by the image WIDTH and y by the HEIGHT. The size
    is taken from ``<size>`` in the file, or from ``image_hw`` ``(H, W)`` (or a callable
    returning it, e.g. an image-header read) when the file has none (or zeros). Class names match ``classes`` case-insensitively; an unknown
    name is an error unless ``skip_unknown``.

    Returns:
        ``((N, 5) float32 (class, cx, cy, w, h), (H, W))``.
    """
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except FileNotFoundError:
        raise TDFusionError(f"{path}: no such annotation file") from None
    except ET.ParseError as exc:
        raise TDFusionError(f"{path}: not valid XML ({exc})") from None
    except OSError as exc:
        raise TDFusionError(f"{path}: cannot read annotation ({exc})") from None
    index = {name.lower(): i for i, name in enumerate(classes)}
    hw = None
    size = root.find("size")
    if size is not None and size.find("width") is not None and size.find("height") is not None:
        w = _xml_number(size, "width", f"{path}: <size>")
        h = _xml_number(size, "height", f"{path}: <size>")
        if w > 0 and h > 0:
            hw = (int(h), int(w))
    if hw is None:
        if image_hw is None:
            raise TDFusionError(f"{path}: no image <size> in the annotation and no image to read it from")
        hw = tuple(int(v) for v in (image_hw() if callable(image_hw) else image_hw))
    h, w = hw
    rows = []
    for k, obj in enumerate(root.iter("object"), 1):
        where = f"{path}: object {k}"
        name = _xml_text(obj, "name", where)
        if name.lower() not in index:
            if skip_unknown:
                continue
            raise TDFusionError(f"{where}: unknown class {name!r} (known: {', '.join(classes)})")
        difficult = obj.find("difficult")
        if drop_difficult and difficult is not None and (difficult.text or "").strip() == "1":
            continue
        box = obj.find("bndbox")
        if box is None:
            raise TDFusionError(f"{where}: missing <bndbox>")
        x1, y1, x2, y2 = (_xml_number(box, t, where) for t in ("xmin", "ymin", "xmax", "ymax"))
        corners = _check_box(f"{where} ({name}, image {w}x{h})", x1 / w, y1 / h, x2 / w, y2 / h, tolerance)
        rows.append((index[name.lower()], *corners))
    return _corners_to_rows(rows), hw


def format_yolo_labels(boxes: np.ndarray) -> str:
    """``(N, 5)`` rows -> YOLO label text (6 decimals, one object per line)."""
    return "".join(f"{int(c)} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}\n" for c, cx, cy, w, h in np.asarray(boxes))


def read_class_names(data_yaml: str | os.PathLike) -> list[str]:
    """Class names from a YOLO ``data.yaml`` (``names`` as a list or ``{id: name}``)."""
    data_yaml = Path(data_yaml)
    try:
        meta = yaml.safe_load(data_yaml.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TDFusionError(f"{data_yaml}: no such file (it gives the class names)") from None
    except (yaml.YAMLError, OSError, UnicodeDecodeError) as exc:
        raise TDFusionError(f"{data_yaml}: cannot read YAML ({str(exc).splitlines()[0]})") from None
    names = meta.get("names") if isinstance(meta, dict) else None
    if isinstance(names, dict):
        try:
            ids = sorted(int(k) for k in names)
        except (TypeError, ValueError):
            raise TDFusionError(f"{data_yaml}: 'names' keys must be class ids 0..N-1") from None
        if ids != list(range(len(ids))):
            raise TDFusionError(f"{data_yaml}: 'names' keys must be class ids 0..N-1, got {ids}")
        names = [names[k] if k in names else names[str(k)] for k in ids]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise TDFusionError(f"{data_yaml}: needs 'names', a list of class names or a {{id: name}} mapping")
    nc = meta.get("nc")
    if nc is not None and nc != len(names):
        raise TDFusionError(f"{data_yaml}: nc is {nc} but 'names' lists {len(names)} classes")
    return names


def read_split_list(path: str | os.PathLike) -> list[str]:
    """Stems listed in a split file, in file order.

    Accepts one entry per line: a stem (``00012``), a file name (``00012.png``), or a line
    of the reference annotation lists (``00012.png x1,y1,x2,y2,c ...``; only the first
    field is used). Blank lines and ``#`` comments are skipped.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise TDFusionError(f"{path}: no such split list") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TDFusionError(f"{path}: cannot read split list ({exc})") from None
    stems, seen = [], {}
    for lineno, line in enumerate(lines, 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        stem = Path(line.split()[0].replace("\\", "/")).stem
        if stem in seen:
            raise TDFusionError(f"{path}:{lineno}: {stem!r} is listed twice (first on line {seen[stem]})")
        seen[stem] = lineno
        stems.append(stem)
    if not stems:
        raise TDFusionError(f"{path}: split list is empty")
    return stems


# -- conversion -------------------------------------------------------------------------------

def voc_to_yolo(annotations: str | os.PathLike, out: str | os.PathLike, classes: Sequence[str],
                images: str | os.PathLike | None = None, stems: Sequence[str] | None = None,
                tolerance: float = DEFAULT_TOLERANCE, drop_difficult: bool = False,
                skip_unknown: bool = False) -> dict[str, int]:
    """Convert Pascal VOC XML files to YOLO label files ``<out>/<stem>.txt``.

    x is normalised by the image width and y by the height. Every file is parsed and
    validated before the first label is written, so a bad annotation leaves ``out``
    untouched; each label file is written atomically.

    Args:
        images: folder of the annotated images, read only for annotations without ``<size>``.
        stems: convert only these (default: every ``*.xml`` in ``annotations``).

    Returns:
        ``{"files": n, "boxes": m, "per_class": {name: count}}``.
    """
    ann_dir = Path(annotations)
    if not ann_dir.is_dir():
        raise TDFusionError(f"{ann_dir}: no such annotation folder")
    if stems is None:
        xmls = sorted(p for p in ann_dir.iterdir() if p.suffix.lower() == ".xml" and not p.name.startswith("."))
        if not xmls:
            raise TDFusionError(f"{ann_dir}: no .xml annotations")
    else:
        xmls = [ann_dir / f"{s}.xml" for s in stems]
    image_files = list_images(images) if images is not None else {}
    converted = []
    for xml in xmls:
        hw = partial(image_size, image_files[xml.stem]) if xml.stem in image_files else None
        boxes, _ = parse_voc_xml(xml, classes, hw, tolerance, drop_difficult, skip_unknown)
        converted.append((xml.stem, boxes))
    out = Path(out)
    counts = np.zeros(len(classes), np.int64)
    for stem, boxes in converted:
        with atomic_write(out / f"{stem}.txt", "w") as fh:
            fh.write(format_yolo_labels(boxes))
        np.add.at(counts, boxes[:, 0].astype(np.int64), 1)
    return {"files": len(converted), "boxes": int(counts.sum()), "per_class": dict(zip(classes, counts.tolist()))}


def paint_boxes(boxes: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """YOLO boxes as a class map: ``(N, 5)`` rows ``(class, cx, cy, w, h)`` normalised to
    [0, 1] -> ``(H, W)`` int64 with ``class + 1`` inside a box and 0 outside every box.

    Larger boxes are painted first, so where boxes overlap the smaller (nearer, usually
    the object itself) wins. A box covers the pixels whose centres lie inside it.
    """
    h, w = int(shape[0]), int(shape[1])
    out = np.zeros((h, w), np.int64)
    rows = np.asarray(boxes, np.float64).reshape(-1, 5)
    for cls, cx, cy, bw, bh in sorted(rows.tolist(), key=lambda r: -r[3] * r[4]):
        x0, x1 = (cx - bw / 2) * w, (cx + bw / 2) * w
        y0, y1 = (cy - bh / 2) * h, (cy + bh / 2) * h
        xs = slice(max(0, math.ceil(x0 - 0.5)), min(w, math.ceil(x1 - 0.5)))
        ys = slice(max(0, math.ceil(y0 - 0.5)), min(h, math.ceil(y1 - 0.5)))
        out[ys, xs] = int(cls) + 1
    return out


def yolo_to_masks(labels: str | os.PathLike, images: str | os.PathLike, out: str | os.PathLike,
                  num_classes: int) -> dict:
    """Class masks from YOLO boxes: ``<out>/<stem>.png`` (8-bit, :func:`paint_boxes`: 0
    outside every box, ``class + 1`` inside) for every image of ``images`` (whose size the
    mask takes; an image without a label file gets an all-0 mask).

    A segmentation stand-in where only boxes exist (the MSRS detection pairs): the masks
    mark the objects' rectangles, not their outlines. Every label file is parsed before
    anything is written. Returns ``{"files", "pixels": [per value]}``.
    """
    from ..io import write_image

    found = list_images(images)
    if not found:
        raise TDFusionError(f"{images}: no images")
    if num_classes > 254:
        raise TDFusionError(f"{num_classes} classes do not fit an 8-bit mask with a background value")
    masks = {}
    for stem, path in sorted(found.items()):
        txt = Path(labels) / f"{stem}.txt"
        rows = parse_yolo_labels(txt, num_classes) if txt.is_file() else np.zeros((0, 5), np.float32)
        masks[stem] = paint_boxes(rows, image_size(path))
    pixels = np.zeros(num_classes + 1, np.int64)
    for stem, mask in masks.items():
        write_image(Path(out) / f"{stem}.png", mask.astype(np.uint8), durable=False)
        pixels += np.bincount(mask.ravel(), minlength=num_classes + 1)[:num_classes + 1]
    return {"files": len(masks), "pixels": pixels.tolist()}
