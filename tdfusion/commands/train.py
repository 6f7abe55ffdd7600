"""``tdfusion train`` (also ``python train_fusion.py``): learn F, G and T (Algorithm 1)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..training import run_folder
from ..config import FLAG_KEYS, resolve
from ..errors import TDFusionError
from . import SUMMARY

EPILOG = """\
examples:
  tdfusion train --task recon --dataset synthetic                  # runs out of the box
  tdfusion train --task seg --dataset msrs --data-root /data/MSRS
  tdfusion train --config configs/refusion_mif.yaml train.epochs=10 train.device=cuda
  tdfusion train --resume runs/synthetic_recon                     # continue a killed run
  torchrun --nproc_per_node 4 train_fusion.py --config configs/tdfusion_msrs_seg.yaml   # 4 GPUs

Configuration: configs/base.yaml lists every key with its default; a recipe config
inherits it. --dataset/--task pick the shipped recipe for that pair (configs/*.yaml with
`recipe: {dataset, task}`); KEY=VALUE arguments override any key (values are YAML).

Several GPUs or machines: launch with torchrun (docs/distributed.md); data.batch_size is
per process. Ctrl-C (or SIGTERM) saves last.pt and exits; --resume continues from it.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help=SUMMARY["train"],
                       description="Meta-learn the fusion loss for a downstream task (TDFusion / ReFusion "
                                   "Algorithm 1) and train the fusion and task networks.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=run)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="YAML", help="run config (default: the recipe for --dataset/--task)")
    p.add_argument("--task", metavar="NAME", help="downstream task: recon, seg, det (task.name; default: the "
                                                   "recipe's)")
    p.add_argument("--dataset", metavar="NAME", help="dataset or recipe name, e.g. synthetic, msrs, fmb, m3fd, "
                                                      "llvip, msrs_det, ivif, mif, mfif, meif (dataset.name); "
                                                      "required unless --config or --resume names the run")
    p.add_argument("--data-root", metavar="DIR", help="dataset root folder (dataset.root)")
    p.add_argument("--out", metavar="DIR", help="run folder (run.out; default runs/<dataset>_<task>)")
    p.add_argument("--device", metavar="DEV", help="cuda, cuda:1, cpu (train.device; default: cuda when available)")
    p.add_argument("--epochs", type=int, metavar="N", help="number of epochs (train.epochs; default: the "
                                                            "recipe's, e.g. 40 for the papers' recipes)")
    p.add_argument("--task-weights", metavar="PATH", help="local weights for the task network (task.weights)")
    p.add_argument("--preset", metavar="NAME",
                   help="lay a preset over the recipe: official = the released TDFusion code's choices "
                        "(configs/presets/, docs/fidelity.md)")
    p.add_argument("--trust-weights", action="store_true", default=None,
                   help="let --task-weights be a pickled file (an ultralytics checkpoint for det, a pickled "
                        "SegFormer for seg, recon's weights): unpickling can run any code the file carries, so "
                        "only for files you trust (task.trust_weights)")
    p.add_argument("--deterministic", action="store_true", default=None,
                   help="deterministic kernels: bit-identical CPU runs for a seed (train.deterministic)")
    p.add_argument("--resume", nargs="?", const="", metavar="PATH",
                   help="continue a run: a run folder or checkpoint (default: last.pt of --out)")
    p.add_argument("--exist-ok", action="store_true",
                   help="start afresh in a run folder that holds a run, deleting that run's files (default: "
                        "refuse, and say how to resume it)")
    p.add_argument("--estimate", action="store_true",
                   help="print the run's expected wall time from a few measured steps of each phase "
                        "(run.estimate_steps, at least 1) and exit; nothing is written")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. train.meta_steps=50")


def resolve_config(args: argparse.Namespace) -> tuple[dict, Path | None]:
    """The run config from the arguments; also the checkpoint to resume from, if any."""
    resume_ckpt = _resume_path(args) if args.resume is not None else None
    saved = None
    if resume_ckpt is not None and not args.config:
        from ..checkpoint import load_checkpoint

        extra = load_checkpoint(resume_ckpt).get("extra")
        saved = extra.get("config") if isinstance(extra, dict) else None
        if not isinstance(saved, dict) or not saved:
            raise TDFusionError(f"{resume_ckpt}: holds no run config; pass --config")
    flags = {flag: getattr(args, flag, None) for flag in FLAG_KEYS}
    cfg = resolve(args.config, dataset=None if saved else args.dataset, saved=saved, preset=args.preset,
                  overrides=args.overrides, **flags)
    return cfg, resume_ckpt


def _resume_path(args: argparse.Namespace) -> Path:
    target = Path(args.resume) if args.resume else (Path(args.out) if args.out else None)
    if target is None:
        raise TDFusionError("--resume needs a run folder or checkpoint (or --out)")
    path = target / run_folder.LAST if target.is_dir() else target
    if not path.is_file():
        raise TDFusionError(f"{path}: no checkpoint to resume from")
    return path


def run_dir_for(cfg: dict, resume_ckpt: Path | None, exist_ok: bool = False) -> Path:
    """The run folder. A folder that holds a run is refused (as ultralytics refuses an
    existing name) unless ``exist_ok``: a new run never writes beside another's files."""
    if resume_ckpt is not None:  # continue in the checkpoint's folder, wherever it now is
        return resume_ckpt.parent
    if cfg["run"]["out"]:
        out = Path(cfg["run"]["out"])
    else:
        recipe = cfg.get("recipe") or {}
        name = recipe.get("dataset") or cfg["dataset"]["name"]
        out = Path("runs") / f"{name}_{cfg['task']['name']}"
    if (out / run_folder.LAST).exists() and not exist_ok:
        state = "a finished run" if (out / run_folder.SUMMARY).exists() else "a stopped run"
        raise TDFusionError(f"{out}: holds {state}; continue it with --resume {out}, start again in it with "
                            "--exist-ok, or pick another --out")
    return out


def require_recipe(args: argparse.Namespace) -> None:
    """A run names what it trains: the base config alone is the papers' 40 x 200-step schedule
    on the synthetic scenes, hours on a CPU, and nobody asked for it."""
    if args.config or args.dataset or args.resume is not None:
        return
    if any(o.split("=", 1)[0].strip() == "dataset.name" for o in args.overrides):
        return
    from ..config import recipe_names

    raise TDFusionError("train: name a recipe with --dataset (and --task) or give --config; recipes: "
                        f"{', '.join(recipe_names())}; the quick one: --task recon --dataset synthetic "
                        "(about a minute on 2 CPU cores)")


def run(args: argparse.Namespace) -> int:
    from ..training import distributed
    from ..training.trainer import MetaTrainer

    require_recipe(args)
    cfg, resume_ckpt = resolve_config(args)
    if args.estimate:
        return _estimate(cfg, resume_ckpt)
    topology, _ = distributed.setup(cfg["train"]["device"])  # joins torchrun's process group, if any
    try:
        # Rank 0 picks the folder (it alone writes there); the others follow it.
        run_dir = distributed.broadcast_object(
            run_dir_for(cfg, resume_ckpt, args.exist_ok) if topology.rank == 0 else None)
        trainer = MetaTrainer(cfg, run_dir, resume_ckpt)  # checks the task and data: nothing is named before
        if topology.rank == 0:
            if args.exist_ok and resume_ckpt is None:
                run_folder.clear_run(run_dir)
            where = f" on {topology.world_size} processes" if topology.distributed else ""
            print(f"run folder: {run_dir}{where}" + (f" (resuming from {resume_ckpt})" if resume_ckpt else ""))
        summary = trainer.fit()
        if topology.rank == 0:
            _print_summary(summary)
    finally:
        distributed.teardown()
    return 0


def _estimate(cfg: dict, resume_ckpt: Path | None) -> int:
    """``--estimate``: the trainer is built (not its folder), a few steps timed and undone.
    Without the recipe's data, on stand-in images of its size, counted for its dataset."""
    from ..training.estimate import estimate_run, project, stand_in_config
    from ..training.trainer import MetaTrainer

    steps = max(1, int(cfg["run"]["estimate_steps"] or 0))
    stand_in = stand_in_config(cfg) if resume_ckpt is None else None
    trainer = MetaTrainer(stand_in or cfg, Path(cfg["run"]["out"] or "."), resume_ckpt)
    estimate = estimate_run(trainer, steps)
    if stand_in is not None:
        recipe = cfg["recipe"]
        (h, w), (train, test) = recipe["image_size"], recipe["pairs"]
        print(f"no data at {cfg['dataset']['root'] or '(no --data-root)'}: timed on synthetic {w}x{h} stand-in "
              f"images (decoding not timed), counted for {cfg['dataset']['name']}'s {train} training and "
              f"{test} test pairs")
        estimate = project(estimate, cfg, train, test)
    print(estimate.describe(str(trainer.device), steps))
    return 0


def _print_summary(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    # The heading is printed on its own line: as a table title it wraps to the table's width.
    print(f"run {summary['run']}: {summary['epochs']} epochs, {summary['global_steps']} steps "
          "(last epoch's mean losses, test metrics)")
    table = Table()
    table.add_column("what")
    table.add_column("value", justify="right")
    for section in ("last_epoch_meta", "last_epoch_fusion"):
        for k, v in summary.get(section, {}).items():
            table.add_row(f"{section.replace('last_epoch_', '')} {k}", f"{v:.4g}")
    for k, v in (summary.get("eval") or {}).items():
        if isinstance(v, (int, float)) and k != "epoch":
            table.add_row(f"test {k}", f"{v:.4g}")
    Console().print(table)
    print(f"checkpoint: {summary['run']}/{run_folder.LAST}   samples: {summary['run']}/{run_folder.SAMPLES}/")
