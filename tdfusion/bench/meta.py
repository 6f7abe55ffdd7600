"""Meta-iteration benchmarks: one meta iteration (or fusion-phase step) per task, at the
sizes of the task's shipped recipe, and the agreement of a lower precision's meta-gradient."""
from __future__ import annotations

import statistics
from typing import Any, Callable

import numpy as np
import torch

from .measure import MemoryPeak, count_flops, timed, timing_row
from .profile import profile_breakdown

__all__ = ["META_RECIPES", "bench_meta", "meta_gradient_agreement", "meta_setup"]


#: Recipe config per task for the meta-iteration benchmark (sizes and loss as trained).
META_RECIPES = {"seg": "tdfusion_msrs_seg.yaml", "det": "tdfusion_msrs_det.yaml", "recon": "refusion_ivif.yaml"}


def _meta_batches(cfg: dict, target: str, seed: int) -> tuple[dict, dict, Any]:
    """A meta-train and a meta-test batch from synthetic scenes, as the trainer builds them."""
    from ..data import build_dataset
    from ..data.views import collate, swap_sources, train_view

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


def meta_setup(task_name: str, device: torch.device, seed: int = 0) -> tuple[tuple, dict, str]:
    """The arguments of one meta iteration of ``task_name`` (recipe sizes, synthetic scenes,
    networks initialised from seed 0, batches drawn with ``seed``), its config and a shape text."""
    from ..meta import objectives
    from ..config import CONFIG_DIR, load_config
    from ..data.views import to_device
    from ..training.modules import build_modules

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
    from ..meta.jvp import meta_gradient_jvp
    from ..precision import autocast

    out = []
    for seed in seeds:
        args, _, _ = meta_setup(task_name, device, seed)
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
    from ..meta import objectives
    from ..meta.jvp import meta_gradient_jvp
    from ..precision import autocast

    args, _, shape = meta_setup(task_name, device)
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
            times = timed(fn, device, warmup, repeats)
        flops = count_flops(fn)
        phases = phases[warmup:warmup + repeats]
        row = {"what": "fusion_step" if method == "fusion_step" else "meta", "task": task_name,
               "method": method, "shape": shape, **timing_row(times, flops), "peak_mb": mem.peak_mb,
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
