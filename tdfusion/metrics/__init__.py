"""Fusion quality metrics with documented, reference-matching conventions.

* :mod:`tdfusion.metrics.functional`: one pure function per metric on ``(H, W)`` arrays
  on [0, 255] (EN, SD, SF, AG, MI, SCD, VIF, Qabf, SSIM).
* :func:`evaluate` / :func:`evaluate_files`: all of them for one fused image and its sources.
* :func:`evaluate_folders`: folders matched by stem, several methods, process-parallel.

Conventions and citations: ``docs/metrics.md``.
"""
from .evaluate import (METRIC_NAMES, METRICS, evaluate, evaluate_files, load_luminance,
                       luminance_255, mean_metrics)
from .folders import MethodInput, evaluate_folders, plan_jobs
from .functional import (average_gradient, entropy, mutual_information, qabf, scd,
                         spatial_frequency, ssim, standard_deviation, vif, vifp)

__all__ = [
    "METRICS", "METRIC_NAMES", "MethodInput", "average_gradient", "entropy", "evaluate",
    "evaluate_files", "evaluate_folders", "load_luminance", "luminance_255", "mean_metrics",
    "mutual_information", "plan_jobs", "qabf", "scd", "spatial_frequency", "ssim",
    "standard_deviation", "vif", "vifp",
]
