"""The run config's ranges and choices, checked before anything is built; the losses,
checked after every step."""
from __future__ import annotations

import math
from pathlib import Path

from ..errors import TDFusionError
from ..meta.losses import FUSION_LOSSES, GRADIENT_TARGETS
from ..meta.updates import G_UPDATE_RULES
from .modules import META_OBJECTIVES
from ..precision import PRECISIONS
from . import distributed, run_folder
from .batches import Position
from .runlog import LOGGERS

__all__ = ["check_finite", "check_values"]

#: (key, smallest allowed value) of the whole-number settings; None where null is allowed.
_MINIMUM = {"data.batch_size": 1, "data.crop_size": 8, "train.epochs": 1,
            "train.warmup_epochs": 0,
            "train.meta_steps": 0, "train.fusion_steps": 1, "train.seed": 0, "run.save_every": 1, "run.keep": 1,
            "run.samples": 0, "run.eval_every": 0, "run.eval_limit": 1, "optim.step_size": 1}
_NULLABLE = {"train.fusion_steps", "run.eval_limit"}
_CHOICES = {"loss.form": tuple(FUSION_LOSSES), "loss.intensity": ("paper", "reference"), "meta.lossgen_update": G_UPDATE_RULES,
            "meta.gradient": ("jvp", "second_order"), "meta.objective": META_OBJECTIVES,
            "loss.gradient_target": GRADIENT_TARGETS, "meta.task_inner_step": ("sgd", "adam"),
            "optim.schedule": ("step", "cosine", "none"), "train.precision": PRECISIONS}


def check_values(cfg: dict) -> None:
    """Ranges and choices of the run config, checked before anything is built, so a bad
    value is one clear error instead of a failure deep inside a library."""
    def get(key: str):
        section, name = key.split(".")
        return cfg[section][name]

    for key, low in _MINIMUM.items():
        value = get(key)
        if value is None and key in _NULLABLE:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise TDFusionError(f"config key {key!r}: expected a whole number >= {low}, got {value!r}")
    workers = get("data.num_workers")
    if workers != "auto" and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 0):
        raise TDFusionError(f"config key 'data.num_workers': expected auto or a whole number >= 0, got {workers!r}")
    for key, choices in _CHOICES.items():
        if get(key) not in choices:
            raise TDFusionError(f"config key {key!r}: {get(key)!r} is not one of {', '.join(choices)}")
    for key in ("optim.lr_fusion", "optim.lr_task", "optim.lr_lossgen", "optim.gamma", "meta.inner_lr",
                "meta.task_inner_lr"):
        value = get(key)
        if value is None and key.startswith("meta."):
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise TDFusionError(f"config key {key!r}: expected a number >= 0, got {value!r}")
    # A run resumed from a checkpoint older than run.loggers kept only the JSONL log: so it stays.
    loggers = cfg["run"].setdefault("loggers", ["jsonl"])
    if not isinstance(loggers, list) or any(name not in LOGGERS for name in loggers):
        raise TDFusionError(f"config key 'run.loggers': expected a list of {', '.join(LOGGERS)}, got {loggers!r}")
    for key in ("task.name", "dataset.name", "dataset.train_split", "fusion.arch", "lossgen.arch"):
        if not isinstance(get(key), str) or not get(key):
            raise TDFusionError(f"config key {key!r}: expected a name, got {get(key)!r}")
    if not isinstance(cfg["dataset"].get("options") or {}, dict):
        raise TDFusionError(f"config key 'dataset.options': expected a mapping, got {cfg['dataset']['options']!r}")
    if get("loss.gradient_target") != "max" and get("loss.form") != "tdfusion":
        raise TDFusionError("config key 'loss.gradient_target': applies to loss.form tdfusion (ReFusion's form "
                            "weighs its gradient term by G's v already)")
    size = get("data.task_size")
    if size is not None and not (isinstance(size, (list, tuple)) and len(size) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 8 for v in size)):
        raise TDFusionError(f"config key 'data.task_size': expected null or [height, width] (whole numbers >= 8), "
                            f"got {size!r}")


def check_finite(logs: dict[str, float], stems: list[str], pos: Position, run_dir: Path) -> None:
    """Stop the run at a non-finite loss, naming the step, the batch's pairs and the run's
    last good checkpoint (when it exists)."""
    bad = [k for k, v in logs.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:  # the logs are averaged, so every process takes this branch together
        stems = [s for part in distributed.gather_objects(list(stems)) for s in part]
        stems = list(dict.fromkeys(stems))  # swapped pairs repeat their stems
        last = run_dir / run_folder.LAST
        keep = f"; the last good checkpoint is {last}" if last.exists() else ""
        raise TDFusionError(
            f"non-finite {', '.join(bad)} at epoch {pos.epoch + 1}, {pos.phase} step "
            f"{pos.step + 1} (global step {pos.global_step + 1}), batch {', '.join(stems)}{keep}")
