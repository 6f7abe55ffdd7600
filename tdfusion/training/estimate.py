"""A run's expected wall time, from a few measured steps of each phase.

``tdfusion train --estimate`` prints it and exits; every run prints it before its first
step (``run.estimate_steps``; 0 skips it). The steps are measured on the run's own
networks, optimisers and batches and then undone (weights, optimiser and scaler state,
RNG), so a run's checkpoints are the same with or without the estimate (tested).
``trainer`` below is a :class:`~tdfusion.training.trainer.MetaTrainer` (not imported: the
trainer imports this module).
"""
from __future__ import annotations

import copy
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import torch

from ..progress import clock

__all__ = ["RunEstimate", "estimate_run", "print_estimate", "project", "rolled_back", "stand_in_config"]

#: Test pairs timed for the evaluation's share; the time per pair is projected to the split.
EVAL_PAIRS = 2


@dataclass(frozen=True)
class RunEstimate:
    """Seconds per step and per evaluated test pair, measured; the counts still to run."""

    meta_seconds: float | None       # per meta iteration (None: the run has no meta phase)
    fusion_seconds: float            # per fusion step
    eval_seconds_per_pair: float | None
    meta_steps: int                  # meta iterations still to run
    fusion_steps: int                # fusion steps still to run
    evaluations: int                 # evaluations still to run
    eval_pairs: int                  # test pairs per evaluation

    @property
    def total_seconds(self) -> float:
        total = self.fusion_steps * self.fusion_seconds
        if self.meta_seconds is not None:
            total += self.meta_steps * self.meta_seconds
        if self.eval_seconds_per_pair is not None:
            total += self.evaluations * self.eval_pairs * self.eval_seconds_per_pair
        return total

    def describe(self, device: str, measured: int) -> str:
        parts = []
        if self.meta_seconds is not None and self.meta_steps:
            parts.append(f"{self.meta_steps} meta iterations x {self.meta_seconds:.3g} s")
        parts.append(f"{self.fusion_steps} fusion steps x {self.fusion_seconds:.3g} s")
        if self.eval_seconds_per_pair is not None and self.evaluations:
            parts.append(f"{self.evaluations} evaluations x {self.eval_pairs} pairs x {self.eval_seconds_per_pair:.3g} s")
        return (f"estimate: about {clock(self.total_seconds)} on {device} ({' + '.join(parts)}; "
                f"measured over {measured} steps of each phase; samples and checkpoints not counted)")


