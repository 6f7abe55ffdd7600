"""Where the time goes: operator profiles grouped by kind, and the machine's ceilings."""
from __future__ import annotations

from typing import Any, Callable

import torch

from .measure import flops_per_op, timed

__all__ = ["machine_roofline", "profile_breakdown"]


def _op_category(name: str) -> str:
    """Group an operator: matrix products and convolutions do the arithmetic, the rest moves memory."""
    name = name.replace("::", ".")  # profiler: aten::mm; FLOP counter: aten.mm(.default)
    name = name[5:] if name.startswith("aten.") else name
    name = name.split(".")[0]
    if "conv" in name:
        return "convolutions"
    if name in ("mm", "addmm", "bmm", "baddbmm", "matmul", "linear", "addmv", "mv"):
        return "matrix products"
    return "other (elementwise, norms, copies, reductions)"


def profile_breakdown(fn: Callable[[], Any], device: torch.device, top: int = 12) -> dict[str, Any]:
    """Where one call of ``fn`` spends its time: per operator category and the top operators.

    Times are operators' self times from ``torch.profiler`` (CPU time on the calling
    thread, which waits for its OpenMP partners; CUDA kernel time on GPU); FLOPs per
    category come from a separate run under the FLOP counter, so that each category's
    achieved GFLOP/s shows whether it is bound by arithmetic or by memory traffic.
    """
    from torch.profiler import ProfilerActivity, profile

    flops: dict[str, float] = {}
    for op, n in (flops_per_op(fn) or {}).items():  # None: times only
        cat = _op_category(op)
        flops[cat] = flops.get(cat, 0.0) + n
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    events = [e for e in prof.key_averages() if e.key.startswith("aten::")]
    use_cuda = device.type == "cuda"

    def self_s(e) -> float:
        us = getattr(e, "self_device_time_total", 0) if use_cuda else e.self_cpu_time_total
        return us / 1e6

    total = sum(self_s(e) for e in events) or float("nan")
    cats: dict[str, dict[str, float]] = {}
    for e in events:
        c = cats.setdefault(_op_category(e.key), {"s": 0.0, "calls": 0})
        c["s"] += self_s(e)
        c["calls"] += e.count
    categories = []
    for name, c in sorted(cats.items(), key=lambda kv: -kv[1]["s"]):
        f = flops.get(name)
        categories.append({"category": name, "s": c["s"], "share": c["s"] / total, "calls": int(c["calls"]),
                           "gflop": None if f is None else f / 1e9,
                           "gflops_per_s": None if not f or c["s"] <= 0 else f / c["s"] / 1e9})
    ops = sorted(events, key=self_s, reverse=True)[:top]
    return {"timer": "cuda kernel" if use_cuda else "cpu self time", "total_s": total, "categories": categories,
            "top_ops": [{"op": e.key, "calls": e.count, "s": self_s(e), "share": self_s(e) / total} for e in ops]}


def machine_roofline(device: torch.device) -> dict[str, float]:
    """What the hardware can do at best: fp32 matrix-product GFLOP/s and memory copy GB/s.

    The ceilings against which the profile's categories are read: a category far below
    the matrix-product rate whose bytes moved are near the copy rate is memory-bound.
    """
    def best(fn):
        return min(timed(fn, device, warmup=1, repeats=5))

    n = 2048
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    t_mm = best(lambda: torch.mm(a, b))
    src = torch.empty(2 ** 26, device=device)  # 256 MiB: far beyond any cache
    dst = torch.empty_like(src)
    t_copy = best(lambda: dst.copy_(src))
    return {"matmul_gflops_per_s": 2 * n ** 3 / t_mm / 1e9,
            "copy_gb_per_s": 2 * src.numel() * src.element_size() / t_copy / 1e9}
