"""``tdfusion compare``: the papers' protocol, one task network retrained per image source."""
from __future__ import annotations

import argparse

from ..errors import TDFusionError
from .eval import add_common, build_split, emit, eval_config, folder_names
from . import SUMMARY

EPILOG = """\
For each source (ir, vis, the fused images of each --checkpoint, each --fused folder)
the same task network is trained from scratch on that source's training images, with the
same schedule and seed, then evaluated on that source's test images (TDFusion, Table 2).
Schedule: --epochs, data.batch_size, optim.lr_task, train.seed of the config.

examples:
  tdfusion compare --task seg --dataset msrs --data-root /data/MSRS --checkpoint runs/msrs_seg/last.pt \\
                   --fused results/cddfuse --names cddfuse --epochs 300 --json table2.json
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help=SUMMARY["compare"],
                       description="Retrain-per-source comparison of fusion methods on a downstream task.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", nargs="*", default=[], metavar="PATH",
                   help="tdfusion checkpoints whose fusion networks are compared (fused on the fly)")
    p.add_argument("--epochs", type=int, default=None, metavar="N", help="task training epochs (default train.epochs)")
    p.add_argument("--no-baselines", action="store_true", help="skip the ir-only and vis-only sources")
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import load_checkpoint, load_module
    from ..device import resolve_device
    from ..evaluate import compare_sources, fused_folder_source, fusion_source, input_source
    from ..train import build_task

    ckpts = [load_checkpoint(p) for p in args.checkpoint]
    cfg = eval_config(args, ckpts[0] if ckpts else None)
    if args.task:
        cfg["task"] = {**cfg["task"], "name": args.task}
    device = resolve_device(args.device or cfg["train"]["device"])
    train_set, test_set = build_split(cfg, "train_split"), build_split(cfg, "test_split")
    if not len(train_set) or not len(test_set):
        raise TDFusionError(f"dataset {cfg['dataset']['name']!r}: compare needs non-empty train and test splits")
    task = build_task(cfg["task"], train_set)

    sources = []
    for path, ckpt in zip(args.checkpoint, ckpts):
        name = "fused" if len(ckpts) == 1 else f"fused:{path}"
        sources.append(fusion_source(name, load_module(ckpt, "fusion", path).to(device).eval()))
    sources += [fused_folder_source(n, d) for n, d in zip(folder_names(args), args.fused)]
    if not args.no_baselines:
        sources += [input_source("ir", "a"), input_source("vis", "b")]
    if not sources:
        raise TDFusionError("nothing to compare: give --checkpoint, --fused or keep the baselines")
    dc, oc = cfg["data"], cfg["optim"]
    epochs = args.epochs if args.epochs is not None else cfg["train"]["epochs"]
    results = compare_sources(task, sources, train_set, test_set, epochs=epochs, batch_size=dc["batch_size"],
                              lr=oc["lr_task"], task_size=dc["task_size"], crop_size=dc["crop_size"],
                              seed=cfg["train"]["seed"], device=device, limit=args.limit)
    emit(results, args, f"{task.name} on {cfg['dataset']['name']}: task network retrained per source ({epochs} epochs)",
         {"task": task.name, "dataset": cfg["dataset"]["name"], "protocol": "retrain-per-source", "epochs": epochs})
    return 0
