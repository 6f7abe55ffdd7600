"""The training batches of Algorithm 1, as pure functions of ``(seed, epoch, phase, step)``.

Every random choice (the meta-train/meta-test split, the batch order, crops and flips) is
keyed, so a resumed run draws exactly what an uninterrupted one would. Under torchrun every
process draws the same global batch and keeps its own slice (:func:`shard_batches`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..data import collate, train_view
from ..data.base import PairDataset
from ..errors import TDFusionError
from . import distributed

__all__ = ["PHASES", "Position", "TrainViews", "batches", "loader", "phase_keys", "shard_batches"]

#: The two phases of an epoch, in order: learning G, then learning F and T.
PHASES = ("meta", "fusion")

Batch = list[tuple[int, int]]  # (sample index, seed of its crop and flip)


@dataclass
class Position:
    """Where a run is in the schedule; checkpoints store it, resume starts from it."""

    epoch: int = 0
    phase: str = "meta"
    step: int = 0          # steps done in the current phase
    global_step: int = 0

    def as_dict(self) -> dict:
        return dict(epoch=self.epoch, phase=self.phase, step=self.step, global_step=self.global_step)


def _seed_of(*key: int) -> int:
    return int(np.random.SeedSequence([abs(int(k)) for k in key]).generate_state(1)[0])


class TrainViews(Dataset):
    """Indexes are ``(sample index, seed)``; the seed drives that sample's crop and flip."""

    def __init__(self, base: PairDataset, crop_size: int, task_size, hflip: bool):
        self.base, self.crop_size, self.task_size, self.hflip = base, crop_size, task_size, hflip

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        index, seed = key
        rng = np.random.default_rng(seed)
        return train_view(self.base[index], rng, self.crop_size, self.task_size, self.hflip)


def phase_keys(seed: int, n: int, batch_size: int, epoch: int, phase: str, steps: int, start: int = 0):
    """The global batches of steps ``start..steps-1`` of a phase over ``n`` samples.

    ``fusion``: a list of batches. ``meta``: ``(meta-train batches, meta-test batches)``,
    drawn from disjoint halves of the training set (the papers' Sec. 3.3), redrawn each epoch.
    """
    perm = np.random.default_rng([seed, epoch, PHASES.index(phase)]).permutation(n)
    bs = batch_size
    if phase == "fusion":
        return [[(int(perm[(s * bs + j) % n]), _seed_of(seed, epoch, 1, s, j)) for j in range(bs)]
                for s in range(start, steps)]
    half = max(1, n // 2)
    mtr, mts = perm[:half], (perm[half:] if n > 1 else perm)
    train = [[(int(mtr[(s * bs + j) % len(mtr)]), _seed_of(seed, epoch, 0, s, j)) for j in range(bs)]
             for s in range(start, steps)]
    test = [[(int(mts[(s * bs + j) % len(mts)]), _seed_of(seed, epoch, 2, s, j)) for j in range(bs)]
            for s in range(start, steps)]
    return train, test


def shard_batches(keys, phase: str):
    """This process's contiguous slice of every global batch (the keys unchanged on one process)."""
    if distributed.world_size() == 1:
        return keys
    if phase == "fusion":
        return [distributed.shard(batch) for batch in keys]
    return tuple([distributed.shard(batch) for batch in part] for part in keys)


def loader_workers(setting: int | str, device: torch.device) -> int:
    """``data.num_workers``: a number, or ``auto``: none on a CPU (loading takes under 1% of
    a step there, BENCHMARKS.md "Data loading"), up to 4 on a GPU, where loading a pair
    (about 25 ms for 640x480) may take longer than a step and idle the device (not yet
    measured on a GPU: scripts/gpu_check.sh, step training_data_time).
    The batches do not depend on it (every crop is keyed by its step, not by the worker)."""
    import os

    if setting != "auto":
        return int(setting)
    return min(4, max(1, (os.cpu_count() or 2) // 2)) if device.type == "cuda" else 0


def loader(views: TrainViews, keys: Sequence[Batch], num_workers: int, device: torch.device) -> DataLoader:
    # A private generator: creating a loader must not consume the global torch RNG, or a
    # resumed run would diverge from an uninterrupted one.
    return DataLoader(views, batch_sampler=keys, collate_fn=collate, num_workers=num_workers,
                      pin_memory=device.type == "cuda", generator=torch.Generator())


def batches(data: DataLoader) -> Iterator[dict]:
    """Iterate a loader; a data error raised in a worker process comes back as the one-line
    message it was raised with (the DataLoader re-raises it wrapped in the worker's traceback)."""
    try:
        yield from data
    except TDFusionError as exc:
        lines = str(exc).strip().splitlines()
        marker = "TDFusionError: "
        if len(lines) > 1 and marker in lines[-1]:
            raise TDFusionError(lines[-1].split(marker, 1)[1]) from None
        raise


def timed(items: Iterator) -> Iterator[tuple[object, float]]:
    """``(item, seconds waited for it)``: the data time of each step (``data_s`` in the
    train log), which says whether loading keeps the device busy."""
    import time

    iterator = iter(items)
    while True:
        start = time.perf_counter()
        try:
            item = next(iterator)
        except StopIteration:
            return
        yield item, time.perf_counter() - start
