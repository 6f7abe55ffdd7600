"""Metrics over folders: pairing by stem, validation up front, process-parallel evaluation.

Results have the shape written to JSON by ``tdfusion metrics``::

    {NAME: {"mean": {METRIC: v}, "per_image": {STEM: {METRIC: v}}}}

Everything that can be checked without computing (missing partners, unreadable headers,
size mismatches, duplicate method names) is checked by :func:`plan_jobs` before any
work starts, so a bad input fails fast and nothing is written.
"""
from __future__ import annotations

import csv
import io
import json
import multiprocessing
import os
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

from ..errors import TDFusionError
from ..io import atomic_write, image_size, list_images, match_pairs
from .evaluate import METRIC_NAMES, evaluate_files, mean_metrics

__all__ = [
    "Job", "MethodInput", "csv_text", "evaluate_folders", "evaluate_jobs", "plan_jobs",
    "write_csv", "write_json",
]


@dataclass(frozen=True)
class MethodInput:
    """One fused-image source to score: a display name and a folder (or a single file)."""

    name: str
    path: Path


@dataclass(frozen=True)
class Job:
    """One fused image to score against its two sources."""

    method: str
    stem: str
    fused: Path
    a: Path
    b: Path


def _size_text(size: tuple[int, int]) -> str:
    return f"{size[1]}x{size[0]}"


def plan_jobs(a: str | os.PathLike, b: str | os.PathLike, methods: Sequence[MethodInput],
              check_sizes: bool = True, missing: list[tuple[str, str]] | None = None,
              ignored: list[tuple[str, Path]] | None = None) -> list[Job]:
    """Pair sources by stem with every method's fused images and validate the lot.

    ``a``/``b`` are two folders (images matched by stem) or two files; in the latter
    case every method's path must be a file too. Raises :class:`TDFusionError` naming the
    offending file for: a missing partner on either side, a missing fused image, an
    unreadable image, a size mismatch, or two methods with the same name.

    A fused folder may hold more images than the sources name (results on a whole test
    set, sources a subset): only the images the sources name are scored; the others are
    appended as ``(method, path)`` to ``ignored`` when given.

    ``missing``: a list to collect ``(method, stem)`` of the fused images a method lacks
    instead of failing (``tdfusion metrics --allow-missing``); each method is then scored
    on the images it has.
    """
    if not methods:
        raise TDFusionError("no fused folder given")
    seen: dict[str, Path] = {}
    for m in methods:
        if m.name in seen:
            raise TDFusionError(f"{m.path}: method name {m.name!r} is already used by {seen[m.name]}; "
                                f"give distinct --names")
        seen[m.name] = m.path
    pairs = match_pairs(a, b)
    single = Path(a).is_file()
    sizes: dict[Path, tuple[int, int]] = {}

    def size_of(p: Path) -> tuple[int, int]:
        if p not in sizes:
            sizes[p] = image_size(p)
        return sizes[p]

    if check_sizes:
        for _, pa, pb in pairs:
            if size_of(pa) != size_of(pb):
                raise TDFusionError(f"{pb}: size {_size_text(size_of(pb))} differs from {pa} "
                                    f"({_size_text(size_of(pa))})")
    jobs: list[Job] = []
    for m in methods:
        path = Path(m.path)
        if single:
            if not path.is_file():
                raise TDFusionError(f"{path}: sources are single files, so the fused input must be a file too")
            fused = {pairs[0][0]: path}
        else:
            if not path.is_dir():
                raise TDFusionError(f"{path}: no such folder")
            fused = list_images(path)
            stems = {s for s, _, _ in pairs}
            if ignored is not None:
                ignored.extend((m.name, p) for stem, p in fused.items() if stem not in stems)
        for stem, pa, pb in pairs:
            if stem not in fused:
                if missing is None:
                    raise TDFusionError(f"{path}: no fused image for {stem} (source {pa}); "
                                        f"--allow-missing scores the images present")
                missing.append((m.name, stem))
                continue
            pf = fused[stem]
            if check_sizes and size_of(pf) != size_of(pa):
                raise TDFusionError(f"{pf}: size {_size_text(size_of(pf))} differs from its source "
                                    f"{pa} ({_size_text(size_of(pa))})")
            jobs.append(Job(m.name, stem, pf, pa, pb))
    return jobs


