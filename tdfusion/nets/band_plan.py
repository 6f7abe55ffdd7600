"""How an image is cut into bands for :mod:`tdfusion.nets.banded`, and the memory that takes.

The banded pass keeps ``2 * dim`` feature channels at full resolution (:func:`resident_bytes`)
and a workspace proportional to the band height (:func:`workspace_bytes_per_row`);
:func:`plan_bands` picks the height from a requested one, a memory bound, the free GPU
memory or, on CPU, the speed-oriented default (:func:`default_band_rows`).
"""
from __future__ import annotations

import ctypes
import functools
import math
import re
import sys

import torch

from ..errors import TDFusionError
from .fusion import FusionNet

__all__ = [
    "DEFAULT_BAND_PIXELS", "GPU_MEMORY_SHARE", "BandPlan", "batch_that_fits", "default_band_rows", "keep_freed_memory",
    "parse_memory", "plan_bands", "resident_bytes", "workspace_bytes_per_row",
]

#: Pixels per band on CPU when neither a band height nor a memory bound is given
#: (:func:`default_band_rows`). Bands are a trade: short ones pay per-operator overhead
#: and recompute more halo rows, tall ones stream whole-image tensors through memory, so
#: the height scales with 1/width. At about 20k pixels each of a band's widest tensors
#: (64 channels, 5.2 MB) stays in the 32 MB L3 of the project's VM (its L2, 1 MB per
#: core, holds no band of useful height: ``lscpu -C``). Measured there (BENCHMARKS.md,
#: "Band executor, before/after" and "Band height"): two pairs in flight at 640x480, 32
#: rows 0.706 s per pair against 77 rows 0.804 s (5 interleaved rounds); one thread,
#: 640x480 32 rows 1.29 s against 77 rows 1.45 s. At 1280x1024 (16 against 38 rows) and
#: 256x256 (80 rows against the whole image) the gain is within that sweep's noise.
DEFAULT_BAND_PIXELS = 20480
MIN_BAND_ROWS = 8


def parse_memory(text: str | int | float) -> int:
    """``"4G"``, ``"1.5GB"``, ``"500M"``, ``"800MiB"``, ``123456`` -> bytes (powers of 1024)."""
    if isinstance(text, (int, float)):
        return int(text)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmMgGtT]?)(i?[bB])?\s*", str(text))
    if not m:
        raise TDFusionError(f"--max-memory {text!r}: expected a size such as 4G, 1.5GB or 800M")
    scale = {"": 1, "k": 2 ** 10, "m": 2 ** 20, "g": 2 ** 30, "t": 2 ** 40}[m.group(2).lower()]
    return int(float(m.group(1)) * scale)


def resident_bytes(net: FusionNet, height: int, width: int, itemsize: int = 4) -> int:
    """Memory held for the whole run: the ``2 * dim`` feature buffer, both inputs, the output."""
    dim = net.config["dim"]
    return (2 * dim + 3) * height * width * itemsize


def workspace_bytes_per_row(net: FusionNet, width: int, itemsize: int = 4) -> int:
    """Upper bound of the band workspace per band row (the widest stage, the AFM apply pass).

    Counted from the tensors alive at once in that pass: the gate expansion (``8 dim``
    channels, its zero-padded copy and its depthwise output), both branch expansions
    (``4 dim`` each, three copies), the two gated products and a few ``2 dim`` tensors;
    rounded up, and with the 4 halo rows of each band charged separately by the planner.
    """
    dim = net.config["dim"]
    hidden = int(2 * dim * net.config["ffn_expansion"])
    channels = max(3 * 8 * dim + 6 * 4 * dim + 2 * 4 * dim + 6 * 2 * dim,  # AFM apply
                   6 * 2 * dim + 3 * 2 * hidden + 2 * hidden)               # decoder block apply
    return int(channels * 1.25) * width * itemsize


class BandPlan:
    """How an image is cut into bands: ``rows`` per band, and the memory it is expected to use."""

    def __init__(self, rows: int, height: int, width: int, resident: int, per_row: int):
        self.rows, self.height, self.width = rows, height, width
        self.resident, self.per_row = resident, per_row

    @property
    def count(self) -> int:
        return math.ceil(self.height / self.rows)

    @property
    def expected_bytes(self) -> int:
        return self.resident + self.per_row * (self.rows + 4)

    def __repr__(self) -> str:
        return (f"BandPlan(rows={self.rows}, bands={self.count}, "
                f"expected={self.expected_bytes / 2 ** 20:.0f} MiB)")


def default_band_rows(width: int) -> int:
    """The CPU band height for an image ``width`` pixels wide (see :data:`DEFAULT_BAND_PIXELS`)."""
    return max(MIN_BAND_ROWS, math.ceil(DEFAULT_BAND_PIXELS / max(int(width), 1)))


