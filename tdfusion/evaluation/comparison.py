"""``tdfusion compare``: one task network retrained per image source, over several seeds.

Every source goes through the same path (the fairness the protocol rests on):

1. It is written as a *source folder* (:mod:`tdfusion.evaluation.source_folder`): grey 8-bit
   luminance at native resolution plus the dataset's targets. The two inputs are written
   from the dataset; a checkpoint's images are produced exactly as ``tdfusion fuse``
   produces them (native resolution, min-max stretch, fused chroma, the file it would
   write), then read back like any ``--fused`` folder of another method.
2. For each seed, a fresh task network is trained on the folder's training split with
   the ``downstream:`` regime and scored on its test split.
3. Per source: the mean and standard deviation of each metric over its runs, and the
   *paired* differences to a baseline source (:mod:`.statistics`).

Several checkpoints (or fused folders) may carry one name: they are the fusion-training
runs of one method (fusion seeds), pooled as one source whose runs are (fusion run x
downstream seed). Every source is trained with the same downstream seeds, so a
difference between two sources is measured run by run: the same seed (and the same
fusion run index where both sources have several), then averaged. Differences of the size
task-driven fusion claims (0.01-0.02 mIoU) are smaller than one source's spread over
seeds and only show this way.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import yaml

from ..data.base import PairDataset, luminance
from ..data.targets import resize_image
from ..errors import TDFusionError
from ..hostinfo import environment
from ..io import atomic_write, to_integer, write_image
from ..progress import clock
from .results import jsonable
from .statistics import mark_spread, paired_differences, summarize
from .sources import fused_image_lookup

__all__ = ["ImageSource", "HEADLINE_METRICS", "compare", "default_baseline", "estimate_trainings", "job_specs",
           "materialize", "pool_runs", "prepare_sources", "run_seeds"]

#: The metrics summarised per source (the first one names the best source).
HEADLINE_METRICS = {"mask": ("mIoU", "mAcc", "pixel_acc"), "boxes": ("mAP50", "mAP75", "mAP50_95")}


@dataclass(frozen=True)
class ImageSource:
    """A source to compare: ``kind`` is ``"input"`` (``where`` = ``"a"``/``"b"``),
    ``"checkpoint"`` (``where`` = a tdfusion or published checkpoint) or ``"folder"``
    (``where`` = fused images of any method, ``<dir>/<split>/<stem>.*`` or ``<dir>/<stem>.*``).
    ``fusion_run``: which of the fusion-training runs that share ``name`` this is (0, 1, ...
    in the order given)."""

    name: str
    kind: str
    where: str
    fusion_run: int = 0

    @property
    def label(self) -> str:
        """Unique among the sources of one comparison: the name, and the run where it repeats."""
        return self.name if self.fusion_run == 0 else f"{self.name}#{self.fusion_run}"


def with_fusion_runs(sources: Sequence[ImageSource]) -> list[ImageSource]:
    """``sources`` with ``fusion_run`` numbered per name (0, 1, ... in the order given); the
    first of each name keeps the plain name as its label."""
    seen: dict[str, int] = {}
    out = []
    for s in sources:
        k = seen.get(s.name, 0)
        seen[s.name] = k + 1
        out.append(ImageSource(s.name, s.kind, s.where, k))
    return out


# -- 1. source folders -------------------------------------------------------------------------------------------
def _fuse_like_the_cli(net, dataset: PairDataset, index: int, out: Path) -> Path:
    """Write what ``tdfusion fuse`` writes for pair ``index`` (same function, same options)."""
    from ..inference import fuse_images

    a, b = dataset.source_images(index)
    if b.size != a.size:
        raise TDFusionError(f"pair {index}: source sizes differ ({a.size} vs {b.size})")
    _, fused = fuse_images(net, a, b, normalize="minmax")
    write_image(out, to_integer(fused, max(a.bit_depth, b.bit_depth)), durable=False)
    return out


def _write_targets(sample, split_dir: Path) -> None:
    from ..data.det_labels import format_yolo_labels

    if "mask" in sample.target:
        mask = np.asarray(sample.target["mask"])
        write_image(split_dir / "masks" / f"{sample.stem}.png",
                    mask.astype(np.uint8 if mask.max(initial=0) < 256 else np.uint16), durable=False)
    if "boxes" in sample.target:
        (split_dir / "labels" / f"{sample.stem}.txt").write_text(
            format_yolo_labels(np.asarray(sample.target["boxes"], np.float32).reshape(-1, 5)))


def materialize(source: ImageSource, splits: dict[str, PairDataset], folder: Path, device="cpu") -> Path:
    """Write ``source`` as a source folder (module doc) for each split; returns ``folder``."""
    import torch

    net = None
    if source.kind == "checkpoint":
        from ..checkpoint import load_fusion_net

        net, _ = load_fusion_net(source.where, device)
    any_set = next(iter(splits.values()))
    meta = {"kind": any_set.target_kind, "classes": list(getattr(any_set, "classes", []) or []),
            "ignore_index": getattr(any_set, "ignore_index", None), "source": asdict(source)}
    for split, dataset in splits.items():
        out = folder / split
        for sub in ("images", "masks" if meta["kind"] == "mask" else "labels"):
            (out / sub).mkdir(parents=True, exist_ok=True)
        find = fused_image_lookup(Path(source.where)) if source.kind == "folder" else None
        for i in range(len(dataset)):
            sample = dataset[i]
            if source.kind == "input":
                y = sample.a if source.where == "a" else sample.b
            elif source.kind == "folder":
                y = luminance(find(sample.stem, split))
            else:
                with torch.inference_mode():
                    fused = _fuse_like_the_cli(net, dataset, i, _fuse_path(out, sample.stem))
                y = luminance(fused)
            y = resize_image(y, sample.a.shape)  # another method may have written another size
            write_image(out / "images" / f"{sample.stem}.png", to_integer(y, 8), durable=False)
            _write_targets(sample, out)
    with atomic_write(folder / "classes.yaml", "w") as fh:
        yaml.safe_dump(meta, fh, sort_keys=False)
    return folder


def _fuse_path(split_dir: Path, stem: str) -> Path:
    path = split_dir / "fuse_output" / f"{stem}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def prepare_sources(sources: Sequence[ImageSource], train_set: PairDataset, test_set: PairDataset,
                    work_dir: str | os.PathLike, device="cpu", log=print) -> dict[str, Path]:
    """Source folders of every source under ``work_dir/<label>``; ``{label: folder}``
    (:attr:`ImageSource.label`: the name, with ``#k`` for a name's fusion run k > 0)."""
    labels = [s.label for s in sources]
    if len(set(labels)) != len(labels):
        raise TDFusionError(f"source names must be distinct: {' '.join(labels)}")
    inputs = {s.name for s in sources if s.kind == "input"}
    pooled = sorted({s.name for s in sources if s.fusion_run > 0} & inputs)
    if pooled:
        raise TDFusionError(f"{', '.join(pooled)}: the name of an input image source, also given to a fused source")
    folders = {}
    for s in sources:
        start = time.perf_counter()
        folder = Path(work_dir) / _safe(s.label)
        if folder in folders.values():
            raise TDFusionError(f"source {s.label!r}: its folder name {folder.name!r} is another source's")
        folders[s.label] = materialize(s, {"train": train_set, "test": test_set}, folder, device)
        log(f"prepared source {s.label} ({len(train_set)} train + {len(test_set)} test images, "
            f"{time.perf_counter() - start:.1f} s)")
    return folders


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


# -- 2. training per seed ----------------------------------------------------------------------------------------
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


def _threads_per_job(jobs: int) -> int:
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
    threads = _threads_per_job(jobs) if jobs > 1 else None
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


# -- 3. summary --------------------------------------------------------------------------------------------------
def pool_runs(sources: Sequence[ImageSource], runs: dict[str, list[dict[str, Any]]]
              ) -> tuple[dict[str, list[dict[str, Any]]], dict[str, list[str]]]:
    """Runs by source *name*: the runs of every fusion run of a name together, each tagged
    with its ``"fusion_run"``, ordered by (fusion run, seed); and the ``where`` of each
    fusion run of the names that are not input images (``{name: [checkpoint, ...]}``)."""
    pooled: dict[str, list[dict[str, Any]]] = {}
    fusion_runs: dict[str, list[str]] = {}
    for s in sources:
        pooled.setdefault(s.name, []).extend({**r, "fusion_run": s.fusion_run} for r in runs[s.label])
        if s.kind != "input":
            fusion_runs.setdefault(s.name, []).append(s.where)
    for rs in pooled.values():
        rs.sort(key=lambda r: (r["fusion_run"], r["seed"]))
    return pooled, fusion_runs


def default_baseline(sources: Sequence[ImageSource]) -> str | None:
    """A source named ``fixed`` (the fixed-weight ablation) if there is one, else the first
    checkpoint, else the first source."""
    names = [s.name for s in sources]
    if "fixed" in names:
        return "fixed"
    return next((s.name for s in sources if s.kind == "checkpoint"), names[0] if names else None)


def compare(task_cfg: dict, settings, sources: Sequence[ImageSource], train_set: PairDataset, test_set: PairDataset,
            *, seeds: Sequence[int], device: str, work_dir: str | os.PathLike | None = None, jobs: int = 1,
            limit: int | None = None, baseline: str | None = None, estimate: bool = False,
            estimate_only: bool = False, log=print) -> dict[str, Any] | None:
    """The whole protocol; returns the JSON payload (``docs`` and README: its shape).

    ``sources`` may repeat a name (the fusion-training runs of one method): they are
    pooled (:func:`pool_runs`). ``baseline`` (default :func:`default_baseline`) is the
    source every other is paired with (:func:`paired_differences`). ``estimate`` logs the
    projected training time (:func:`estimate_trainings`) before the first training;
    ``estimate_only`` returns None after it."""
    if not sources:
        raise TDFusionError("nothing to compare: give --checkpoint, --fused or keep the baselines")
    if not len(train_set) or not len(test_set):
        raise TDFusionError("compare needs non-empty train and test splits")
    metrics = HEADLINE_METRICS.get(train_set.target_kind)
    if metrics is None:
        raise TDFusionError(f"compare needs a dataset with masks or boxes, not {train_set.target_kind!r} targets")
    sources = with_fusion_runs(sources)
    baseline = baseline if baseline is not None else default_baseline(sources)
    if baseline not in {s.name for s in sources}:
        raise TDFusionError(f"--baseline {baseline!r} is not one of the sources: "
                            f"{', '.join(dict.fromkeys(s.name for s in sources))}")
    with tempfile.TemporaryDirectory(prefix="tdfusion-compare-") as tmp:
        folders = prepare_sources(sources, train_set, test_set, work_dir or tmp, device, log)
        if estimate:
            specs = job_specs(task_cfg, settings, folders, seeds, device=device, jobs=jobs, limit=limit)
            total, per_iteration, per_training = estimate_trainings(specs[0], len(specs), jobs)
            log(f"estimate: about {clock(total)} for the {len(specs)} trainings, {jobs} at a time "
                f"({per_training} iterations each x {per_iteration:.3g} s, measured; scoring not counted)")
            if estimate_only:
                return None
        runs = run_seeds(task_cfg, settings, folders, seeds, device=device, jobs=jobs, limit=limit, log=log)
    pooled, fusion_runs = pool_runs(sources, runs)
    summary = {name: summarize(r, metrics) for name, r in pooled.items()}
    for name, where in fusion_runs.items():
        summary[name]["fusion_runs"] = where
    mark_spread(summary, metrics)
    first = next(iter(summary))
    payload = {**summary[first]["mean"], "source": first, "protocol": "retrain-per-source", "seeds": list(seeds),
               "metrics": list(metrics), "downstream": jsonable(asdict(settings)), "sources": summary,
               "environment": {**environment(), "jobs": jobs, "threads_per_job": _threads_per_job(jobs)}}
    if len(summary) > 1:
        payload["paired"] = paired_differences(summary, baseline, metrics)
    return payload


def write_payload(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    with atomic_write(path, "w") as fh:
        json.dump(payload, fh, indent=2)
