"""``tdfusion eval`` (also ``python eval_downstream.py``): downstream task metrics of image sources."""
from __future__ import annotations

import argparse

from ..errors import TDFusionError
from . import SUMMARY
from .common import add_source_arguments, config_for, folder_names

EPILOG = """\
examples:
  tdfusion eval --task seg --dataset fmb --data-root /data/FMB --checkpoint runs/fmb_seg/last.pt
  tdfusion eval --task det --dataset msrs_det --data-root ../shared/data/msrs_det \\
                --checkpoint runs/msrs_det/last.pt --fused results/cddfuse results/tardal --names cddfuse tardal
  tdfusion eval --task seg --dataset synthetic --checkpoint runs/synthetic_seg/last.pt --json seg.json

A diagnostic of a training run, not a comparison of methods: every source is scored
with the task network stored in the checkpoint, the one trained jointly with the fusion
network on its fused images, so it favours that checkpoint. Sources: its fused images
(computed on the fly from the task-size inputs, as in training), the two inputs alone
(ir, vis) unless --no-baselines, and each --fused folder (<dir>/test/<stem>.* or
<dir>/<stem>.*). All are resized to the task input size; targets stay at native
resolution. JSON: "protocol": "checkpoint-task-network", the first source's metrics at
the top level, every source under "sources". CSV: one row per source, the same protocol
in a column; every column (psnr_a, psnr_b, per_class.<class>.IoU, ...) is explained in
docs/evaluation.md. To compare fusion methods on a task, retrain the task network per
source: tdfusion compare.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help=SUMMARY["eval"],
                       description="Diagnostic: score a checkpoint's own task network on its fused images "
                                   "and baselines (to compare methods, use tdfusion compare).",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=run)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", metavar="PATH", help="tdfusion checkpoint holding the task network (and F)")
    p.add_argument("--task-weights", metavar="PATH", help="task network weights instead of a checkpoint's")
    p.add_argument("--no-baselines", action="store_true", help="skip the ir-only and vis-only rows")
    add_source_arguments(p)


def emit(results: dict, args: argparse.Namespace, title: str, extra: dict | None = None) -> None:
    from ..evaluation.results import print_table, write_csv, write_json

    print_table(results, title)
    primary = next(iter(results))
    if args.json:
        write_json(args.json, results, primary, extra)
    if args.csv:
        write_csv(args.csv, results, (extra or {}).get("protocol"))


def run(args: argparse.Namespace) -> int:
    import torch

    from ..checkpoint import load_checkpoint, load_module
    from ..data import build_split
    from ..device import resolve_device
    from ..evaluation.sources import evaluate_sources, fused_folder_source, fusion_source, input_source
    from ..tasks import build_task

    if not args.checkpoint and not args.task_weights:
        raise TDFusionError("give --checkpoint (a tdfusion run's checkpoint) or --task-weights")
    ckpt = load_checkpoint(args.checkpoint) if args.checkpoint else None
    if ckpt is not None and args.task and ckpt.get("task", {}).get("name") not in (None, args.task):
        raise TDFusionError(f"{args.checkpoint}: checkpoint of task {ckpt['task']['name']!r}, not {args.task!r}")
    if ckpt is not None and "task" not in ckpt and not args.task_weights:
        raise TDFusionError(f"{args.checkpoint}: holds no task network; pass --task-weights")
    cfg = config_for(args, ckpt)
    device = resolve_device(args.device or cfg["train"]["device"])
    test_set = build_split(cfg, "test_split")
    if len(test_set) == 0:
        raise TDFusionError(f"dataset {cfg['dataset']['name']!r}: the test split is empty")

    if ckpt and "task" in ckpt:
        # The checkpoint holds the weights themselves; the path it was initialised from may be gone.
        task_cfg = dict(ckpt["task"]["config"], name=ckpt["task"]["name"], weights=None)
    else:
        task_cfg = dict(cfg["task"])
    if args.task_weights:
        task_cfg["weights"] = args.task_weights
    task = build_task(task_cfg, test_set)
    task_net = task.build_network()
    if ckpt is not None and "task" in ckpt and not args.task_weights:
        try:
            task_net.load_state_dict(ckpt["task"]["state_dict"])
        except RuntimeError as exc:
            raise TDFusionError(f"{args.checkpoint}: task weights do not match ({str(exc).splitlines()[0]})") from None
    task_net.to(device)

    sources = []
    if ckpt is not None and "fusion" in ckpt:
        sources.append(fusion_source("fused", load_module(ckpt, "fusion", str(args.checkpoint)).to(device).eval()))
    sources += [fused_folder_source(n, d) for n, d in zip(folder_names(args), args.fused)]
    if not args.no_baselines:
        sources += [input_source("ir", "a"), input_source("vis", "b")]
    if args.fused and ckpt is not None and "task" in ckpt and not args.task_weights:
        print("note: every source is scored with the checkpoint's own task network, trained on the checkpoint's "
              "fused images, so this favours the checkpoint; to compare methods, use tdfusion compare")
    with torch.no_grad():
        results = evaluate_sources(task, task_net, sources, test_set, cfg["data"]["task_size"], device,
                                   limit=args.limit)
    emit(results, args, f"diagnostic: {task.name} on {cfg['dataset']['name']} ({cfg['dataset']['test_split']}), "
                        f"scored by the checkpoint's own task network",
         {"task": task.name, "dataset": cfg["dataset"]["name"], "protocol": "checkpoint-task-network"})
    return 0