def plan_bands(net: FusionNet, height: int, width: int, band_rows: int | None = None,
               max_memory: int | str | None = None, device: torch.device | str = "cpu",
               itemsize: int = 4) -> BandPlan:
    """Choose the band height.

    * ``band_rows`` given: use it (at least 1).
    * ``max_memory`` given (bytes or a string such as ``"4G"``): the tallest band whose
      expected memory (resident buffers + band workspace) fits, but not taller than the
      default speed-oriented band on CPU. Raises :class:`TDFusionError` when even a
      one-row band does not fit.
    * neither: :func:`default_band_rows` on CPU; on GPU the whole image as one band, or
      the tallest band that fits in 80% of the GPU's free memory when the whole image
      does not (a clear error when not even one row fits).
    """
    resident = resident_bytes(net, height, width, itemsize)
    per_row = workspace_bytes_per_row(net, width, itemsize)
    device = torch.device(device)
    preferred = default_band_rows(width) if device.type == "cpu" else height
    if band_rows is not None:
        if int(band_rows) < 1:
            raise TDFusionError(f"--chunk-rows {band_rows}: must be at least 1")
        rows = int(band_rows)
    elif max_memory is not None:
        budget = parse_memory(max_memory)
        fits = (budget - resident) // per_row - 4
        if fits < 1:
            need = resident + per_row * 5
            raise TDFusionError(
                f"--max-memory {_fmt_bytes(budget)}: a {width}x{height} image needs at least "
                f"{_fmt_bytes(need)} ({_fmt_bytes(resident)} for its full-resolution features)")
        rows = int(min(fits, preferred))
    else:
        rows = preferred
        free = _free_gpu_bytes(device) if device.type == "cuda" else None
        if free is not None:
            budget = int(free * GPU_MEMORY_SHARE)
            fits = (budget - resident) // per_row - 4
            if fits < 1:
                raise TDFusionError(
                    f"a {width}x{height} image needs at least {_fmt_bytes(resident + per_row * 5)} of GPU "
                    f"memory, {_fmt_bytes(free)} is free; use --device cpu (or free the GPU)")
            rows = min(rows, fits)
    return BandPlan(max(1, min(rows, height)), height, width, resident, per_row)


def batch_that_fits(net: FusionNet, height: int, width: int, requested: int, max_memory: int | str | None = None,
                    device: torch.device | str = "cpu", itemsize: int = 4) -> int:
    """How many ``height x width`` pairs one plain forward call may take, at most ``requested``:
    each holds its whole-image features and workspace (a band as tall as the image); the
    bound is ``max_memory``, else on a GPU 80% of its free memory, else none. 0 when not
    even one fits (the caller then bands the image)."""
    per_pair = resident_bytes(net, height, width, itemsize) + workspace_bytes_per_row(net, width, itemsize) * (height + 4)
    device = torch.device(device)
    if max_memory is not None:
        budget = parse_memory(max_memory)
    elif device.type == "cuda":
        free = _free_gpu_bytes(device)
        budget = None if free is None else int(free * GPU_MEMORY_SHARE)
    else:
        budget = None
    return max(1, int(requested)) if budget is None else min(max(1, int(requested)), budget // per_pair)


#: Share of the GPU's free memory the default plan may use (the rest: allocator slack,
#: the caller's tensors, other processes' growth).
GPU_MEMORY_SHARE = 0.8


def _free_gpu_bytes(device: torch.device) -> int | None:
    try:
        return int(torch.cuda.mem_get_info(device)[0])
    except (RuntimeError, AssertionError, ValueError):  # no CUDA runtime: nothing to bound
        return None


def _fmt_bytes(n: int) -> str:
    return f"{n / 2 ** 30:.2f} GiB" if n >= 2 ** 30 else f"{n / 2 ** 20:.0f} MiB"


@functools.lru_cache(maxsize=None)
def keep_freed_memory() -> bool:
    """Ask glibc to recycle freed band-sized blocks instead of returning them to the OS.

    Every operator returns a new tensor of a few MiB. By default glibc serves such
    blocks with fresh ``mmap`` pages and trims its heap eagerly, so each band pays one
    page fault per 4 KiB written: 137,000 faults and 0.3 s of system time per 480x640
    image on the project's VM (measured with ``getrusage``), 10,000 with this setting.
    Process-wide and harmless (blocks over 32 MiB are still mapped and unmapped; at
    most 128 MiB of free heap is kept). Returns whether it applied (Linux/glibc only).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
        return bool(libc.mallopt(m_mmap_threshold, 32 * 2 ** 20)) and bool(
            libc.mallopt(m_trim_threshold, 128 * 2 ** 20))
    except (OSError, AttributeError):
        return False
