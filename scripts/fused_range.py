#!/usr/bin/env python
"""Raw output range of fusion checkpoints on a folder of test pairs, and the fusion loss's
intensity term (equal weights) of two reference images: a black one and the even blend.
For a checkpoint that holds the loss generator G, also G's mean weight on the first source
and the share of its weights within 1e-3 of 0 or 1 (saturated: no gradient passes).

    python scripts/fused_range.py ../shared/data/msrs_det/test runs/efficacy_full/msrs/{fixed,recon,det}/last.pt

What docs/results.md uses to show that a training collapsed to a near-black F, or that G
saturated.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from tdfusion.checkpoint import load_fusion_net, trained_lossgen
from tdfusion.data.base import luminance
from tdfusion.inference import fuse_luma
from tdfusion.io import match_pairs
from tdfusion.training.health import BOUND, HealthStats


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("split", help="a folder with ir/ and vi/ (e.g. ../shared/data/msrs_det/test)")
    p.add_argument("checkpoints", nargs="+")
    args = p.parse_args()
    root = Path(args.split)
    sources = [(luminance(a), luminance(b)) for _, a, b in match_pairs(root / "ir", root / "vi")]

    def intensity(fused, a, b):  # tdfusion.meta.losses.intensity_loss with w_a = w_b = 0.5
        return 0.5 * ((fused - a) ** 2).mean() + 0.5 * ((fused - b) ** 2).mean()

    black = np.mean([intensity(0.0, a, b) for a, b in sources])
    blend = np.mean([intensity((a + b) / 2, a, b) for a, b in sources])
    print(f"{len(sources)} pairs; intensity term (equal weights): black image {black:.4f}, even blend {blend:.4f}")
    for ckpt in args.checkpoints:
        net, record = load_fusion_net(ckpt, torch.device("cpu"))
        outs = [fuse_luma(net, a, b) for a, b in sources]
        print(f"{ckpt}: raw output mean {np.mean([o.mean() for o in outs]):.3g}, "
              f"max {max(o.max() for o in outs):.3g}")
        lossgen = trained_lossgen(record, ckpt)
        if lossgen is not None:
            mean_wa, at_bounds = lossgen_figures(lossgen, sources)
            print(f"  G: mean w_a {mean_wa:.3g}, weights within {BOUND:g} of 0 or 1: {at_bounds:.1%}")


@torch.no_grad()
def lossgen_figures(lossgen: torch.nn.Module, sources) -> tuple[float, float]:
    """G's mean ``w_a`` over the pairs and the share of its weights at a bound."""
    stats, means = HealthStats(lossgen), []
    for a, b in sources:
        weights = lossgen(*(torch.from_numpy(x)[None, None] for x in (a, b)))  # (1, 2 or 4, H, W)
        stats.add_weights(weights)
        means.append(weights[:, 0].mean().item())
    return float(np.mean(means)), stats.figures()["lossgen_at_bounds"]

if __name__ == "__main__":
    main()
