"""Device and CPU-thread selection shared by every command (``--device``, ``--threads``)."""
from __future__ import annotations

import contextlib
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

import torch

from .errors import TDFusionError

__all__ = ["cpu_cores", "exact_float32", "in_flight", "resolve_device", "set_threads"]

T = TypeVar("T")
R = TypeVar("R")


def resolve_device(name: str | None = None) -> torch.device:
    """``None``/``"auto"`` -> CUDA when available, else CPU; otherwise the named device.

    Raises TDFusionError for a CUDA device on a machine without one.
    """
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise TDFusionError(f"--device {name!r}: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TDFusionError(f"--device {name!r}: CUDA is not available on this machine (use --device cpu)")
    return device


@contextlib.contextmanager
def exact_float32() -> Iterator[None]:
    """Float32 convolutions and matrix products without TF32 inside the block (CUDA).

    cuDNN runs float32 convolutions in TF32 (a 10-bit mantissa) on Ampere and later GPUs by
    default (``torch.backends.cudnn.allow_tf32`` is True): on an H200 that moved the
    published checkpoints' outputs by 3.4e-4, over the 1e-4 parity bar. Fusing is cheap
    next to training, so inference in float32 means float32; training keeps torch's
    defaults. The flags are process-wide, hence restored on exit.
    """
    conv, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = conv
        torch.backends.cuda.matmul.allow_tf32 = matmul


def cpu_cores() -> int:
    """Cores this process may run on (its affinity mask, else the machine's count)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def set_threads(n: int | None) -> int:
    """Use at most ``n`` CPU threads for computing (``--threads``); ``None`` keeps torch's
    default (one per core). Returns the number in force.

    Sets torch's intra-op pool and OpenCV's, and ``OMP_NUM_THREADS`` so that processes
    started afterwards (data-loader and metric workers, bench children) inherit the
    bound. Why it matters: on a machine shared with other jobs, an operator split over
    all cores waits for every descheduled partner thread; ``tdfusion fuse`` measured 4x
    slower with two threads than with one on a loaded 2-core machine (docs/performance.md).
    """
    if n is None:
        return torch.get_num_threads()
    if int(n) < 1:
        raise TDFusionError(f"--threads {n}: must be at least 1")
    n = int(n)
    torch.set_num_threads(n)
    os.environ["OMP_NUM_THREADS"] = str(n)
    try:
        import cv2

        cv2.setNumThreads(n)
    except ImportError:  # OpenCV is a dependency; a stripped install still gets the torch bound
        pass
    return n


def in_flight(fn: Callable[[T], R], items: Iterable[T], jobs: int) -> Iterator[R]:
    """``map(fn, items)`` with up to ``jobs`` items in flight, results in order.

    For independent work items (image pairs) whose time goes to torch operators and
    OpenCV, which release the GIL: ``jobs`` Python threads, each running its operators
    on ``torch.get_num_threads() // jobs`` threads, keep every core busy with a different
    item instead of splitting each small operator over all cores (on the project's 2-core
    VM one 480x640 pair per core gives more pairs per second than one pair over both:
    BENCHMARKS.md). Threads rather than processes: the network and the inputs are shared
    as they are, nothing is pickled or loaded twice, and only ``jobs`` items occupy
    memory at once. The first exception is raised when its item's turn comes.
    """
    items = list(items)
    jobs = max(1, min(int(jobs), len(items)))
    if jobs == 1:
        yield from map(fn, items)
        return
    total = torch.get_num_threads()
    torch.set_num_threads(max(1, total // jobs))
    try:
        with ThreadPoolExecutor(jobs) as pool:
            # Submit lazily, at most ``jobs`` ahead of the consumer: a folder of thousands of
            # pairs must not hold thousands of decoded results.
            pending = []
            it = iter(items)
            for item in it:
                pending.append(pool.submit(fn, item))
                if len(pending) >= jobs:
                    break
            while pending:
                result = pending.pop(0).result()
                nxt = next(it, _END)
                if nxt is not _END:
                    pending.append(pool.submit(fn, nxt))
                yield result
    finally:
        torch.set_num_threads(total)


_END = object()
