#!/usr/bin/env python
"""Which source does the one-step meta objective reward, where? (``tdfusion.inspection.credit``)

A finite-difference probe of the papers' meta objective on the synthetic scenes, for a task
whose best fusion is known (infrared on people and cars, visible elsewhere; the task network an
identity). docs/results.md reports what it shows.

    python scripts/meta_credit.py runs/efficacy_quick/fusion/fixed_s0/last.pt --pairs 8
"""
from __future__ import annotations

import argparse
import json

import torch

CLASSES = ("background", "road", "marking", "person", "car")
OBJECTS = (3, 4)


def main(argv: list[str] | None = None) -> int:
    from tdfusion.checkpoint import load_fusion_net
    from tdfusion.data import build_dataset, collate, eval_view
    from tdfusion.inspection.credit import credit_table

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a checkpoint whose fusion network F is probed")
    p.add_argument("--size", type=int, nargs=2, default=[96, 128], metavar=("H", "W"))
    p.add_argument("--pairs", type=int, default=8, help="meta-train images (each with another as meta-test)")
    p.add_argument("--eta", type=float, default=1e-3, help="inner step size (F's learning rate)")
    p.add_argument("--delta", type=float, default=0.2, help="raise of w_IR on the class's pixels")
    p.add_argument("--json", help="write the table as JSON")
    args = p.parse_args(argv)
    net, _ = load_fusion_net(args.checkpoint)
    net = net.double().train()
    data = build_dataset("synthetic", None, "train", length=2 * args.pairs, size=list(args.size), target="mask")

    def view(i: int) -> dict:
        b = collate([eval_view(data[i], tuple(args.size))])
        return {**b, "a": b["a"].double(), "b": b["b"].double()}

    views = [(view(i), view(args.pairs + i)) for i in range(args.pairs)]
    summary = credit_table(net, views, CLASSES, OBJECTS, args.eta, args.delta)
    for s, row in summary.items():
        print(s)
        for c, r in row.items():
            wanted = "IR" if CLASSES.index(c) in OBJECTS else "VIS"
            print(f"  {c:10s} dL_outer per pixel {r['mean_per_pixel']:+.3e}   rewards IR in {r['rewards_ir']}/{r['of']} "
                  f"images (known optimum: {wanted})")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(summary, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
