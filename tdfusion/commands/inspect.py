"""``tdfusion inspect``: what a trained run's loss generator G and fusion network F do."""
from __future__ import annotations

import argparse
import json

from ..errors import TDFusionError
from . import SUMMARY

EPILOG = """\
Pairs: the run's own test split (the dataset its config names; --limit pairs), or --a/--b
folders (or two images) with optional --targets: class masks (<stem>.png) or YOLO boxes
(<stem>.txt, painted: 0 outside the boxes, class + 1 inside).

Figures: G's mean weight for the first source (w_a, and v_a for ReFusion's gradient pair)
overall and per class; the share of G's weights within 1e-3 of 0 or 1 (saturated); G's
agreement with "infrared on --ir-classes, visible elsewhere" (default on the synthetic
scenes: person car); F's raw output range; the meta-gradient scale per epoch from the run's
train_log.jsonl; the settings that shape G.

examples:
  tdfusion inspect runs/synthetic_seg --png g.png --json g.json
  tdfusion inspect runs/msrs_det/last.pt --a ../shared/data/msrs_det/test/ir --b ../shared/data/msrs_det/test/vi \\
                   --targets ../shared/data/msrs_det/test/labels --classes person bicycle car --ir-classes person
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help=SUMMARY["inspect"],
                       description="G's weights per class, its saturation and agreement with a known map, F's "
                                   "output range and the meta-gradient scale of a trained run.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", metavar="RUN_OR_CHECKPOINT", help="a run folder (its last.pt and log) or a checkpoint")
    p.add_argument("--a", metavar="PATH", help="first sources (infrared): a folder or one image")
    p.add_argument("--b", metavar="PATH", help="second sources (visible): a folder or one image")
    p.add_argument("--targets", metavar="DIR", help="class masks (<stem>.png) or YOLO boxes (<stem>.txt) of the pairs")
    p.add_argument("--classes", nargs="+", metavar="NAME", help="class names of --targets (index = class id)")
    p.add_argument("--ir-classes", nargs="+", metavar="NAME",
                   help="classes on which the known-good map takes the first source (default on the synthetic "
                        "scenes: person car; elsewhere none)")
    p.add_argument("--limit", type=int, default=32, metavar="N", help="at most N pairs (default 32)")
    p.add_argument("--device", metavar="DEV", help="cuda, cpu (default: cuda when available)")
    p.add_argument("--json", metavar="PATH", help="write the figures as JSON")
    p.add_argument("--png", metavar="PATH", help="write per-class bars and a few weight maps as PNG")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import load_checkpoint
    from ..device import resolve_device
    from ..evaluation.results import jsonable
    from ..io import atomic_write
    from ..inspection.inspector import (default_ir_classes, inspect_run, pairs_from_dataset,
                                        pairs_from_folders, resolve_run)

    if args.limit is not None and args.limit < 1:
        raise TDFusionError(f"--limit must be >= 1, got {args.limit}")
    if (args.a is None) != (args.b is None):
        raise TDFusionError("--a and --b go together (or leave both out: the run's test split)")
    if args.targets and args.a is None:
        raise TDFusionError("--targets needs --a and --b (the run's test split brings its own targets)")
    ckpt_path, run_dir = resolve_run(args.run)
    cfg = (load_checkpoint(ckpt_path).get("extra") or {}).get("config") or {}
    if args.a is not None:
        data = pairs_from_folders(args.a, args.b, args.targets, args.classes, args.limit)
    else:
        if not cfg:
            raise TDFusionError(f"{ckpt_path}: holds no run config, so no test split: give --a and --b")
        from ..config import with_new_keys, load_config
        from ..data import build_split

        full = with_new_keys(cfg, load_config(None))
        data = pairs_from_dataset(build_split(full, "test_split"), args.limit,
                                  f"test split of {full['dataset']['name']}")
    ir_classes = args.ir_classes if args.ir_classes is not None else default_ir_classes(data, cfg)
    report = inspect_run(ckpt_path, run_dir, data, ir_classes, resolve_device(args.device or "auto"))
    _print(report)
    if args.png:
        from ..inspection.plot import inspection_figure

        print(f"figure: {inspection_figure(report, args.png)}")
    if args.json:
        with atomic_write(args.json, "w") as fh:
            json.dump(jsonable({k: v for k, v in report.items() if k != "maps"}), fh, indent=2)
    return 0


def _print(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    from ..inspection.inspector import iter_rows

    table = Table(title=f"{report['checkpoint']}: {report['pairs']} pairs ({report['origin']})")
    table.add_column("what", no_wrap=True)
    table.add_column("value", overflow="fold")
    for what, value in iter_rows(report):
        table.add_row(what, value)
    Console().print(table)
