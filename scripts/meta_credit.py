#!/usr/bin/env python
"""Which source does the meta objective reward, where? A finite-difference probe.

For a task whose best fusion is known -- the fused image should equal the infrared image on
people and cars and the visible image everywhere else ("known mix", the task network an
identity) -- this measures, by finite differences of the meta objective itself (no
meta-gradient code involved), how the outer task loss changes when G's weight for the
infrared image is raised on the pixels of one class of the meta-train image:

    dL_outer = L_t(F'(w + d * class_mask)(meta-test)) - L_t(F'(w)(meta-test)),
    F'(w) = F - eta * dL_f(F, w)/dtheta_F  on the meta-train image (one inner step, Eq. 4).

A negative value means the meta objective rewards more infrared weight on that class (what the
known optimum asks for on people and cars), a positive one more visible weight. Two settings:
the meta-test image is the meta-train image itself, or another image (the papers' disjoint
meta-train and meta-test sets). docs/results.md reports what this shows.

    python scripts/meta_credit.py runs/efficacy_quick/fusion/fixed/last.pt --pairs 8
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from torch.func import functional_call

CLASSES = ("background", "road", "marking", "person", "car")
OBJECTS = (3, 4)


def known_mix_loss(fused: torch.Tensor, batch: dict) -> torch.Tensor:
    """Distance of the fused image to IR on people and cars, VIS elsewhere."""
    m = batch["mask"].unsqueeze(1)
    target = torch.where((m == OBJECTS[0]) | (m == OBJECTS[1]), batch["a"], batch["b"])
    return ((fused - target) ** 2).mean()


def outer_loss(net, params: dict, train: dict, test: dict, w_a: torch.Tensor, eta: float, form: str) -> float:
    from tdfusion.meta.losses import fusion_loss

    names = [k for k, p in params.items() if p.requires_grad]
    leaves = {k: params[k].detach().clone().requires_grad_(True) for k in names}
    frozen = {k: v.detach() for k, v in params.items()}
    weights = torch.cat([w_a, 1 - w_a], 1)
    out = fusion_loss(form, functional_call(net, {**frozen, **leaves}, (train["a"], train["b"])),
                      train["a"], train["b"], weights, 1.0, "paper")
    grads = torch.autograd.grad(out["loss"], [leaves[k] for k in names])
    stepped = {**frozen, **{k: frozen[k] - eta * g for k, g in zip(names, grads)}}
    with torch.no_grad():
        return float(known_mix_loss(functional_call(net, stepped, (test["a"], test["b"])), test))


def main(argv: list[str] | None = None) -> int:
    from tdfusion.checkpoint import load_fusion_net
    from tdfusion.data import build_dataset, collate, eval_view

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a checkpoint whose fusion network F is probed")
    p.add_argument("--size", type=int, nargs=2, default=[96, 128], metavar=("H", "W"))
    p.add_argument("--pairs", type=int, default=8, help="meta-train images (each with another as meta-test)")
    p.add_argument("--eta", type=float, default=1e-3, help="inner step size (F's learning rate)")
    p.add_argument("--delta", type=float, default=0.2, help="raise of w_IR on the class's pixels")
    p.add_argument("--json", help="write the table as JSON")
    args = p.parse_args(argv)
    torch.set_default_dtype(torch.float64)  # differences of ~1e-7 in losses of ~1e-2
    net, _ = load_fusion_net(args.checkpoint)
    net = net.double().train()
    params = dict(net.named_parameters())
    data = build_dataset("synthetic", None, "train", length=2 * args.pairs, size=list(args.size), target="mask")

    def view(i: int) -> dict:
        b = collate([eval_view(data[i], tuple(args.size))])
        return {**b, "a": b["a"].double(), "b": b["b"].double()}

    table = {setting: {c: [] for c in CLASSES} for setting in ("same image", "other image")}
    base = torch.full((1, 1, *args.size), 0.5)
    for i in range(args.pairs):
        train, other = view(i), view(args.pairs + i)
        mask = train["mask"].unsqueeze(1)
        for setting, test in (("same image", train), ("other image", other)):
            ref = outer_loss(net, params, train, test, base, args.eta, "tdfusion")
            for k, c in enumerate(CLASSES):
                sel = (mask == k).double()
                if sel.sum() >= 10:
                    raised = outer_loss(net, params, train, test, base + args.delta * sel, args.eta, "tdfusion")
                    table[setting][c].append((raised - ref) / float(sel.sum()))
    summary = {s: {c: {"mean_per_pixel": float(np.mean(v)), "rewards_ir": int(np.sum(np.array(v) < 0)), "of": len(v)}
                   for c, v in row.items() if v} for s, row in table.items()}
    for s, row in summary.items():
        print(s)
        for c, r in row.items():
            wanted = "IR" if c in ("person", "car") else "VIS"
            print(f"  {c:10s} dL_outer per pixel {r['mean_per_pixel']:+.3e}   rewards IR in {r['rewards_ir']}/{r['of']} "
                  f"images (known optimum: {wanted})")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(summary, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
