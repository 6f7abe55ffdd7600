"""``tdfusion compare``: the papers' protocol, one task network retrained per image source."""
from __future__ import annotations

import argparse
import contextlib
import signal
from pathlib import Path

from ..errors import TDFusionError
from . import SUMMARY
from .common import add_source_arguments, config_for, folder_names

EPILOG = """\
For each source (ir, vis, the fused images of each --checkpoint, each --fused folder) and
each seed, a fresh task network is trained on that source's training images with the
downstream regime (config section `downstream:`, preset `paper` = the downstream code
TDFusion names, or `fast` for CPU runs), then scored on that source's test images
(TDFusion Sec. 4.3, Table 2). Every source goes through the same path: a checkpoint's
images are made exactly as `tdfusion fuse` makes them, then read back like a --fused
folder. The table shows mean ± std over each source's runs, and each source's paired
difference to the baseline (--baseline; default the source named `fixed`, else the first
checkpoint): the mean of the run-by-run differences (same downstream seed, and the same
fusion run where both sources have several), its std, and how many runs came out above.
">" / "<" mark a difference whose 95% t-interval excludes 0.

Fusion-training seeds: give one name to several checkpoints (--checkpoint-names fixed fixed
seg seg); they are pooled as one source whose runs are (fusion run x seed), and paired
with another pooled source run by run.

examples:
  tdfusion compare --task seg --dataset synthetic --checkpoint runs/a/last.pt runs/b/last.pt \\
                   --seeds 0 1 --preset fast --json x.json
  tdfusion compare --task seg --dataset synthetic --checkpoint f0/last.pt f1/last.pt s0/last.pt s1/last.pt \\
                   --checkpoint-names fixed fixed seg seg --baseline fixed --seeds 0 1 2 --json x.json
  tdfusion compare --task seg --dataset msrs --data-root /data/MSRS --checkpoint runs/msrs_seg/last.pt \\
                   --fused results/cddfuse --names cddfuse --seeds 0 1 2 --json table2.json
  tdfusion compare --task det --dataset msrs_det --data-root ../shared/data/msrs_det --preset fast \\
                   --checkpoint runs/msrs_det/last.pt --seeds 0 1 2 --jobs 2 downstream.epochs=60
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help=SUMMARY["compare"],
                       description="Retrain-per-source comparison of fusion methods on a downstream task.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", nargs="*", default=[], metavar="PATH",
                   help="tdfusion or published checkpoints whose fusion networks are compared")
    p.add_argument("--checkpoint-names", nargs="+", default=None, metavar="NAME",
                   help="names for the --checkpoint sources (default: 'fused' for one, the run folder's name "
                        "else); checkpoints that share a name are one method's fusion-training runs, pooled")
    p.add_argument("--baseline", metavar="NAME",
                   help="the source every other is paired with (default: 'fixed' if a source has that name, "
                        "else the first checkpoint, else the first source)")
    p.add_argument("--seeds", nargs="+", type=int, default=None, metavar="S",
                   help="train every source once per seed (default: train.seed); the table shows mean ± std")
    p.add_argument("--preset", choices=("paper", "fast"),
                   help="downstream regime preset (downstream.preset; default paper: the papers' 300 epochs at "
                        "input 512, hours per training on a CPU, where the projected total is printed first; "
                        "fast: a CPU-sized schedule)")
    p.add_argument("--epochs", type=int, default=None, metavar="N",
                   help="task training epochs (downstream.epochs; default: the preset's, paper 300, fast 40)")
    p.add_argument("--estimate", action="store_true",
                   help="print the preset and the projected training time, then exit (after making the "
                        "source folders, which the estimate trains on)")
    p.add_argument("--task-weights", metavar="PATH", help="local pretrained task weights (downstream.weights)")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="trainings run at once, each on its share of the CPU threads (default 1)")
    p.add_argument("--work-dir", metavar="DIR",
                   help="keep the source folders here (grey images, targets, and each checkpoint's fuse "
                        "outputs) instead of a temporary folder")
    p.add_argument("--batch", type=int, default=None, metavar="N",
                   help="pairs per fusion call when a checkpoint's images are made, as tdfusion fuse --batch "
                        "(default: 8 on GPU, one at a time on CPU; the images do not depend on it)")
    p.add_argument("--no-baselines", action="store_true", help="skip the ir-only and vis-only sources")
    add_source_arguments(p)
    p.set_defaults(func=run)


def checkpoint_names(args: argparse.Namespace) -> list[str]:
    if args.checkpoint_names is not None:
        if len(args.checkpoint_names) != len(args.checkpoint):
            raise TDFusionError(f"--checkpoint-names gives {len(args.checkpoint_names)} names for "
                                f"{len(args.checkpoint)} checkpoints")
        return list(args.checkpoint_names)
    if len(args.checkpoint) == 1:
        return ["fused"]
    names = [Path(p).parent.name if Path(p).stem in ("last", "best") else Path(p).stem for p in args.checkpoint]
    return names if len(set(names)) == len(names) else [f"fused:{p}" for p in args.checkpoint]


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import load_checkpoint
    from ..data import build_split
    from ..evaluation.comparison import ImageSource, compare, write_payload
    from ..device import resolve_device
    from ..evaluation.downstream_settings import downstream_settings, with_overrides
    from ..evaluation.results import print_summary_table, write_summary_csv
    from ..tasks import build_task

    ckpts = [load_checkpoint(p) for p in args.checkpoint]
    # The checkpoints are only fusion networks here: the dataset and task come from
    # --config/--dataset when given, else from the first checkpoint's run config.
    saved = None if (args.config or args.dataset) else next(
        (c for c in ckpts if c.get("extra", {}).get("config")), None)
    cfg = config_for(args, saved)  # --task included
    section = dict(cfg.get("downstream") or {})
    if args.preset:
        section["preset"] = args.preset
    settings = with_overrides(downstream_settings(section, cfg["task"]["name"]), epochs=args.epochs,
                              weights=args.task_weights)
    if args.jobs < 1:
        raise TDFusionError(f"--jobs must be >= 1, got {args.jobs}")
    if args.batch is not None and args.batch < 1:
        raise TDFusionError(f"--batch {args.batch}: must be at least 1")
    device = resolve_device(args.device or cfg["train"]["device"])
    train_set, test_set = build_split(cfg, "train_split"), build_split(cfg, "test_split")
    if not len(train_set) or not len(test_set):
        raise TDFusionError(f"dataset {cfg['dataset']['name']!r}: compare needs non-empty train and test splits")
    task = build_task(cfg["task"], train_set)  # checks the task suits the dataset before any work
    if task.target_kind != train_set.target_kind:
        raise TDFusionError(f"dataset {cfg['dataset']['name']!r} provides {train_set.target_kind!r} targets but task "
                            f"{task.name!r} needs {task.target_kind!r}")

    sources = [ImageSource(n, "checkpoint", str(p)) for n, p in zip(checkpoint_names(args), args.checkpoint)]
    sources += [ImageSource(n, "folder", str(d)) for n, d in zip(folder_names(args, pooled=True), args.fused)]
    if not args.no_baselines:
        sources += [ImageSource("ir", "input", "a"), ImageSource("vis", "input", "b")]
    seeds = args.seeds if args.seeds is not None else [int(cfg["train"]["seed"])]
    task_cfg = {k: v for k, v in cfg["task"].items()}
    preset = section.get("preset") or "paper"
    print(f"compare: downstream preset {preset}{'' if args.preset else ' (--preset not given)'}: "
          f"{settings.epochs} epochs, batch {settings.batch_size}, input {settings.input_size}; "
          f"{len(sources)} sources x {len(seeds)} seeds = {len(sources) * len(seeds)} trainings on {device}", flush=True)
    paper_on_cpu = preset == "paper" and device.type == "cpu"
    if paper_on_cpu:
        print("  the paper preset is sized for a GPU: --preset fast is a CPU-sized schedule", flush=True)
    with _stop_on_sigterm():
        payload = compare(task_cfg, settings, sources, train_set, test_set, seeds=seeds, device=str(device),
                          work_dir=args.work_dir, jobs=args.jobs, limit=args.limit, baseline=args.baseline,
                          estimate=args.estimate or paper_on_cpu, estimate_only=args.estimate, batch=args.batch)
    if payload is None:  # --estimate
        return 0
    payload.update({"task": task.name, "dataset": cfg["dataset"]["name"]})
    title = (f"{task.name} on {cfg['dataset']['name']}: task network retrained per source "
             f"({settings.epochs} epochs, preset {section.get('preset', 'paper')}, seeds {' '.join(map(str, seeds))})")
    print_summary_table(payload, title)
    if args.json:
        write_payload(args.json, payload)
    if args.csv:
        write_summary_csv(args.csv, payload)
    return 0


@contextlib.contextmanager
def _stop_on_sigterm():
    """SIGTERM (a scheduler's kill, ``kill PID``) unwinds like Ctrl-C: the temporary source
    folders are deleted and the worker trainings ended, nothing is left behind."""
    def stop(signum, _frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
