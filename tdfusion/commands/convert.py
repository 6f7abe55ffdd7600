"""``tdfusion convert``: annotation format converters.

``tdfusion convert voc2yolo --annotations DIR --out DIR --classes NAME ...`` turns Pascal
VOC XML (M3FD, LLVIP) into YOLO label files, x normalised by the image width and y by the
height (the reference loader swapped them; DESIGN §2.5).

``tdfusion convert yolo2mask --labels DIR --images DIR --out DIR --classes NAME ...``
paints YOLO boxes into class masks (0 outside every box, class + 1 inside): a
segmentation stand-in where only boxes exist (the MSRS detection pairs, docs/results.md).
"""
from __future__ import annotations

import argparse

from ..errors import TDFusionError
from . import SUMMARY

# The parser is built without importing the dataset readers (numpy, OpenCV, the dataset
# registry: --help would take seconds), so it names the presets and the default tolerance
# itself; tests/test_fuse_outputs.py checks them against tdfusion.data.det and det_labels.
PRESET_NAMES = ("llvip", "m3fd", "msrs_det")
DEFAULT_TOLERANCE = 0.01


def presets() -> dict[str, tuple[str, ...]]:
    """Preset name -> class names, from the dataset readers."""
    from ..data.det import LLVIP_CLASSES, M3FD_CLASSES, MSRS_DET_CLASSES

    return {"llvip": LLVIP_CLASSES, "m3fd": M3FD_CLASSES, "msrs_det": MSRS_DET_CLASSES}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help=SUMMARY["convert"],
                       description="Annotation converters.")
    conv = p.add_subparsers(dest="converter", metavar="CONVERTER", required=True)
    v = conv.add_parser(
        "voc2yolo", help="Pascal VOC XML -> YOLO txt",
        description="Convert Pascal VOC XML annotations to YOLO label files <out>/<stem>.txt "
                    "('class cx cy w h', x normalised by the image width, y by the height). Every file is "
                    "validated before anything is written.")
    v.add_argument("--annotations", required=True, metavar="DIR", help="folder of <stem>.xml files")
    v.add_argument("--out", required=True, metavar="DIR", help="folder for the <stem>.txt label files")
    _add_class_arguments(v)
    v.add_argument("--images", metavar="DIR", help="the annotated images, read for XML files without <size>")
    v.add_argument("--list", metavar="FILE", help="convert only the stems in this split list")
    v.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE, metavar="F",
                   help=f"how far (fraction of the image) a box may pass the border before it is an error "
                        f"(default {DEFAULT_TOLERANCE})")
    v.add_argument("--drop-difficult", action="store_true", help="skip objects marked <difficult>1</difficult>")
    v.add_argument("--skip-unknown", action="store_true", help="skip objects of unlisted classes instead of failing")
    v.set_defaults(func=run_voc2yolo)
    m = conv.add_parser(
        "yolo2mask", help="YOLO txt -> class masks (boxes painted)",
        description="Paint YOLO boxes into 8-bit class masks <out>/<stem>.png, one per image of --images (its "
                    "size): 0 outside every box, class + 1 inside (smaller boxes on top). A segmentation "
                    "stand-in where only boxes exist; the masks mark rectangles, not outlines.")
    m.add_argument("--labels", required=True, metavar="DIR", help="folder of <stem>.txt YOLO label files")
    m.add_argument("--images", required=True, metavar="DIR", help="the labelled images (one mask each, their size)")
    m.add_argument("--out", required=True, metavar="DIR", help="folder for the <stem>.png masks")
    _add_class_arguments(m)
    m.set_defaults(func=run_yolo2mask)


def _add_class_arguments(p: argparse.ArgumentParser) -> None:
    """The class list, one of three ways (read by :func:`_class_names`)."""
    names = p.add_mutually_exclusive_group(required=True)
    names.add_argument("--classes", nargs="+", metavar="NAME", help="class names in id order (case-insensitive)")
    names.add_argument("--preset", choices=PRESET_NAMES, help="class list of a known dataset")
    names.add_argument("--data-yaml", metavar="FILE", help="take the class names from a YOLO data.yaml")


def _class_names(args: argparse.Namespace) -> list[str]:
    from ..data.det_labels import read_class_names

    if args.classes:
        classes = list(args.classes)
    elif args.preset:
        classes = list(presets()[args.preset])
    else:
        classes = read_class_names(args.data_yaml)
    if len({c.lower() for c in classes}) != len(classes):
        raise TDFusionError(f"class names repeat (case-insensitively): {', '.join(classes)}")
    return classes


def run_yolo2mask(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from ..data.det_labels import yolo_to_masks

    classes = _class_names(args)
    stats = yolo_to_masks(args.labels, args.images, args.out, len(classes))
    table = Table(title=f"{stats['files']} masks written to {args.out}")
    table.add_column("value", justify="right")
    table.add_column("class")
    table.add_column("pixels", justify="right")
    for i, name in enumerate(["background (no box)", *classes]):
        table.add_row(str(i), name, str(stats["pixels"][i]))
    Console().print(table)
    return 0


def run_voc2yolo(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from ..data.det_labels import read_split_list, voc_to_yolo

    if args.tolerance < 0:
        raise TDFusionError(f"--tolerance must be >= 0, not {args.tolerance}")
    classes = _class_names(args)
    stems = read_split_list(args.list) if args.list else None
    stats = voc_to_yolo(args.annotations, args.out, classes, args.images, stems, args.tolerance,
                        args.drop_difficult, args.skip_unknown)
    table = Table(title=f"{stats['files']} label files written to {args.out}")
    table.add_column("id", justify="right")
    table.add_column("class")
    table.add_column("boxes", justify="right")
    for i, name in enumerate(classes):
        table.add_row(str(i), name, str(stats["per_class"][name]))
    table.add_row("", "total", str(stats["boxes"]))
    Console().print(table)
    return 0
