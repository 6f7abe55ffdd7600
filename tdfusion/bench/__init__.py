"""Benchmarks behind ``tdfusion bench``: inference at several sizes, one meta iteration per
task, data loading, where the time goes, and the official network timed beside ours.

* :mod:`~tdfusion.bench.measure`: hardware, timing, peak memory, FLOPs;
* :mod:`~tdfusion.bench.inference`, :mod:`~tdfusion.bench.meta`, :mod:`~tdfusion.bench.data`:
  the benchmarks;
* :mod:`~tdfusion.bench.profile`: operator profiles and the machine's ceilings;
* :mod:`~tdfusion.bench.vs_official`: ``--vs-official``, both networks in one process.
"""
from .data import bench_data
from .inference import bench_inference, bf16_error, fusion_flops_per_pixel
from .measure import MemoryPeak, hardware
from .meta import META_RECIPES, bench_meta, meta_gradient_agreement
from .profile import machine_roofline, profile_breakdown

__all__ = ["META_RECIPES", "MemoryPeak", "bench_data", "bench_inference", "bench_meta", "bf16_error",
           "fusion_flops_per_pixel", "hardware", "machine_roofline", "meta_gradient_agreement", "profile_breakdown"]
