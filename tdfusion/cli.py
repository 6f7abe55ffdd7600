"""``tdfusion``: one command, one subcommand per job.

Each subcommand lives in ``tdfusion/commands/<name>.py`` and exposes
``register(subparsers)``, which adds its parser and sets ``func`` to a callable taking
the parsed arguments and returning the exit status.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__
from .errors import TDFusionError

# Order = order in ``tdfusion --help``.
COMMANDS = ("fuse", "synth", "train", "eval", "compare", "metrics", "report", "data", "convert", "bench")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tdfusion",
        description="Task-driven multi-modal image fusion (TDFusion, CVPR 2025; ReFusion, IJCV 2024).",
    )
    parser.add_argument("--version", action="version", version=f"tdfusion {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"tdfusion.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except TDFusionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
