"""``tdfusion train``: placeholder until its issue lands."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="not yet available")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    print("tdfusion train: not yet available")
    return 1
