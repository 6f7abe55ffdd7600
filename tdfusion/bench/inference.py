"""Inference benchmarks: fusing one pair per size along each path, and the bf16 error."""
from __future__ import annotations

import statistics
from typing import Any, Callable

import torch

from ..nets import FusionNet
from ..nets.band_plan import plan_bands
from ..nets.banded import fuse_banded
from .measure import MemoryPeak, count_flops, timed, timing_row
from .profile import profile_breakdown

__all__ = ["bench_inference", "bf16_error", "fusion_flops_per_pixel"]


def fusion_flops_per_pixel(net: FusionNet) -> float:
    """The network's FLOPs per output pixel (multiply-adds of convolutions and products x 2).

    Counted on the plain formulation (:mod:`tdfusion.nets.reference`) at 64x64, so that
    GFLOP/s measure useful work whichever path runs (the module's path computes a
    slightly larger Gram matrix); every layer's cost is linear in the pixel count.
    """
    from ..nets.reference import plain_fusion

    param = next(net.parameters())
    a = torch.rand(1, 1, 64, 64, dtype=param.dtype, device=param.device)
    params = dict(net.named_parameters())
    with torch.inference_mode():
        flops = count_flops(lambda: plain_fusion(params, a, a, net.config["num_blocks"], net.config["heads"]))
    return (flops or float("nan")) / (64 * 64)


def bench_inference(net: FusionNet, sizes: list[tuple[int, int]], device: torch.device, warmup: int = 1,
                    repeats: int = 3, paths: tuple[str, ...] = ("banded",), chunk_rows: int | None = None,
                    max_memory: str | None = None, dtype: torch.dtype = torch.float32,
                    progress: Callable[[str], None] | None = None, profile_top: int = 0) -> list[dict[str, Any]]:
    """Time fusing one pair per size along each path.

    Paths: ``banded`` (the default inference path, :func:`tdfusion.nets.banded.fuse_banded`),
    ``module`` (the optimised module's forward on the whole image), ``plain`` (the plain
    NCHW formulation of :mod:`tdfusion.nets.reference`, i.e. the code before issue 7).
    ``profile_top > 0`` adds each figure's :func:`profile_breakdown` (that many operators).
    """
    from ..nets.reference import plain_fusion

    net = net.to(device=device, dtype=dtype).eval()
    per_pixel = fusion_flops_per_pixel(net)
    params = dict(net.named_parameters())
    cfg = net.config
    rows = []
    for h, w in sizes:
        g = torch.Generator().manual_seed(h * 7919 + w)
        a = torch.rand(h, w, generator=g).to(device, dtype)
        b = torch.rand(h, w, generator=g).to(device, dtype)
        for path in paths:
            if progress:
                progress(f"inference {w}x{h} {path}")
            if path == "banded":
                plan = plan_bands(net, h, w, chunk_rows, max_memory, device, a.element_size())

                def fn():
                    return fuse_banded(net, a, b, band_rows=plan.rows)
            elif path in ("module", "plain"):
                plan = None
                a4, b4 = a[None, None], b[None, None]

                def fn(path=path):
                    with torch.inference_mode():
                        if path == "module":
                            return net(a4, b4)
                        return plain_fusion(params, a4, b4, cfg["num_blocks"], cfg["heads"])
            else:
                raise ValueError(f"unknown inference path {path!r} (banded, module, plain)")
            with MemoryPeak(device) as mem:
                times = timed(fn, device, warmup, repeats)
            row = {"what": "inference", "size": f"{w}x{h}", "path": path, "dtype": str(dtype).replace("torch.", ""),
                   **timing_row(times, per_pixel * h * w), "pairs_per_s": 1.0 / statistics.median(times),
                   "peak_mb": mem.peak_mb, "start_mb": mem.base_mb}
            if plan is not None:
                row.update(band_rows=plan.rows, bands=plan.count, planned_mb=plan.expected_bytes / 2 ** 20)
            if profile_top > 0:
                row["profile"] = profile_breakdown(fn, device, profile_top)
            rows.append(row)
    return rows


def bf16_error(net: FusionNet, device: torch.device, size: tuple[int, int] = (256, 256)) -> dict[str, float]:
    """Max/mean absolute difference of the fused output in bfloat16 (and float16 on GPU) vs float32."""
    g = torch.Generator().manual_seed(0)
    a = torch.rand(*size, generator=g)
    b = torch.rand(*size, generator=g)
    ref = fuse_banded(net.float().to(device), a, b).float().cpu()
    out = {}
    dtypes = [torch.bfloat16] + ([torch.float16] if device.type == "cuda" else [])
    for dt in dtypes:
        low = fuse_banded(net.to(dt), a, b).float().cpu()
        diff = (low - ref).abs()
        out[str(dt).replace("torch.", "")] = {"max_abs": float(diff.max()), "mean_abs": float(diff.mean())}
    net.float()
    return out
