"""Measuring: the hardware a figure was taken on, timing, peak memory and FLOPs.

Every figure is the median of several timed runs after warm-up runs, with the hardware
it was taken on (CPU model, cores, torch threads, GPU, and the load average: the
project's machine is shared, and a busy neighbour slows everything down). Achieved
GFLOP/s count the network's multiply-adds (``torch.utils.flop_counter``: convolutions
and matrix products, 2 FLOP each) per second of wall time. Peak memory is the process's
peak resident set (CPU, ``VmHWM`` after resetting it) or torch's peak allocation (GPU).
"""
from __future__ import annotations

import os
import platform
import statistics
import time
from math import prod
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..hostinfo import cpu_model

__all__ = ["MemoryPeak", "count_flops", "flops_per_op", "hardware", "run_child", "timed", "timing_row"]


def hardware(device: torch.device) -> dict[str, Any]:
    """What the figures were measured on."""
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "gpu": None,
    }
    if hasattr(os, "getloadavg"):
        info["load_average_1min"] = round(os.getloadavg()[0], 2)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = f"{props.name}, {props.total_memory / 2 ** 30:.0f} GiB"
    return info


class MemoryPeak:
    """Peak memory of a block: process peak RSS on CPU (Linux), torch's peak on GPU.

    ``peak_mb``: the peak during the block; ``base_mb``: resident/allocated at its start.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_mb: float | None = None
        self.base_mb: float | None = None

    def __enter__(self) -> MemoryPeak:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base_mb = torch.cuda.memory_allocated(self.device) / 2 ** 20
        else:
            try:  # "5" resets the peak RSS (VmHWM) to the current RSS (Linux >= 4.0)
                Path("/proc/self/clear_refs").write_text("5")
            except OSError:
                pass
            self.base_mb = _status_mb("VmRSS")
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2 ** 20
        else:
            self.peak_mb = _status_mb("VmHWM")


def run_child(argv: list[str], what: str) -> str:
    """Run a measurement in a fresh interpreter (``argv``) and return its standard output;
    a failure becomes one line, ``what`` and the child's last line of output."""
    import subprocess

    from ..errors import TDFusionError

    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr or proc.stdout).strip().splitlines() if ln.strip()]
        raise TDFusionError(f"{what}: {lines[-1] if lines else 'the child process failed'}")
    return proc.stdout


def _status_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def timed(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> list[float]:
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return times


def _conv_backward_flops(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, _transposed,
                         _output_padding, _groups, output_mask, **kwargs) -> int:
    """Backward of a convolution: each requested gradient costs one forward convolution.

    torch's own formula ignores ``groups`` and counts a depthwise convolution's weight
    gradient ``C`` times over (178 of 203 GFLOP of the fusion network's backward pass).
    """
    forward = prod(grad_out_shape[2:]) * prod(w_shape[2:]) * x_shape[0] * w_shape[0] * w_shape[1] * 2
    return forward * (int(output_mask[0]) + int(output_mask[1]))


def flops_per_op(fn: Callable[[], Any]) -> dict[str, float] | None:
    """FLOPs of one call of ``fn`` per operator (``aten.mm``, ...); None if they cannot be counted."""
    try:
        mapping = {torch.ops.aten.convolution_backward: _conv_backward_flops}
        with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
            fn()
    except Exception:  # a kernel without a FLOP formula must not stop the benchmark
        return None
    return {str(op): float(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}


def count_flops(fn: Callable[[], Any]) -> float | None:
    per_op = flops_per_op(fn)
    return None if per_op is None else sum(per_op.values())


def timing_row(times: list[float], flops: float | None) -> dict[str, Any]:
    med = statistics.median(times)
    return {"median_s": med, "min_s": min(times), "runs": len(times),
            "gflops_per_s": None if flops is None else flops / med / 1e9,
            "gflop": None if flops is None else flops / 1e9}