def _score(job: Job, vif_reduction: str) -> tuple[str, str, dict[str, float]]:
    try:
        values = evaluate_files(job.fused, job.a, job.b, vif_reduction=vif_reduction)
    except ValueError as exc:  # numeric preconditions of the metric functions
        raise TDFusionError(f"{job.fused}: {exc}") from None
    return job.method, job.stem, values


def _worker_init() -> None:
    # Parallelism comes from processes; OpenCV threads on top would oversubscribe the cores.
    import cv2

    cv2.setNumThreads(1)


def evaluate_jobs(jobs: Sequence[Job], workers: int | None = None, vif_reduction: str = "mean",
                  on_done: Callable[[Job], None] | None = None
                  ) -> dict[str, dict[str, dict[str, float]]]:
    """Score every job; ``{method: {stem: {metric: v}}}`` in job order.

    ``workers`` processes (default: the CPU count; 1 = in this process). The first error
    cancels the remaining work and is re-raised.
    """
    workers = (os.cpu_count() or 1) if workers is None else workers
    if workers < 1:
        raise TDFusionError(f"--workers must be at least 1, got {workers}")
    workers = min(workers, len(jobs))
    scores: dict[tuple[str, str], dict[str, float]] = {}
    if workers <= 1:
        for job in jobs:
            scores[(job.method, job.stem)] = _score(job, vif_reduction)[2]
            if on_done:
                on_done(job)
    else:
        # spawn: the same behaviour on every OS, and no fork of a process that may hold
        # torch/OpenCV thread pools.
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init) as pool:
            futures = {pool.submit(_score, job, vif_reduction): job for job in jobs}
            pending = set(futures)
            try:
                while pending:
                    done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                    for fut in done:
                        method, stem, values = fut.result()  # re-raises a worker's error
                        scores[(method, stem)] = values
                        if on_done:
                            on_done(futures[fut])
            except BaseException:
                for fut in pending:
                    fut.cancel()
                raise
    out: dict[str, dict[str, dict[str, float]]] = {}
    for job in jobs:
        out.setdefault(job.method, {})[job.stem] = scores[(job.method, job.stem)]
    return out


def evaluate_folders(a: str | os.PathLike, b: str | os.PathLike, methods: Sequence[MethodInput],
                     workers: int | None = None, vif_reduction: str = "mean",
                     on_done: Callable[[Job], None] | None = None) -> dict:
    """Plan, validate and score; returns ``{NAME: {"mean": ..., "per_image": ...}}``."""
    jobs = plan_jobs(a, b, methods)
    per_method = evaluate_jobs(jobs, workers, vif_reduction, on_done)
    return {name: {"mean": mean_metrics(per_image), "per_image": per_image}
            for name, per_image in per_method.items()}


def write_json(results: Mapping, path: str | os.PathLike) -> None:
    """``{"methods": results}`` as indented JSON, written atomically."""
    with atomic_write(path, "w") as fh:
        json.dump({"methods": results}, fh, indent=2)
        fh.write("\n")


def csv_text(results: Mapping) -> str:
    """CSV with columns ``method, kind, image, EN, ...``; ``kind`` is ``image`` or ``mean``
    (mean rows leave ``image`` empty, so no stem can be mistaken for the mean)."""
    names = list(METRIC_NAMES)
    for method in results.values():
        for values in method["per_image"].values():
            names.extend(k for k in values if k not in names)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["method", "kind", "image", *names])
    for method, block in results.items():
        for stem, values in block["per_image"].items():
            writer.writerow([method, "image", stem, *(repr(values[k]) if k in values else "" for k in names)])
        writer.writerow([method, "mean", "", *(repr(block["mean"][k]) if k in block["mean"] else "" for k in names)])
    return buf.getvalue()


def write_csv(results: Mapping, path: str | os.PathLike) -> None:
    """:func:`csv_text` written atomically."""
    with atomic_write(path, "w") as fh:
        fh.write(csv_text(results))
