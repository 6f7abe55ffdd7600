"""Resuming a run: which checkpoints can be resumed, and what changes when the world does."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..checkpoint import load_checkpoint
from ..errors import TDFusionError

__all__ = ["note_world_change", "read_resumable"]


def read_resumable(path: str | Path, task_name: str) -> dict[str, Any]:
    """The checkpoint at ``path`` (on the CPU), checked to hold what a resume needs: the
    three networks' weights and the training state of a run of ``task_name``."""
    ckpt = load_checkpoint(path, map_location="cpu")
    state = ckpt.get("train_state")
    if state is None:
        raise TDFusionError(f"{path}: holds weights only (no training state); resume from last.pt or step_*.pt")
    for record in ("fusion", "lossgen", "task"):
        if not isinstance(ckpt.get(record), dict) or "state_dict" not in ckpt[record]:
            raise TDFusionError(f"{path}: the checkpoint has no {record} weights; it cannot be resumed")
    missing = [f for f in ("position", "optimizers", "schedulers", "torch_rng")
               if not isinstance(state, dict) or f not in state]
    if missing:
        raise TDFusionError(f"{path}: incomplete training state (missing {', '.join(missing)})")
    saved_task = ckpt["task"].get("name")
    if saved_task != task_name:
        raise TDFusionError(f"{path}: checkpoint of task {saved_task!r}, this run is {task_name!r}")
    return ckpt


def note_world_change(path: str | Path, state: dict[str, Any], world: int, batch_size: int) -> None:
    """Say so when a run resumes on another number of processes: its global batch changes."""
    saved = int(state.get("world_size", 1))
    if saved != world:
        print(f"note: {path} was written by a run on {saved} process(es), this one has {world}: "
              f"the global batch changes from {batch_size * saved} to {batch_size * world} pairs")
