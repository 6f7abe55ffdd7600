#!/usr/bin/env python
"""How much of TDFusion's fusion loss G controls: the two terms of L_f for F = the even blend
(w = 1/2), on the synthetic training scenes and on 256-pixel crops of the MSRS training pairs.

G weighs only the intensity term; the gradient term (the larger source gradient, alpha = 1)
is the same whatever G proposes. docs/results.md, "How much of F's loss G controls".

    python scripts/loss_terms.py ../shared/data/msrs_det/train
"""
from __future__ import annotations

import argparse

import numpy as np
import torch


def terms(pairs) -> tuple[float, float]:
    """Mean intensity and gradient terms of L_f (tdfusion form, w = 1/2) for F = (A + B) / 2."""
    from tdfusion.meta.losses import tdfusion_loss

    ints, grads = [], []
    for a, b in pairs:
        a, b = (torch.from_numpy(np.ascontiguousarray(x))[None, None] for x in (a, b))
        out = tdfusion_loss(0.5 * (a + b), a, b, torch.full((1, 2, *a.shape[2:]), 0.5))
        ints.append(float(out["int"]))
        grads.append(float(out["grad"]))
    return float(np.mean(ints)), float(np.mean(grads))


def main(argv: list[str] | None = None) -> int:
    from tdfusion.data import build_dataset
    from tdfusion.data.base import luminance
    from tdfusion.io import match_pairs

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("msrs", nargs="?", help="a folder with ir/ and vi/ (the MSRS training pairs)")
    p.add_argument("--crop", type=int, default=256)
    args = p.parse_args(argv)
    ds = build_dataset("synthetic", None, "train", length=48, size=[96, 128], target="mask")
    print("synthetic 96x128, 48 training scenes: intensity %.4f, gradient %.4f" % terms(
        (ds[i].a, ds[i].b) for i in range(len(ds))))
    if args.msrs:
        rng = np.random.default_rng(0)
        crops = []
        for _, pa, pb in match_pairs(f"{args.msrs}/ir", f"{args.msrs}/vi"):
            a, b = luminance(pa), luminance(pb)
            y, x = rng.integers(0, a.shape[0] - args.crop), rng.integers(0, a.shape[1] - args.crop)
            crops.append((a[y:y + args.crop, x:x + args.crop], b[y:y + args.crop, x:x + args.crop]))
        print(f"{args.msrs}: {len(crops)} pairs, one random {args.crop}-pixel crop each: "
              "intensity %.4f, gradient %.4f" % terms(crops))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
