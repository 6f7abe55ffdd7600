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

from ..errors import TDFusionError
from . import SUMMARY

# numpy, rich and the dataset registry are imported where they are used: `data --help`
# loads none of them.

EPILOG = """\
examples:
  tdfusion data list
  tdfusion data check --dataset msrs --data-root /data/MSRS            # train and test splits
  tdfusion data check --dataset fmb --data-root /data/FMB --split test
  tdfusion data check --dataset seg_folder --data-root synth/ --option descriptor=my_dataset.yaml
  tdfusion data check --dataset msrs --data-root /data/MSRS --option label_dir=Label
  tdfusion data check --dataset ivif --data-root /data/MSRS            # a recipe name: its dataset

Dataset options (--option KEY=VALUE, value parsed as YAML) are those of the dataset's
builder: `tdfusion data list` shows each dataset's. The source folders are spelt dir_a /
dir_b or a_dir / b_dir (likewise label_dir / dir_label): both work for every dataset.
A misspelt option is an error that names the closest valid one.
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
    chk.add_argument("--dataset", required=True, metavar="NAME",
                     help="a registered dataset or a recipe name such as ivif (tdfusion data list)")
    chk.add_argument("--data-root", default=None, metavar="DIR", help="the dataset's root folder")
    chk.add_argument("--split", default=None,
                     help="split to check (default: every split the dataset has of train, val, test)")
    chk.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                     help="dataset builder option, repeatable (value parsed as YAML)")
    chk.add_argument("--limit", type=int, default=None, metavar="N", help="check only the first N samples")
    chk.set_defaults(func=run_check)


def parse_options(items: list[str]) -> dict[str, Any]:
    import yaml

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
    from ..data import build_dataset

    return build_dataset(name, root, split, **options)


def _recipes() -> list[tuple[str, str, str, dict, str]]:
    """``(recipe dataset name, task, dataset it reads, its options, config file)`` of the shipped recipes."""
    from ..config import CONFIG_DIR, load_config

    rows = []
    for path in sorted(CONFIG_DIR.glob("*.yaml")):
        cfg = load_config(path)
        recipe = cfg.get("recipe") or {}
        if recipe.get("dataset"):
            ds = cfg["dataset"]
            rows.append((str(recipe["dataset"]), str(recipe.get("task", cfg["task"]["name"])), ds["name"],
                         dict(ds.get("options") or {}), path.name))
    return rows


def _resolve_recipe_name(name: str, options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """A recipe name (ivif, mif...) that is no dataset -> the dataset it reads, with its options."""
    from ..data import available_datasets

    if name.lower() in available_datasets():
        return name, options
    for recipe, _, dataset, recipe_options, _ in _recipes():
        if recipe.lower() == name.lower():
            return dataset, {**recipe_options, **options}
    return name, options


def run_list(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from ..data import available_datasets
    from ..data.registry import dataset_builder, dataset_options

    console = Console()
    if not console.is_terminal:  # piped: no squeezing into 80 columns
        console = Console(width=200)
    table = Table(title="registered datasets (--dataset NAME)")
    for col in ("name", "serves", "options", "description"):
        table.add_column(col, no_wrap=col == "name")
    for name in available_datasets():
        builder = dataset_builder(name)
        doc = (builder.__doc__ or "").strip().splitlines()[0] if builder.__doc__ else ""
        table.add_row(name, getattr(builder, "serves", None) or "-", ", ".join(dataset_options(name)) or "-",
                      doc.replace("``", ""))
    console.print(table)
    recipes = Table(title="recipes (tdfusion train --dataset NAME; configs/*.yaml)")
    for col in ("name", "task", "reads", "config"):
        recipes.add_column(col, no_wrap=True)
    for recipe, task, dataset, options, config in _recipes():
        shown = dataset + (" (" + ", ".join(f"{k}: {v}" for k, v in options.items()) + ")" if options else "")
        recipes.add_row(recipe, task, shown, config)
    console.print(recipes)
    return 0


def _size(hw: tuple[int, int]) -> str:
    return f"{hw[1]}x{hw[0]}"


def run_check(args: argparse.Namespace) -> int:
    name, options = _resolve_recipe_name(args.dataset, parse_options(args.option))
    if args.split is not None:
        return _check_split(args, name, args.split, _build(name, args.data_root, args.split, options))
    found, status, seen = [], 0, []
    for split in ("train", "val", "test"):
        try:
            dataset = _build(name, args.data_root, split, options)
        except TDFusionError as exc:
            missing = exc
            continue
        # A dataset without split folders (pairs) reads its root for every split: check it once.
        pairs = getattr(dataset, "pairs", None)
        if pairs is not None and pairs in seen:
            continue
        seen.append(pairs)
        found.append((split, dataset))
    if not found:
        raise missing
    for split, dataset in found:
        status = max(status, _check_split(args, name, split, dataset))
    absent = [s for s in ("train", "val", "test") if s not in {f for f, _ in found}]
    print(f"checked split(s): {', '.join(f for f, _ in found)}"
          + (f" (no other split: {', '.join(absent)})" if absent else ""))
    return status


def _check_split(args: argparse.Namespace, name: str, split: str, dataset) -> int:
    import numpy as np
    from rich.console import Console
    from rich.table import Table

    from ..progress import progress_bar

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
    with progress_bar(n, f"checking {name}/{split}", enabled=n > 1 and sys.stdout.isatty()) as advance:
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
                        problems.append(f"{name}/{split} sample {sample.stem}: box class {c} "
                                        f"outside 0..{len(classes) - 1}")
                        break
            advance()

    console = Console()
    summary = Table(title=f"{name} / {split}", show_header=False)
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
