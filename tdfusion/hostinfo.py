"""What machine and software this is, without importing torch (the metrics benchmark does not need it)."""
from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from pathlib import Path

__all__ = ["NUMERIC_PACKAGES", "cpu_features", "cpu_model", "environment"]

#: The installed packages whose version can change a trained network's numbers: the
#: compare tables record them (a fresh install of OpenCV 5.1 instead of 5.0 moved the
#: detection table through ultralytics' augmentation: docs/results.md).
NUMERIC_PACKAGES = ("torch", "torchvision", "numpy", "opencv-python", "opencv-python-headless", "ultralytics",
                    "transformers", "scipy", "scikit-image", "pycocotools", "pillow")


def cpu_model() -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``), else what :mod:`platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_features() -> list[str]:
    """The vector extensions the CPU reports (those that pick different kernels: AVX2,
    AVX-512 and its BF16/VNNI, AMX), from ``/proc/cpuinfo``; empty elsewhere."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = line.split(":", 1)[1].split()
                return sorted(f for f in flags if f in ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni",
                                                        "amx_tile", "amx_bf16", "avx512fp16"))
    except OSError:
        pass
    return []


def environment() -> dict:
    """Machine and software that numbers depend on: CPU, its vector extensions, the CPU
    threads torch would use, the variables that override kernel choices, Python and the
    :data:`NUMERIC_PACKAGES` installed."""
    packages = {}
    for name in NUMERIC_PACKAGES:
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    env = {k: os.environ[k] for k in ("OMP_NUM_THREADS", "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")
           if k in os.environ}
    out = {"cpu": cpu_model(), "cpu_features": cpu_features(), "cpu_count": os.cpu_count(),
           "python": sys.version.split()[0], "packages": packages}
    if env:
        out["variables"] = env
    if "torch" in sys.modules:
        out["torch_threads"] = sys.modules["torch"].get_num_threads()
    return out
