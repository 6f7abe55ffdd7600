"""Argument groups and helpers shared by commands (commands do not import each other)."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from ..errors import TDFusionError

__all__ = ["add_input_arguments", "add_source_arguments", "batch_size", "check_memory", "check_pair_size",
           "compute_metrics", "config_for", "done_line", "folder_names", "fused_groups", "load_net", "method_inputs",
           "metric_workers", "planned_jobs", "refuse_video_options", "resized"]


# -- eval and compare ------------------------------------------------------------------

def add_source_arguments(p: argparse.ArgumentParser) -> None:
    """Task, data and --fused folders: the arguments of ``eval`` and ``compare``."""
    p.add_argument("--task", metavar="NAME", help="task: seg, det, recon (default: the checkpoint's)")
    p.add_argument("--dataset", metavar="NAME", help="dataset or recipe name (default: the checkpoint's)")
    p.add_argument("--data-root", metavar="DIR", help="dataset root folder")
    p.add_argument("--config", metavar="YAML", help="run config (default: the checkpoint's, else the recipe)")
    p.add_argument("--device", metavar="DEV", help="cuda, cpu (default: cuda when available)")
    p.add_argument("--fused", nargs="+", default=[], metavar="DIR", help="folders of fused images of other methods")
    p.add_argument("--names", nargs="+", default=None, metavar="NAME", help="names for the --fused folders")
    p.add_argument("--limit", type=int, metavar="N", help="evaluate at most N test pairs")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON")
    p.add_argument("--csv", metavar="PATH", help="write the results as CSV")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")


def folder_names(args: argparse.Namespace, pooled: bool = False) -> list[str]:
    """The --fused folders' names; ``pooled``: a name may repeat (one method's fusion runs)."""
    names = args.names or [Path(d).name for d in args.fused]
    if len(names) != len(args.fused):
        raise TDFusionError(f"--names gives {len(names)} names for {len(args.fused)} --fused folders")
    if not pooled and len(set(names)) != len(names):
        raise TDFusionError(f"--names must be distinct: {' '.join(names)}")
    return names


def config_for(args: argparse.Namespace, ckpt: dict | None) -> dict:
    """The config of ``eval``/``compare``: --config, else the checkpoint's, else the recipe;
    then the flags and overrides."""
    from ..config import resolve

    saved = (ckpt or {}).get("extra", {}).get("config") or None
    return resolve(args.config, dataset=args.dataset, saved=saved, overrides=args.overrides,
                   task=args.task, data_root=args.data_root, device=args.device)


# -- metrics and report ----------------------------------------------------------------

def add_input_arguments(p: argparse.ArgumentParser) -> None:
    """``--a``, ``--b``, ``--fused``, ``--names``: shared with ``tdfusion report``."""
    p.add_argument("--a", required=True, metavar="PATH",
                   help="first source: a folder (or one image) - infrared, CT/PET, near focus, under-exposed")
    p.add_argument("--b", required=True, metavar="PATH",
                   help="second source: a folder (or one image) - visible, MRI, far focus, over-exposed")
    p.add_argument("--fused", required=True, nargs="+", metavar="PATH",
                   help="one folder (or image) of fused results per method")
    p.add_argument("--names", nargs="+", metavar="NAME",
                   help="display name per --fused entry (default: the folder name)")
    p.add_argument("--allow-missing", action="store_true",
                   help="score each method on the fused images it has, naming those it lacks (default: a "
                        "missing fused image is an error); the 'images' column shows the counts")


def method_inputs(fused: Sequence[str], names: Sequence[str] | None) -> list:
    """Pair ``--fused`` paths with ``--names`` (default: each path's folder/file stem):
    a list of :class:`~tdfusion.metrics.folders.MethodInput`."""
    from ..metrics.folders import MethodInput

    if names is not None and len(names) != len(fused):
        raise TDFusionError(f"--names: {len(names)} name(s) given for {len(fused)} --fused path(s)")
    out = []
    for i, path in enumerate(fused):
        p = Path(path)
        default = p.stem if p.is_file() else (p.resolve().name or str(p))
        out.append(MethodInput(names[i] if names else default, p))
    return out


#: ``--workers`` of ``metrics`` and ``report`` (see :func:`metric_workers`).
WORKERS_HELP = ("worker processes, one thread each (default: --threads N when given, else the number of CPUs; "
                "never more than --threads; 1 = no subprocesses)")


def metric_workers(args: argparse.Namespace) -> int | None:
    """Worker processes of ``metrics``/``report``: ``--workers``, by default ``--threads``
    (None, every CPU, when neither is given); never more than ``--threads``, the CPU budget
    the user gave (each worker runs on one thread)."""
    workers, threads = getattr(args, "workers", None), getattr(args, "threads", None)
    if threads is None:
        return workers
    if workers is None:
        return threads
    if workers > threads:
        print(f"note: --workers {workers} lowered to --threads {threads}")
        return threads
    return workers


def planned_jobs(args: argparse.Namespace) -> list:
    """The checked jobs of ``metrics``/``report`` (:func:`~tdfusion.metrics.folders.plan_jobs`),
    after one note line per method on the fused images it lacks (``--allow-missing``) and
    on those it holds beyond the ones the sources name (not scored)."""
    from ..metrics.folders import plan_jobs

    methods = method_inputs(args.fused, args.names)
    missing: list[tuple[str, str]] | None = [] if getattr(args, "allow_missing", False) else None
    ignored: list[tuple[str, Path]] = []
    jobs = plan_jobs(args.a, args.b, methods, missing=missing, ignored=ignored)
    for method in dict.fromkeys(m for m, _ in ignored):
        extra = [p for m, p in ignored if m == method]
        path = next(m.path for m in methods if m.name == method)
        print(f"note: {method}: {len(extra)} fused image(s) in {path} have no source pair and were ignored "
              f"(e.g. {extra[0].name})")
    for method in dict.fromkeys(m for m, _ in missing or []):
        stems = [s for m, s in missing if m == method]
        shown = ", ".join(stems[:10]) + (f" and {len(stems) - 10} more" if len(stems) > 10 else "")
        print(f"note: {method}: {len(stems)} fused image(s) missing, scored without them: {shown}")
    return jobs


def compute_metrics(args: argparse.Namespace, description: str = "metrics", jobs: list | None = None) -> dict:
    """Validate the inputs (unless ``jobs`` were planned already: :func:`planned_jobs`), then
    score every image with a progress bar; returns the results."""
    from ..metrics.evaluate import mean_metrics
    from ..metrics.folders import evaluate_jobs
    from ..progress import progress_bar

    if jobs is None:
        jobs = planned_jobs(args)
    if not jobs:
        raise TDFusionError("no fused image to score")
    show = not getattr(args, "quiet", False) and len(jobs) > 1
    with progress_bar(len(jobs), description, enabled=show) as advance:
        per_method = evaluate_jobs(jobs, metric_workers(args), "sum" if args.vif_sum else "mean",
                                   on_done=lambda job: advance())
    return {name: {"mean": mean_metrics(per_image), "per_image": per_image}
            for name, per_image in per_method.items()}


# -- fuse: what its image and video paths share ---------------------------------------
def check_pair_size(pa, pb, sa: tuple[int, int], sb: tuple[int, int], resize_b: bool) -> None:
    if sa != sb and not resize_b:
        raise TDFusionError(f"{pb}: size {sb[1]}x{sb[0]} differs from {pa} ({sa[1]}x{sa[0]}); "
                            f"pass --resize-b to resample B")


def check_memory(net, sized_paths, args: argparse.Namespace, device) -> None:
    """Fail before writing anything if an image cannot fit --max-memory (or, on GPU, its free memory)."""
    from ..nets.band_plan import plan_bands

    if args.max_memory is None and args.chunk_rows is None and device.type != "cuda":
        return
    for path, (height, width) in sized_paths:
        try:
            plan_bands(net, height, width, args.chunk_rows, args.max_memory, device,
                       next(net.parameters()).element_size())
        except TDFusionError as exc:
            raise TDFusionError(f"{path}: {exc}") from None


def resized(img, size: tuple[int, int]):
    import cv2
    import numpy as np

    from ..io import Image

    h, w = size
    shrink = img.size[0] * img.size[1] > h * w
    pixels = cv2.resize(img.pixels, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)
    return Image(np.clip(pixels, 0.0, 1.0), img.bit_depth)


def load_net(args: argparse.Namespace, device):
    import torch

    from ..checkpoint import load_fusion_net

    net, _ = load_fusion_net(args.checkpoint, device)
    return net.to(getattr(torch, args.precision))


def done_line(what: str, count: int, seconds: float, out: Path, replaced: int, skipped: int) -> str:
    rate = f" in {seconds:.1f} s ({count / seconds:.2f} {what}/s)" if count and seconds > 0 else ""
    notes = [f"replaced {replaced} existing file(s)"] if replaced else []
    notes += [f"skipped {skipped} existing (--skip-existing)"] if skipped else []
    return f"fused {count} {what}{rate} into {out}" + (f"; {', '.join(notes)}" if notes else "")


def refuse_video_options(args: argparse.Namespace, what: str) -> None:
    """--crf and --lossless concern a video file; anywhere else they would do nothing."""
    given = [flag for flag, on in (("--crf", args.crf is not None), ("--lossless", args.lossless)) if on]
    if given:
        raise TDFusionError(f"{' and '.join(given)} {'apply' if len(given) > 1 else 'applies'} to a video file "
                            f"--out (.mkv, .mp4, .webm...), not to {what}")


def batch_size(args: argparse.Namespace, device) -> int | None:
    """Pairs per network call: ``--batch``, by default 8 on GPU; None (one pair at a time
    through the banded executor) by default on CPU (the path BENCHMARKS.md measures there)."""
    if args.batch is not None:
        if args.batch < 1:
            raise TDFusionError(f"--batch {args.batch}: must be at least 1")
        return args.batch
    return 8 if device.type == "cuda" else None


def fused_groups(net, frames, args: argparse.Namespace, batch: int | None):
    """``(indices, [(raw, out)])`` per network call over decoded ``(a, b)`` pairs, B resampled
    to A's size first where they differ (:func:`~tdfusion.inference.fuse_image_groups`)."""
    from ..inference import fuse_image_groups

    frames = [(a, b if b.size == a.size else resized(b, a.size)) for a, b in frames]
    return fuse_image_groups(net, frames, batch, normalize=args.normalize, gray=args.gray,
                             max_memory=args.max_memory, chunk_rows=args.chunk_rows)
