"""Benchmarks behind ``tdfusion bench``: inference at several sizes, one meta iteration per task.

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

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from .hostinfo import cpu_model
from .nets import FusionNet
from .nets.band_plan import plan_bands
from .nets.banded import fuse_banded

__all__ = ["hardware", "bench_inference", "bench_meta", "bench_data", "MemoryPeak", "profile_breakdown",
           "machine_roofline"]



# ---------------------------------------------------------------------------------------
# Environment
# ---------------------------------------------------------------------------------------

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


def _status_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _timed(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> list[float]:
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


def _flops_per_op(fn: Callable[[], Any]) -> dict[str, float] | None:
    """FLOPs of one call of ``fn`` per operator (``aten.mm``, ...); None if they cannot be counted."""
    try:
        mapping = {torch.ops.aten.convolution_backward: _conv_backward_flops}
        with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
            fn()
    except Exception:  # a kernel without a FLOP formula must not stop the benchmark
        return None
    return {str(op): float(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}


def _count_flops(fn: Callable[[], Any]) -> float | None:
    per_op = _flops_per_op(fn)
    return None if per_op is None else sum(per_op.values())


def _row(times: list[float], flops: float | None) -> dict[str, Any]:
    med = statistics.median(times)
    return {"median_s": med, "min_s": min(times), "runs": len(times),
            "gflops_per_s": None if flops is None else flops / med / 1e9,
            "gflop": None if flops is None else flops / 1e9}


# ---------------------------------------------------------------------------------------
# Inference
# ---------------------------------------------------------------------------------------

def fusion_flops_per_pixel(net: FusionNet) -> float:
    """The network's FLOPs per output pixel (multiply-adds of convolutions and products x 2).

    Counted on the plain formulation (:mod:`tdfusion.nets.reference`) at 64x64, so that
    GFLOP/s measure useful work whichever path runs (the optimised paths compute a
    slightly larger Gram matrix); every layer's cost is linear in the pixel count.
    """
    from .nets.reference import plain_fusion

    param = next(net.parameters())
    a = torch.rand(1, 1, 64, 64, dtype=param.dtype, device=param.device)
    params = dict(net.named_parameters())
    with torch.inference_mode():
        flops = _count_flops(lambda: plain_fusion(params, a, a, net.config["num_blocks"], net.config["heads"]))
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
    from .nets.reference import plain_fusion

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
                times = _timed(fn, device, warmup, repeats)
            row = {"what": "inference", "size": f"{w}x{h}", "path": path, "dtype": str(dtype).replace("torch.", ""),
                   **_row(times, per_pixel * h * w), "pairs_per_s": 1.0 / statistics.median(times),
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


# ---------------------------------------------------------------------------------------
# Meta iteration
# ---------------------------------------------------------------------------------------

#: Recipe config per task for the meta-iteration benchmark (sizes and loss as trained).
META_RECIPES = {"seg": "tdfusion_msrs_seg.yaml", "det": "tdfusion_msrs_det.yaml", "recon": "refusion_ivif.yaml"}


def _meta_batches(cfg: dict, target: str, seed: int) -> tuple[dict, dict, Any]:
    """A meta-train and a meta-test batch from synthetic scenes, as the trainer builds them."""
    from .data import build_dataset
    from .data.views import collate, swap_sources, train_view

    dc = cfg["data"]
    size = (480, 640) if dc["task_size"] is not None else (max(256, dc["crop_size"]),) * 2
    ds = build_dataset("synthetic", None, "train", length=64, size=size, target=target)
    rng = np.random.default_rng(seed)

    def batch(offset):
        items = [train_view(ds[offset + i], rng, dc["crop_size"], dc["task_size"], dc["hflip"])
                 for i in range(dc["batch_size"])]
        out = collate(items)
        return swap_sources(out) if dc["swap_sources"] else out

    return batch(0), batch(dc["batch_size"]), ds


def _meta_setup(task_name: str, device: torch.device, seed: int = 0) -> tuple[tuple, dict, str]:
    """The arguments of one meta iteration of ``task_name`` (recipe sizes, synthetic scenes,
    networks initialised from seed 0, batches drawn with ``seed``), its config and a shape text."""
    from .meta import objectives
    from .config import CONFIG_DIR, load_config
    from .data.views import to_device
    from .training.trainer import build_modules

    cfg = load_config(CONFIG_DIR / META_RECIPES[task_name])
    target = {"seg": "mask", "det": "boxes"}.get(task_name, "none")
    train_batch, test_batch, ds = _meta_batches(cfg, target, seed=seed)
    train_batch, test_batch = to_device(train_batch, device), to_device(test_batch, device)
    torch.manual_seed(0)
    m = build_modules(cfg, ds, device)
    fusion, lossgen, task, task_net, settings = m.fusion, m.lossgen, m.task, m.task_net.train(), m.settings
    lr = cfg["optim"]["lr_fusion"]
    args = (fusion, objectives.params_of(fusion), lossgen, objectives.params_of(lossgen), task, task_net,
            objectives.params_of(task_net), train_batch, test_batch, lr, cfg["optim"]["lr_task"], settings)
    shape = (f"batch {len(train_batch['stems'])}, crops {cfg['data']['crop_size']}, task input "
             + ("= crops" if cfg["data"]["task_size"] is None else "x".join(map(str, cfg["data"]["task_size"]))))
    return args, cfg, shape


def meta_gradient_agreement(task_name: str, device: torch.device, precision: str,
                            seeds: tuple[int, ...] = (0, 1)) -> list[float]:
    """Cosine similarity of G's meta-gradient under ``precision`` autocast to the fp32 one.

    One value per fixed batch pair (``seeds``), same networks and batches on both sides:
    the bar for using a lower precision in the meta step is 0.99 (issue 13).
    """
    from .meta.jvp import meta_gradient_jvp
    from .precision import autocast

    out = []
    for seed in seeds:
        args, _, _ = _meta_setup(task_name, device, seed)
        ref, _ = meta_gradient_jvp(*args)
        with autocast(precision, device):
            low, _ = meta_gradient_jvp(*args)
        a = torch.cat([ref[k].flatten() for k in ref]).double()
        b = torch.cat([low[k].flatten() for k in ref]).double()
        out.append(float(torch.nn.functional.cosine_similarity(a, b, dim=0)))
    return out


def bench_meta(task_name: str, device: torch.device, warmup: int = 1, repeats: int = 3,
               methods: tuple[str, ...] = ("jvp", "fusion_step"), progress: Callable[[str], None] | None = None,
               profile_top: int = 0, precision: str = "fp32") -> list[dict[str, Any]]:
    """Time one meta iteration (inner + outer update) or one fusion-phase step of a task.

    Sizes, batch and loss follow the task's shipped recipe (``META_RECIPES``) on synthetic
    scenes. Methods: ``jvp`` (:func:`tdfusion.meta.jvp.meta_gradient_jvp`, what training
    uses), ``second_order`` (the double-backward formulation, :func:`tdfusion.meta.objectives.meta_gradient_second_order`)
    and ``fusion_step`` (one step of F and T in the fusion phase, optimiser excluded).
    ``profile_top > 0`` adds each figure's :func:`profile_breakdown` (that many operators).
    ``precision`` (``fp32``, ``bf16``, ``fp16``): the computation runs under that autocast;
    a lower precision's ``jvp`` row also carries :func:`meta_gradient_agreement`.
    """
    from .meta import objectives
    from .meta.jvp import meta_gradient_jvp
    from .precision import autocast

    args, _, shape = _meta_setup(task_name, device)
    fusion, _, lossgen, _, task, task_net, _, train_batch, _, _, _, settings = args

    def fusion_step():  # the trainer's fusion_step without the optimiser updates
        out = objectives.fusion_objective(fusion, objectives.params_of(fusion), lossgen, objectives.params_of(lossgen),
                                      train_batch["crop_a"], train_batch["crop_b"], settings, detach_weights=True)
        out["loss"].backward()
        objectives.fusion_phase_task_loss(fusion, task, task_net, train_batch).backward()
        for net in (fusion, task_net):
            net.zero_grad(set_to_none=True)

    rows = []
    for method in methods:
        if progress:
            progress(f"{task_name}: {method}")
        phases: list[dict[str, float]] = []
        if method == "jvp":
            def run():
                t: dict[str, float] = {}
                meta_gradient_jvp(*args, timings=t)
                phases.append(t)
        elif method == "second_order":
            def run():
                objectives.meta_gradient_second_order(*args)
        elif method == "fusion_step":
            run = fusion_step
        else:
            raise ValueError(f"unknown meta method {method!r} (jvp, second_order, fusion_step)")

        def fn(run=run):
            with autocast(precision, device):
                run()

        with MemoryPeak(device) as mem:
            times = _timed(fn, device, warmup, repeats)
        flops = _count_flops(fn)
        phases = phases[warmup:warmup + repeats]
        row = {"what": "fusion_step" if method == "fusion_step" else "meta", "task": task_name,
               "method": method, "shape": shape, **_row(times, flops), "peak_mb": mem.peak_mb,
               "start_mb": mem.base_mb, "precision": precision}
        if precision != "fp32" and method == "jvp":
            if progress:
                progress(f"{task_name}: meta-gradient cosine similarity, {precision} vs fp32")
            row["cosine_vs_fp32"] = meta_gradient_agreement(task_name, device, precision)
        if phases:
            row["phases_s"] = {k: statistics.median(p[k] for p in phases) for k in phases[0]}
        if profile_top > 0:
            row["profile"] = profile_breakdown(fn, device, profile_top)
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------
# Data loading
# ---------------------------------------------------------------------------------------

def bench_data(dataset: str, root: str | None, crop_size: int = 256, task_size=(240, 320),
               batch_size: int = 1, batches: int = 20, workers: tuple[int, ...] = (0, 2),
               progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Seconds per training batch (decode, crop, resize, collate, swap) as the trainer loads them.

    For each worker count: a first pass with ``cache=False`` and, with ``cache=True``, a
    second pass over the same samples (decoded images served from memory).
    """
    from torch.utils.data import DataLoader

    from .data import build_dataset
    from .data.views import collate, swap_sources, train_view

    rows = []
    for cache in (False, True):
        ds = build_dataset(dataset, root, "train", cache=cache)
        n = min(len(ds), batches * batch_size)

        class Views(torch.utils.data.Dataset):
            def __len__(self):
                return n

            def __getitem__(self, i):
                return train_view(ds[i % len(ds)], np.random.default_rng(i), crop_size, task_size)

        for w in workers:
            if progress:
                progress(f"data {dataset} workers {w} cache {cache}")
            loader = DataLoader(Views(), batch_size=batch_size, num_workers=w, collate_fn=collate,
                                persistent_workers=w > 0)
            passes = []
            for _ in range(2 if cache else 1):
                t0 = time.perf_counter()
                count = sum(1 for batch in loader if swap_sources(batch))
                passes.append((time.perf_counter() - t0) / max(count, 1))
            rows.append({"what": "data", "dataset": dataset, "workers": w, "cache": cache,
                         "s_per_batch": passes[-1], "first_pass_s_per_batch": passes[0], "batches": count})
    return rows


# ---------------------------------------------------------------------------------------
# Where the time goes
# ---------------------------------------------------------------------------------------

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
    for op, n in (_flops_per_op(fn) or {}).items():  # None: times only
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
        return min(_timed(fn, device, warmup=1, repeats=5))

    n = 2048
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    t_mm = best(lambda: torch.mm(a, b))
    src = torch.empty(2 ** 26, device=device)  # 256 MiB: far beyond any cache
    dst = torch.empty_like(src)
    t_copy = best(lambda: dst.copy_(src))
    return {"matmul_gflops_per_s": 2 * n ** 3 / t_mm / 1e9,
            "copy_gb_per_s": 2 * src.numel() * src.element_size() / t_copy / 1e9}
