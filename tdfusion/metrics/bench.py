"""Benchmark of the fusion metrics: ``python -m tdfusion.metrics.bench``.

Prints the hardware and library versions, the time of each metric on one 640x480
image triple (median of several runs, one process), and the throughput of
``tdfusion metrics`` over a folder with 1 worker and with one worker per CPU.

Images: MSRS infrared/visible pairs from the shared data folder when present
(``--data``), otherwise synthetic 640x480 textures; the "fused" image is the mean of the
two sources' luminance (any image works: the cost does not depend on the content).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from ..hostinfo import cpu_model


def _hardware() -> str:
    import scipy
    import skimage

    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = " / ".join(f"{v:.1f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return (f"CPU: {cpu_model()} ({os.cpu_count()} logical CPUs, {affinity} usable; "
            f"load average {load} at start: other processes compete for the cores)\n"
            f"Python {platform.python_version()}, numpy {np.__version__}, scipy {scipy.__version__}, "
            f"OpenCV {cv2.__version__}, scikit-image {skimage.__version__}, OS {platform.platform()}")


def _make_pairs(folder: Path, count: int, data: Path | None) -> None:
    from ..io import list_images

    src = None
    if data is not None and (data / "msrs_det" / "test" / "ir").is_dir():
        src = data / "msrs_det" / "test"
    rng = np.random.default_rng(0)
    irs = list(list_images(src / "ir").items())[:count] if src else []
    for i in range(count):
        if src and i < len(irs):
            stem, p_ir = irs[i]
            ir = cv2.imread(str(p_ir), cv2.IMREAD_GRAYSCALE)
            vi = cv2.imread(str(src / "vi" / f"{stem}.png"), cv2.IMREAD_COLOR)
        else:
            stem = f"synthetic_{i:03d}"
            ir = cv2.GaussianBlur(rng.uniform(0, 255, (480, 640)), (0, 0), 2).astype(np.uint8)
            vi = cv2.GaussianBlur(rng.uniform(0, 255, (480, 640, 3)), (0, 0), 1).astype(np.uint8)
        fused = ((ir.astype(np.float32) + cv2.cvtColor(vi, cv2.COLOR_BGR2GRAY)) / 2).astype(np.uint8)
        for sub, img in (("ir", ir), ("vi", vi), ("fused", fused)):
            (folder / sub).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(folder / sub / f"{stem}.png"), img)


def _import_metrics(_: int) -> None:
    import tdfusion.metrics.folders  # noqa: F401  (what a worker imports before its first image)


def main(argv: list[str] | None = None) -> None:
    from ..metrics import METRIC_NAMES, MethodInput, evaluate, load_luminance
    from .folders import evaluate_jobs, plan_jobs

    default_data = Path(os.environ.get("TDFUSION_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=default_data, help="shared data folder (MSRS pairs)")
    parser.add_argument("--images", type=int, default=8, help="images for the folder throughput (default 8)")
    parser.add_argument("--repeats", type=int, default=5, help="runs per metric (median; default 5)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel run workers")
    parser.add_argument("--compare-sewar", action="store_true",
                        help="also time sewar.vifp (A->F and B->F), the direct-convolution VIF")
    args = parser.parse_args(argv)

    print(_hardware())
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        _make_pairs(folder, args.images, args.data if args.data.is_dir() else None)
        stem = sorted(p.stem for p in (folder / "ir").iterdir())[0]
        f, a, b = (load_luminance(folder / sub / f"{stem}.png") for sub in ("fused", "ir", "vi"))
        print(f"images: {'MSRS ' if not stem.startswith('synthetic') else 'synthetic '}"
              f"{a.shape[1]}x{a.shape[0]}, first = {stem}")
        print(f"\nper metric, one process (median of {args.repeats}):")
        total = 0.0
        for name in METRIC_NAMES:
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                evaluate(f, a, b, metrics=[name])
                times.append(time.perf_counter() - t0)
            med = statistics.median(times)
            total += med
            print(f"  {name:5s} {med * 1e3:8.1f} ms")
        print(f"  {'all':5s} {total * 1e3:8.1f} ms per 640x480 image (sum of medians)")
        if args.compare_sewar:
            import sewar

            t0 = time.perf_counter()
            value = (sewar.vifp(a, f) + sewar.vifp(b, f)) / 2
            print(f"  sewar.vifp for the same VIF: {(time.perf_counter() - t0) * 1e3:8.1f} ms "
                  f"(value {value:.9f}, ours {evaluate(f, a, b, metrics=['VIF'])['VIF']:.9f})")

        jobs = plan_jobs(folder / "ir", folder / "vi", [MethodInput("fused", folder / "fused")])
        print(f"\nfolder of {len(jobs)} images, reading files included:")
        if args.workers > 1:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            from .folders import _worker_init

            t0 = time.perf_counter()
            with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn"),
                                     initializer=_worker_init) as pool:
                list(pool.map(_import_metrics, range(args.workers)))
            print(f"  starting {args.workers} worker processes (spawn + imports): "
                  f"{time.perf_counter() - t0:6.2f} s, paid once per run")
        for workers in sorted({1, args.workers}):
            t0 = time.perf_counter()
            evaluate_jobs(jobs, workers)
            dt = time.perf_counter() - t0
            print(f"  --workers {workers}: {dt:6.2f} s total, {dt / len(jobs) * 1e3:7.1f} ms per image"
                  + ("  (includes starting the worker processes)" if workers > 1 else ""))


if __name__ == "__main__":
    main()
