"""``tdfusion compare``: one task network retrained per image source, over several seeds.

Every source goes through the same path (the fairness the protocol rests on):

1. It is written as a *source folder* (:mod:`tdfusion.evaluation.source_folder`): grey 8-bit
   luminance at native resolution plus the dataset's targets. The two inputs are written
   from the dataset; a checkpoint's images are produced exactly as ``tdfusion fuse``
   produces them (native resolution, min-max stretch, fused chroma, the file it would
   write), then read back like any ``--fused`` folder of another method.
2. For each seed, a fresh task network is trained on the folder's training split with
   the ``downstream:`` regime and scored on its test split (:mod:`.retraining`).
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
from .retraining import estimate_trainings, job_specs, run_seeds, threads_per_job
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
def _fuse_like_the_cli(net, dataset: PairDataset, indices: Sequence[int], batch: int | None) -> dict[int, Any]:
    """What ``tdfusion fuse --batch`` makes of the pairs ``indices`` of ``dataset`` (same
    functions, same options): ``{index: the 8/16-bit image it writes}``."""
    from ..inference import fuse_image_groups

    pairs = [dataset.source_images(i) for i in indices]
    for i, (a, b) in zip(indices, pairs):
        if b.size != a.size:
            raise TDFusionError(f"pair {i}: source sizes differ ({a.size} vs {b.size})")
    made = {}
    for chunk, results in fuse_image_groups(net, pairs, batch, normalize="minmax"):
        for k, (_, fused) in zip(chunk, results):
            a, b = pairs[k]
            made[indices[k]] = to_integer(fused, max(a.bit_depth, b.bit_depth))
    return made


def _write_targets(sample, split_dir: Path) -> None:
    from ..data.det_labels import format_yolo_labels

    if "mask" in sample.target:
        mask = np.asarray(sample.target["mask"])
        write_image(split_dir / "masks" / f"{sample.stem}.png",
                    mask.astype(np.uint8 if mask.max(initial=0) < 256 else np.uint16), durable=False)
    if "boxes" in sample.target:
        (split_dir / "labels" / f"{sample.stem}.txt").write_text(
            format_yolo_labels(np.asarray(sample.target["boxes"], np.float32).reshape(-1, 5)))


#: Pairs decoded and fused together when a checkpoint's source folder is made.
FUSE_GROUP = 32


def materialize(source: ImageSource, splits: dict[str, PairDataset], folder: Path, device="cpu",
                batch: int | None = None) -> Path:
    """Write ``source`` as a source folder (module doc) for each split; returns ``folder``.
    A checkpoint's pairs are fused ``batch`` at a time (``tdfusion fuse --batch``; None:
    one at a time through the banded executor)."""
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
        made: dict[int, Any] = {}
        for i in range(len(dataset)):
            if net is not None and i not in made:  # the next group of pairs, fused together
                with torch.inference_mode():
                    made = _fuse_like_the_cli(net, dataset, range(i, min(i + FUSE_GROUP, len(dataset))), batch)
            sample = dataset[i]
            if source.kind == "input":
                y = sample.a if source.where == "a" else sample.b
            elif source.kind == "folder":
                y = luminance(find(sample.stem, split))
            else:  # written as tdfusion fuse writes it, then read back like any --fused folder
                write_image(_fuse_path(out, sample.stem), made.pop(i), durable=False)
                y = luminance(_fuse_path(out, sample.stem))
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
                    work_dir: str | os.PathLike, device="cpu", log=print, batch: int | None = None) -> dict[str, Path]:
    """Source folders of every source under ``work_dir/<label>``; ``{label: folder}``
    (:attr:`ImageSource.label`: the name, with ``#k`` for a name's fusion run k > 0).
    ``batch``: pairs per fusion call for checkpoints (:func:`materialize`)."""
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
        folders[s.label] = materialize(s, {"train": train_set, "test": test_set}, folder, device, batch)
        log(f"prepared source {s.label} ({len(train_set)} train + {len(test_set)} test images, "
            f"{time.perf_counter() - start:.1f} s)")
    return folders


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


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
            estimate_only: bool = False, batch: int | None = None, log=print) -> dict[str, Any] | None:
    """The whole protocol; returns the JSON payload (``docs`` and README: its shape).

    ``sources`` may repeat a name (the fusion-training runs of one method): they are
    pooled (:func:`pool_runs`). ``baseline`` (default :func:`default_baseline`) is the
    source every other is paired with (:func:`paired_differences`). ``estimate`` logs the
    projected training time (:func:`estimate_trainings`) before the first training;
    ``estimate_only`` returns None after it. ``batch``: pairs per fusion call when a
    checkpoint's images are made (default: 8 on GPU, one at a time through the banded
    executor on CPU; the images do not depend on it)."""
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
        if batch is None and str(device).startswith("cuda"):
            batch = 8
        folders = prepare_sources(sources, train_set, test_set, work_dir or tmp, device, log, batch)
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
               "environment": {**environment(), "jobs": jobs, "threads_per_job": threads_per_job(jobs)}}
    if len(summary) > 1:
        payload["paired"] = paired_differences(summary, baseline, metrics)
    return payload


def write_payload(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    with atomic_write(path, "w") as fh:
        json.dump(payload, fh, indent=2)
