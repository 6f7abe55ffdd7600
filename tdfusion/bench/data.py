"""Data-loading benchmark: training views per second from a dataset."""
from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np
import torch

__all__ = ["bench_data"]


def bench_data(dataset: str, root: str | None, crop_size: int = 256, task_size=(240, 320),
               batch_size: int = 1, batches: int = 20, workers: tuple[int, ...] = (0, 2),
               progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Seconds per training batch (decode, crop, resize, collate, swap) as the trainer loads them.

    For each worker count: a first pass with ``cache=False`` and, with ``cache=True``, a
    second pass over the same samples (decoded images served from memory).
    """
    from torch.utils.data import DataLoader

    from ..data import build_dataset
    from ..data.views import collate, swap_sources, train_view

    rows = []
    for cache in (False, True):
        ds = build_dataset(dataset, root, "train", cache=cache)
        n = min(len(ds), batches * batch_size)

        class Views(torch.utils.data.Dataset):
            def __len__(self):
                return n

            def __getitem__(self, i):
                return train_view(ds[i % len(ds)], np.random.default_rng(i), crop_size, task_size)

        for w in workers:
            if progress:
                progress(f"data {dataset} workers {w} cache {cache}")
            loader = DataLoader(Views(), batch_size=batch_size, num_workers=w, collate_fn=collate,
                                persistent_workers=w > 0)
            passes = []
            for _ in range(2 if cache else 1):
                t0 = time.perf_counter()
                count = sum(1 for batch in loader if swap_sources(batch))
                passes.append((time.perf_counter() - t0) / max(count, 1))
            rows.append({"what": "data", "dataset": dataset, "workers": w, "cache": cache,
                         "s_per_batch": passes[-1], "first_pass_s_per_batch": passes[0], "batches": count})
    return rows
