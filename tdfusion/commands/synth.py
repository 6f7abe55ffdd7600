"""``tdfusion synth``: write the synthetic infrared/visible dataset to disk."""
from __future__ import annotations

import argparse

from ..synthetic import DET_CLASSES, SEG_CLASSES, write_dataset
from . import SUMMARY


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "synth", help=SUMMARY["synth"],
        description="Write deterministic synthetic road scenes: <out>/{train,test}/{ir,vi,label,labels} "
                    f"and data.yaml. Segmentation classes: {', '.join(SEG_CLASSES)}; "
                    f"detection classes: {', '.join(DET_CLASSES)}.")
    p.add_argument("--out", required=True, metavar="DIR", help="dataset root to write")
    p.add_argument("--train", type=int, default=200, metavar="N", help="training pairs (default 200)")
    p.add_argument("--test", type=int, default=50, metavar="N", help="test pairs (default 50)")
    p.add_argument("--size", type=int, nargs=2, default=(256, 256), metavar=("H", "W"),
                   help="image size (default 256 256)")
    p.add_argument("--seed", type=int, default=0, help="random stream (default 0)")
    p.add_argument("--night", type=float, default=0.5, metavar="P", help="fraction of night scenes (default 0.5)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    root = write_dataset(args.out, args.train, args.test, args.seed, tuple(args.size), args.night)
    print(f"wrote {args.train} train + {args.test} test synthetic pairs to {root}")
    return 0
