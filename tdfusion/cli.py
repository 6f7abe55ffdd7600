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
from .commands import SUMMARY
from .errors import TDFusionError

# Order = order in ``tdfusion --help``.
COMMANDS = tuple(SUMMARY)
#: Commands that compute (torch or OpenCV): each takes ``--threads``, applied in :func:`main`.
COMPUTING = frozenset(SUMMARY) - {"data", "convert"}
#: The command line being run (``["tdfusion", ...]``), for the provenance of reports.
CURRENT_COMMAND: list[str] | None = None


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The full parser; given ``argv``, only the command it names is imported.

    Command modules import torch and the task libraries (seconds); ``tdfusion --help``
    and a misspelt command need none of them, so the other commands get a stub parser
    that carries only their one-line summary.
    """
    parser = argparse.ArgumentParser(
        prog="tdfusion",
        description="Task-driven multi-modal image fusion (TDFusion, CVPR 2025; ReFusion, IJCV 2024).",
        epilog="Run 'tdfusion COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"tdfusion {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = None if argv is None else next((a for a in argv if not a.startswith("-")), None)
    for name in COMMANDS:
        if argv is None or name == chosen:
            importlib.import_module(f"tdfusion.commands.{name}").register(sub)
            if name in COMPUTING:
                add_threads_argument(sub.choices[name])
        else:
            sub.add_parser(name, help=SUMMARY[name])
    return parser


def add_threads_argument(p: argparse.ArgumentParser) -> None:
    """``--threads N`` (one option for every computing command; see :func:`tdfusion.device.set_threads`)."""
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="use at most N CPU threads (default: one per core, the fastest on an idle "
                        "machine; on a machine shared with other jobs --threads 1 is often faster)")


def main(argv: list[str] | None = None) -> int:
    global CURRENT_COMMAND
    argv = sys.argv[1:] if argv is None else list(argv)
    CURRENT_COMMAND = ["tdfusion", *argv]
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    try:
        if getattr(args, "threads", None) is not None:
            from .device import set_threads

            set_threads(args.threads)
        return int(args.func(args) or 0)
    except TDFusionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