@contextmanager
def rolled_back(trainer: Any) -> Iterator[None]:
    """Undo, on exit, every change a step makes to the run's state: the three networks
    (buffers included), their optimisers, the gradient scaler and the RNGs."""
    nets = (trainer.fusion, trainer.lossgen, trainer.task_net)
    opts = (trainer.opt_f, trainer.opt_t, trainer.opt_g)
    saved = copy.deepcopy({
        "nets": [n.state_dict() for n in nets], "opts": [o.state_dict() for o in opts],
        "scaler": trainer.scaler.state_dict() if trainer.scaler is not None else None,
        "rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    })
    try:
        yield
    finally:
        for net, sd in zip(nets, saved["nets"]):
            net.load_state_dict(sd)
            net.zero_grad(set_to_none=True)
        for opt, sd in zip(opts, saved["opts"]):
            opt.load_state_dict(sd)
        if trainer.scaler is not None:
            trainer.scaler.load_state_dict(saved["scaler"])
        torch.set_rng_state(saved["rng"])
        if saved["cuda_rng"]:
            torch.cuda.set_rng_state_all(saved["cuda_rng"])


def _seconds_per_step(trainer: Any, phase: str, steps: int) -> float:
    """Mean seconds of ``steps`` steps of ``phase``, after one untimed step (first-call
    costs: kernel selection, allocator growth, loader start-up)."""
    # _phase_batches yields the steps from the run's position onwards: ask for steps + 1 past it.
    iterator = trainer._phase_batches(phase, trainer.pos.step + steps + 1)
    timed, start = 0, 0.0
    for i, (first, second) in enumerate(iterator):
        if i == 1:
            _synchronize(trainer.device)
            start = time.perf_counter()
        if phase == "meta":
            trainer.meta_step(trainer._prepare(first), trainer._prepare(second))
        else:
            trainer.fusion_step(trainer._prepare(first))
        timed += i >= 1
    _synchronize(trainer.device)
    return (time.perf_counter() - start) / timed if timed else float("nan")


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _eval_seconds_per_pair(trainer: Any) -> float | None:
    from .validator import Validator

    v = trainer.validator
    if v is None:
        return None
    pairs = min(EVAL_PAIRS, len(v.dataset))
    probe = Validator(v.task, v.dataset, v.task_size, v.device, pairs)
    probe(trainer.fusion, trainer.task_net)  # warm-up
    _synchronize(trainer.device)
    start = time.perf_counter()
    probe(trainer.fusion, trainer.task_net)
    _synchronize(trainer.device)
    return (time.perf_counter() - start) / max(1, pairs)


def estimate_run(trainer: Any, steps: int) -> RunEstimate:
    """Measure ``steps`` steps of each phase (and an evaluation of a few test pairs) and
    project the rest of the run from its position; the run's state is left as it was."""
    cfg = trainer.cfg
    epochs, warmup = cfg["train"]["epochs"], cfg["train"]["warmup_epochs"]
    pos = trainer.pos
    remaining_epochs = range(pos.epoch, epochs)
    meta_total = sum(trainer.meta_steps for e in remaining_epochs if e >= warmup)
    fusion_total = trainer.fusion_steps * len(remaining_epochs)
    if pos.phase == "meta" and pos.epoch >= warmup:
        meta_total -= pos.step
    elif pos.phase == "fusion":
        meta_total -= trainer.meta_steps if pos.epoch >= warmup else 0
        fusion_total -= pos.step
    eval_every = cfg["run"]["eval_every"]
    evaluations = sum(1 for e in range(pos.epoch + 1, epochs + 1) if eval_every and e % eval_every == 0)
    limit = cfg["run"]["eval_limit"]
    eval_pairs = 0 if trainer.validator is None else min(len(trainer.validator.dataset), limit or 10**9)
    with rolled_back(trainer):
        meta = _seconds_per_step(trainer, "meta", steps) if trainer.meta_steps and meta_total > 0 else None
        fusion = _seconds_per_step(trainer, "fusion", steps)
        per_pair = _eval_seconds_per_pair(trainer) if evaluations else None
    return RunEstimate(meta, fusion, per_pair, max(0, meta_total), max(0, fusion_total), evaluations, eval_pairs)


def print_estimate(trainer: Any) -> None:
    """The estimate line before a run's first step (``run.estimate_steps``; 0: none); rank 0 prints."""
    steps = int(trainer.cfg["run"]["estimate_steps"] or 0)
    if steps > 0 and trainer.pos.epoch < trainer.cfg["train"]["epochs"]:
        estimate = estimate_run(trainer, steps)
        if trainer.is_main:
            print(estimate.describe(str(trainer.device), steps), flush=True)


#: Pairs of the synthetic stand-in (decoded once and cached: data loading is not timed).
STAND_IN_PAIRS = 4


def stand_in_config(cfg: dict) -> dict | None:
    """The run config on synthetic stand-in images of the recipe's size (``recipe.image_size``)
    when its data root is absent; None when the data is there (or the recipe says no size).

    Step times depend on the crop and task sizes, not on what the images show, so a few
    stand-in pairs time the steps; :func:`project` then counts them for the recipe's dataset
    (``recipe.pairs``). Decoding is not timed (the stand-in is cached)."""
    from pathlib import Path

    from ..tasks import get_task

    recipe, dc = cfg.get("recipe") or {}, cfg["dataset"]
    if not recipe.get("image_size") or not recipe.get("pairs") or dc["name"] == "synthetic":
        return None
    if dc.get("root") and Path(dc["root"]).is_dir():
        return None
    out = copy.deepcopy(cfg)
    out["dataset"] = {**dc, "name": "synthetic", "root": None, "train_split": "train", "test_split": "test",
                      "options": {"length": STAND_IN_PAIRS, "size": list(recipe["image_size"]),
                                  "target": get_task(cfg["task"]["name"]).target_kind}}
    out["data"] = {**cfg["data"], "cache": True}
    out["task"] = {k: v for k, v in cfg["task"].items() if k not in ("weights", "trust_weights")}
    return out


def project(estimate: RunEstimate, cfg: dict, train_pairs: int, test_pairs: int) -> RunEstimate:
    """``estimate``'s step times counted for a whole run of ``cfg`` on a dataset of
    ``train_pairs``/``test_pairs`` pairs (one process, from the start)."""
    import math

    tc, dc, rc = cfg["train"], cfg["data"], cfg["run"]
    epochs = int(tc["epochs"])
    meta_epochs = max(0, epochs - int(tc["warmup_epochs"]))
    fusion = int(tc["fusion_steps"]) if tc["fusion_steps"] is not None else math.ceil(train_pairs / dc["batch_size"])
    evaluations = epochs // rc["eval_every"] if rc["eval_every"] and test_pairs else 0
    pairs = min(test_pairs, rc["eval_limit"] or test_pairs)
    meta = 0 if estimate.meta_seconds is None else meta_epochs * int(tc["meta_steps"])
    return RunEstimate(estimate.meta_seconds, estimate.fusion_seconds, estimate.eval_seconds_per_pair,
                       meta, fusion * epochs, evaluations, pairs)
