"""``tdfusion metrics``: score fused images of one or more methods against their sources."""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Mapping

from rich.console import Console
from rich.table import Table

from ..errors import TDFusionError
from ..metrics.evaluate import METRIC_NAMES
from ..metrics.folders import write_csv, write_json
from . import SUMMARY
from .common import WORKERS_HELP, add_input_arguments, compute_metrics

EPILOG = """\
examples:
  tdfusion metrics --a ir/ --b vis/ --fused ours/ cddfuse/ tardal/ \\
                   --names ours cddfuse tardal --json metrics.json --csv metrics.csv
  tdfusion metrics --a ir.png --b vis.png --fused fused.png

Images are matched by file stem (ir/00001.png <-> vis/00001.jpg <-> ours/00001.png).
A fused folder may hold more images than the sources name: only those are scored, and a
note says how many others were ignored; one missing is an error unless --allow-missing.
Colour images are scored on their luminance (OpenCV RGB->GRAY, rounded to 8 bits).
All metrics are higher-is-better; the best mean per column is highlighted.
Conventions and references: docs/metrics.md.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "metrics", help=SUMMARY["metrics"],
        description="Score fused images against their two sources and compare methods.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_input_arguments(p)
    p.add_argument("--json", metavar="PATH", help="write per-image and mean values as JSON")
    p.add_argument("--csv", metavar="PATH", help="write per-image and mean values as CSV")
    p.add_argument("--vif-sum", action="store_true",
                   help="VIF as the SUM over the two sources (CDDFuse's script) instead of the mean")
    p.add_argument("--workers", type=int, default=None, metavar="N", help=WORKERS_HELP)
    p.add_argument("--quiet", action="store_true", help="no progress bar and no table")
    p.add_argument("--device", default=None, metavar="DEV",
                   help="accepted like every tdfusion command; the metrics themselves run on the "
                        "CPU (numpy/OpenCV/scikit-image), parallel over processes")
    p.set_defaults(func=run)


def results_table(results: Mapping, title: str | None = None) -> Table:
    """Methods as rows, metric means as columns; the best value per column in bold green,
    only where it differs from the others at the 4 decimals shown."""
    from ..evaluation.results import best_at_precision

    table = Table(title=title, header_style="bold")
    table.add_column("method")
    table.add_column("images", justify="right")
    for name in METRIC_NAMES:
        table.add_column(name, justify="right")
    methods = list(results)
    best = {name: best_at_precision([results[m]["mean"].get(name) for m in methods]) for name in METRIC_NAMES}
    for row, method in enumerate(methods):
        block = results[method]
        cells = []
        for name in METRIC_NAMES:
            v = block["mean"].get(name)
            text = "" if v is None else f"{v:.4f}"
            cells.append(f"[bold green]{text}[/]" if row in best[name] else text)
        table.add_row(method, str(len(block["per_image"])), *cells)
    return table


def run(args: argparse.Namespace) -> int:
    for opt in ("json", "csv"):
        target = getattr(args, opt)
        if target and Path(target).is_dir():
            raise TDFusionError(f"{target}: is a folder; --{opt} needs a file path")
    results = compute_metrics(args)
    if args.json:
        write_json(results, args.json)
    if args.csv:
        write_csv(results, args.csv)
    if not args.quiet:
        vif = "VIF summed over sources" if args.vif_sum else "VIF averaged over sources"
        console = Console()
        if not console.is_terminal:  # piped/logged: don't squeeze the table into 80 columns
            console = Console(width=160)
        console.print(results_table(results, title=f"fusion metrics (means; {vif})"))
        for target in (args.json, args.csv):
            if target:
                print(f"wrote {os.fspath(target)}")
    return 0
