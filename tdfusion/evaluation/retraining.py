"""``tdfusion compare``, step 2: one task network trained and scored per (source, seed), one
at a time or several at once in worker processes, and the projected time of them all.

Every run is described by a picklable spec (:func:`job_specs`) so that a worker process can
run it (:func:`_job`); its numbers depend on the thread count it runs with, recorded in the
payload's ``environment``.
"""
from __future__ import annotations

import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

from .results import jsonable

__all__ = ["estimate_trainings", "job_specs", "run_seeds", "threads_per_job"]


def _job_parts(spec: dict[str, Any]):
    """The task, regime and the source folder's two splits of one (source, seed) run."""
    from ..tasks import build_task
    from .downstream_settings import DownstreamSettings
    from .source_folder import SourceFolderDataset, balanced_class_weights

    settings = DownstreamSettings(**spec["settings"])
    train = SourceFolderDataset(spec["folder"], "train")
    test = SourceFolderDataset(spec["folder"], "test")
    task_cfg = dict(spec["task"])
    if train.target_kind == "mask" and settings.class_weights is not None:
        task_cfg["class_weights"] = (balanced_class_weights(train) if settings.class_weights == "balanced"
                                     else list(settings.class_weights))
    return build_task(task_cfg, train), settings, train, test


def _job(spec: dict[str, Any]) -> dict[str, Any]:
    """One (source, seed) run; a top-level function so that worker processes can run it."""
    import torch

    from .downstream import evaluate_downstream, train_downstream

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    if spec.get("parent"):
        _exit_with_parent(spec["parent"])
    task, settings, train, test = _job_parts(spec)
    start = time.perf_counter()
    net = train_downstream(task, train, settings, seed=spec["seed"], device=spec["device"],
                           show_progress=spec["progress"], label=f"{spec['name']} (seed {spec['seed']})")
    metrics = evaluate_downstream(task, net, test, settings, spec["device"], spec.get("limit"))
    return {"seed": spec["seed"], **jsonable(metrics), "train_seconds": round(time.perf_counter() - start, 1)}


def _exit_with_parent(parent: int) -> None:
    """In a worker process: exit when the process that started it is gone (killed), rather
    than train on as an orphan."""
    import threading

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(2.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def threads_per_job(jobs: int) -> int:
    """CPU threads of each training: this process's, shared among ``jobs`` trainings at once.
    The float arithmetic, hence the numbers, depends on it (docs/results.md)."""
    import torch

    return max(1, torch.get_num_threads() // max(1, jobs))


def run_seeds(task_cfg: dict, settings, folders: dict[str, Path], seeds: Sequence[int], *, device: str,
              jobs: int = 1, limit: int | None = None, log=print) -> dict[str, list[dict[str, Any]]]:
    """Train and score every source with every seed; ``{name: [run metrics, ...]}``.

    ``jobs > 1`` runs that many trainings at once in worker processes, each with an equal
    share of the CPU threads (on a small CPU, two one-thread trainings finish sooner than
    two two-thread trainings one after the other).
    """
    specs = job_specs(task_cfg, settings, folders, seeds, device=device, jobs=jobs, limit=limit)
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in folders}

    def record(spec, out):
        results[spec["name"]].append(out)
        headline = ", ".join(f"{k} {v:.4f}" for k, v in out.items() if isinstance(v, float) and k != "train_seconds")
        log(f"{spec['name']} seed {spec['seed']}: {headline} ({out['train_seconds']} s)")

    if jobs <= 1:
        for spec in specs:
            record(spec, _job(spec))
    else:
        import multiprocessing

        pool = ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"))
        try:
            for spec, out in zip(specs, pool.map(_job, specs)):
                record(spec, out)
        except BaseException:  # Ctrl-C, SIGTERM (tdfusion compare), a failed run: stop the other trainings now
            _stop_workers(pool)
            raise
        pool.shutdown()
    for runs in results.values():
        runs.sort(key=lambda r: r["seed"])
    return results


def job_specs(task_cfg: dict, settings, folders: dict[str, Path], seeds: Sequence[int], *, device: str,
              jobs: int = 1, limit: int | None = None) -> list[dict[str, Any]]:
    """One picklable description per (source, seed) training, in table order."""
    cfg = dict(task_cfg)
    if settings.variant:
        cfg["variant"] = settings.variant
    if settings.weights:
        cfg["weights"] = settings.weights
    threads = threads_per_job(jobs) if jobs > 1 else None
    return [{"name": name, "folder": str(folder), "seed": int(seed), "task": cfg, "settings": asdict(settings),
             "device": str(device), "limit": limit, "threads": threads, "progress": jobs == 1,
             "parent": os.getpid() if jobs > 1 else None}
            for name, folder in folders.items() for seed in seeds]


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """End a pool's trainings at once (``shutdown`` alone waits for the running ones)."""
    pool.shutdown(wait=False, cancel_futures=True)
    terminate = getattr(pool, "terminate_workers", None)  # Python >= 3.14
    if terminate is not None:
        terminate()
        return
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        process.terminate()


def estimate_trainings(spec: dict[str, Any], trainings: int, jobs: int) -> tuple[float, float, int]:
    """Project the wall time of ``trainings`` downstream trainings like ``spec``'s, ``jobs``
    at a time, from two timed iterations (after an untimed one) on this process with the
    thread count each would have. ``(total seconds, seconds per iteration, iterations per
    training)``; evaluation not counted."""
    import torch

    from .downstream import train_downstream
    from .source_folder import TrainViews

    task, settings, train, _ = _job_parts(spec)
    previous = torch.get_num_threads()
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    try:
        timings = []
        for iterations in (1, 3):
            start = time.perf_counter()
            train_downstream(task, train, settings, seed=spec["seed"], device=spec["device"], show_progress=False,
                             max_iterations=iterations)
            timings.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
    per_iteration = max(0.0, timings[1] - timings[0]) / 2
    per_training = settings.epochs * len(TrainViews(train, settings, spec["seed"]))
    return per_iteration * per_training * -(-trainings // max(1, jobs)), per_iteration, per_training
