#!/usr/bin/env python
"""F's mean output, step by step, through the meta phase and the fusion phase of a run's
first epoch: how the MSRS reconstruction-driven collapse was reproduced (docs/results.md).

    python scripts/fusion_phase_probe.py runs/efficacy_full/msrs/recon/config.yaml \\
        --meta-steps 30 --fusion-steps 28 [--lr-fusion 1e-4] [--alpha 0]

Prints F's mean output on the first three training pairs (whole views at the task size)
after the meta steps (with the largest change of any of F's parameters, which the meta
phase must leave alone) and every 4 fusion steps, with G's mean weight for A;
``--meta-steps 0`` starts the fusion phase from G's initialisation.
"""
from __future__ import annotations

import argparse
import dataclasses
import tempfile

import torch
import yaml

from tdfusion.data import eval_view
from tdfusion.meta import objectives
from tdfusion.training.trainer import MetaTrainer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config", help="a run's config.yaml")
    p.add_argument("--meta-steps", type=int, default=30)
    p.add_argument("--fusion-steps", type=int, default=28)
    p.add_argument("--lr-fusion", type=float, default=None, help="override optim.lr_fusion")
    p.add_argument("--alpha", type=float, default=None, help="override the gradient term's weight (fusion phase)")
    args = p.parse_args()

    cfg = yaml.safe_load(open(args.config))
    cfg["train"]["epochs"] = 1
    if args.lr_fusion is not None:
        cfg["optim"]["lr_fusion"] = args.lr_fusion
    trainer = MetaTrainer(cfg, tempfile.mkdtemp())
    size = cfg["data"]["task_size"]
    views = [eval_view(trainer.train_set[i], size) for i in range(min(3, len(trainer.train_set)))]

    @torch.no_grad()
    def probe() -> str:
        trainer.fusion.eval()
        means = [trainer.fusion(v["a"][None], v["b"][None]).mean().item() for v in views]
        v = views[0]
        w = objectives.loss_weights(trainer.lossgen, objectives.params_of(trainer.lossgen), v["a"][None],
                                    v["b"][None], trainer.settings)
        trainer.fusion.train()
        return f"F means {' '.join(f'{m:.3f}' for m in means)} | G's mean w_A {w[:, 0].mean().item():.2f}"

    print("start:", probe(), flush=True)
    before = {k: v.clone() for k, v in trainer.fusion.state_dict().items()}
    trainer.pos.phase = "meta"
    trainer._run_phase("meta", args.meta_steps)
    moved = max((v - before[k]).abs().max().item() for k, v in trainer.fusion.state_dict().items())
    print(f"after {args.meta_steps} meta steps:", probe(), f"| largest change of an F parameter {moved:g}", flush=True)
    if args.alpha is not None:
        trainer.settings = dataclasses.replace(trainer.settings, alpha=args.alpha)
    step = trainer.fusion_step

    def fusion_step(batch):
        logs = step(batch)
        if trainer.pos.step % 4 == 0:
            print(f"fusion step {trainer.pos.step}:", probe(), flush=True)
        return logs

    trainer.fusion_step = fusion_step
    trainer.pos.phase, trainer.pos.step = "fusion", 0
    trainer._run_phase("fusion", args.fusion_steps)


if __name__ == "__main__":
    main()
