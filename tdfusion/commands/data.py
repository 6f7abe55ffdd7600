"""``tdfusion data``: list the registered datasets, check a dataset folder.

``tdfusion data check`` builds a dataset exactly as training would, decodes every sample
and prints a summary: number of pairs, image sizes and, depending on what the dataset
provides (its ``target_kind``), a class histogram of mask pixels or the number of boxes
per class. Every problem found is printed as an ``error: <file>: <problem>`` line; the
exit status is 0 when there is none and 2 otherwise.
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from typing import Any

import numpy as np
import yaml
from rich.console import Console
from rich.table import Table

from ..data import available_datasets, build_dataset
from ..errors import TDFusionError
from ..progress import progress_bar
from . import SUMMARY

EPILOG = """\
examples:
  tdfusion data list
  tdfusion data check --dataset msrs --data-root /data/MSRS --split test
  tdfusion data check --dataset fmb --data-root /data/FMB
  tdfusion data check --dataset seg_folder --data-root synth/ --option descriptor=my_dataset.yaml
  tdfusion data check --dataset msrs --data-root /data/MSRS --option label_dir=Label

Dataset options (--option KEY=VALUE, value parsed as YAML) are those of the dataset's
builder, e.g. a_dir / b_dir / label_dir / ignore_index for msrs, fmb and seg_folder,
classes / descriptor for seg_folder.
"""

MAX_PROBLEMS_SHOWN = 20


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help=SUMMARY["data"],
                       description="Inspect the datasets tdfusion can train and evaluate on.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    lst = actions.add_parser("list", help="list the registered datasets")
    lst.set_defaults(func=run_list)
    chk = actions.add_parser("check", help="validate a dataset folder and print a summary",
                             description="Load every sample of a dataset split, report problems and "
                                         "print pairs, image sizes and a per-class histogram.",
                             epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    chk.add_argument("--dataset", required=True, metavar="NAME", help="a registered dataset (tdfusion data list)")
    chk.add_argument("--data-root", default=None, metavar="DIR", help="the dataset's root folder")
    chk.add_argument("--split", default="train", help="split to check (default: train)")
    chk.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                     help="dataset builder option, repeatable (value parsed as YAML)")
    chk.add_argument("--limit", type=int, default=None, metavar="N", help="check only the first N samples")
    chk.set_defaults(func=run_check)


def parse_options(items: list[str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise TDFusionError(f"--option {item!r}: expected KEY=VALUE")
        try:
            options[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise TDFusionError(f"--option {item!r}: value is not valid YAML") from None
    return options


def _build(name: str, root: str | None, split: str, options: dict[str, Any]):
    try:
        return build_dataset(name, root, split, **options)
    except TypeError as exc:
        if "unexpected keyword argument" in str(exc):
            bad = str(exc).split("argument")[-1].strip(" '\"")
            raise TDFusionError(f"dataset {name!r} has no option {bad!r}") from None
        raise


def run_list(args: argparse.Namespace) -> int:
    from ..data import registry

    table = Table(title="registered datasets")
    table.add_column("name", no_wrap=True)
    table.add_column("description")
    for name in available_datasets():
        builder = registry._BUILDERS.get(name)
        if builder is None and name in registry._LAZY:
            import importlib

            importlib.import_module(registry._LAZY[name])
            builder = registry._BUILDERS.get(name)
        doc = (builder.__doc__ or "").strip().splitlines()[0] if builder is not None and builder.__doc__ else ""
        table.add_row(name, doc.replace("``", ""))
    Console().print(table)
    return 0


def _size(hw: tuple[int, int]) -> str:
    return f"{hw[1]}x{hw[0]}"


def run_check(args: argparse.Namespace) -> int:
    options = parse_options(args.option)
    dataset = _build(args.dataset, args.data_root, args.split, options)
    kind = getattr(dataset, "target_kind", "none")
    classes = list(getattr(dataset, "classes", []) or [])
    ignore_index = getattr(dataset, "ignore_index", None)
    n = len(dataset) if args.limit is None else min(args.limit, len(dataset))

    sizes: Counter = Counter()
    pixels = np.zeros(max(len(classes), 1), np.int64)
    images_with = np.zeros_like(pixels)
    ignored_pixels = 0
    boxes: Counter = Counter()
    box_images: Counter = Counter()
    problems: list[str] = []
    checked = 0
    with progress_bar(n, f"checking {args.dataset}/{args.split}", enabled=n > 1 and sys.stdout.isatty()) as advance:
        for i in range(n):
            try:
                sample = dataset.load(i)
            except TDFusionError as exc:
                problems.append(str(exc))
                advance()
                continue
            checked += 1
            sizes[tuple(sample.a.shape)] += 1
            if kind == "mask" and "mask" in sample.target:
                mask = np.asarray(sample.target["mask"])
                valid = (mask >= 0) & (mask < len(pixels))
                ignored_pixels += int((~valid).sum())
                counts = np.bincount(mask[valid].ravel(), minlength=len(pixels))[:len(pixels)]
                pixels += counts
                images_with += counts > 0
            elif kind == "boxes" and "boxes" in sample.target:
                ids = np.asarray(sample.target["boxes"]).reshape(-1, 5)[:, 0].astype(int)
                for c in ids:
                    boxes[int(c)] += 1
                for c in set(ids.tolist()):
                    box_images[int(c)] += 1
                for c in ids:
                    if classes and not 0 <= c < len(classes):
                        problems.append(f"{args.dataset}/{args.split} sample {sample.stem}: box class {c} "
                                        f"outside 0..{len(classes) - 1}")
                        break
            advance()

    console = Console()
    summary = Table(title=f"{args.dataset} / {args.split}", show_header=False)
    summary.add_column("key", style="bold", no_wrap=True)
    summary.add_column("value")
    summary.add_row("root", str(args.data_root) if args.data_root else "-")
    summary.add_row("pairs", f"{len(dataset)}" + (f" ({n} checked)" if n < len(dataset) else ""))
    summary.add_row("readable", f"{checked}")
    summary.add_row("targets", kind)
    if classes:
        summary.add_row("classes", str(len(classes)))
    if ignore_index is not None and kind == "mask":
        summary.add_row("ignore index", f"{ignore_index} ({ignored_pixels} pixels)")
    summary.add_row("sizes (WxH)", ", ".join(f"{_size(s)} x{c}" for s, c in sorted(sizes.items(), key=lambda t: -t[1]))
                    or "-")
    console.print(summary)

    if kind == "mask" and classes:
        total = max(int(pixels.sum()), 1)
        table = Table(title="mask pixels per class")
        for col, justify in (("id", "right"), ("class", "left"), ("pixels", "right"), ("share", "right"),
                             ("images", "right")):
            table.add_column(col, justify=justify, no_wrap=True)
        for c, name in enumerate(classes):
            table.add_row(str(c), name, str(int(pixels[c])), f"{100 * pixels[c] / total:.2f}%", str(int(images_with[c])))
        console.print(table)
    elif kind == "boxes":
        table = Table(title="boxes per class")
        for col, justify in (("id", "right"), ("class", "left"), ("boxes", "right"), ("images", "right")):
            table.add_column(col, justify=justify, no_wrap=True)
        ids = sorted(set(range(len(classes))) | set(boxes))
        for c in ids:
            name = classes[c] if 0 <= c < len(classes) else "(unknown)"
            table.add_row(str(c), name, str(boxes[c]), str(box_images[c]))
        table.add_row("", "total", str(sum(boxes.values())), "")
        console.print(table)

    for msg in problems[:MAX_PROBLEMS_SHOWN]:
        print(f"error: {msg}", file=sys.stderr)
    if len(problems) > MAX_PROBLEMS_SHOWN:
        print(f"error: ... and {len(problems) - MAX_PROBLEMS_SHOWN} more problem(s)", file=sys.stderr)
    if problems:
        print(f"{len(problems)} problem(s) in {n} sample(s)", file=sys.stderr)
        return 2
    console.print(f"ok: {n} sample(s) checked, no problems")
    return 0
