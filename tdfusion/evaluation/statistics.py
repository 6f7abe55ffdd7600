"""Statistics of ``tdfusion compare``: each source's mean and spread over its runs, and the
paired differences between sources.

A run is a dict ``{"seed": s, "fusion_run": k, METRIC: value, "per_class": {...}}``: one
task network trained and scored on one source's images. Every source is trained with the
same downstream seeds, so two sources are compared run by run (:func:`matched_runs`):
differences of the size task-driven fusion claims (0.01-0.02 mIoU) are smaller than one
source's spread over seeds, and unpaired intervals would hide or invent them.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

__all__ = ["mark_spread", "matched_runs", "paired_differences", "separated", "summarize"]


def summarize(runs: Sequence[dict[str, Any]], metrics: Sequence[str]) -> dict[str, Any]:
    """``{"mean", "std", "runs", "per_class_mean"}`` of one source's runs (std: sample
    standard deviation, 0 for a single run)."""
    out: dict[str, Any] = {"mean": {}, "std": {}, "runs": list(runs)}
    for m in metrics:
        values = [r[m] for r in runs if isinstance(r.get(m), (int, float))]
        if values:
            out["mean"][m] = float(np.mean(values))
            out["std"][m] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    per_class: dict[str, dict[str, float | None]] = {}
    for r in runs:
        for cls, vals in (r.get("per_class") or {}).items():
            for k, v in (vals or {}).items():
                per_class.setdefault(cls, {}).setdefault(k, [])  # type: ignore[arg-type]
                if isinstance(v, (int, float)):
                    per_class[cls][k].append(v)  # type: ignore[union-attr]
    out["per_class_mean"] = {cls: {k: (float(np.mean(v)) if v else None) for k, v in vals.items()}  # type: ignore[arg-type]
                             for cls, vals in per_class.items()}
    return out


def separated(a_mean: float, a_std: float, b_mean: float, b_std: float) -> bool:
    """Whether two mean ± std intervals do not overlap: the difference exceeds the spread."""
    return abs(a_mean - b_mean) > a_std + b_std


def mark_spread(summary: dict[str, dict[str, Any]], metrics: Sequence[str]) -> None:
    """Add ``"vs_best"`` to each source: per metric ``"best"``, ``"within spread"`` or
    ``"below best"`` (the intervals do not overlap). With a single run per source there
    is no spread to compare with: only ``"best"`` and ``"no spread (one seed)"``.

    An unpaired comparison, kept for the JSON's readers; the table marks the paired
    differences of :func:`paired_differences` instead."""
    for m in metrics:
        ranked = [(s["mean"][m], name) for name, s in summary.items() if m in s["mean"]]
        if not ranked:
            continue
        best = max(ranked)[1]
        b = summary[best]
        for name, s in summary.items():
            if m not in s["mean"]:
                continue
            if name == best:
                mark = "best"
            elif len(s["runs"]) < 2 or len(b["runs"]) < 2:
                mark = "no spread (one seed)"
            else:
                mark = ("below best" if separated(s["mean"][m], s["std"][m], b["mean"][m], b["std"][m])
                        else "within spread")
            s.setdefault("vs_best", {})[m] = mark


def matched_runs(base: Sequence[dict[str, Any]], other: Sequence[dict[str, Any]]) -> list[tuple[dict, dict]]:
    """Matched ``(baseline run, other run)``: on ``(fusion_run, seed)`` when both sources have
    several fusion runs, on ``seed`` alone when one of them has a single one (an input image,
    or one checkpoint), whose run then partners each fusion run of the other."""
    def single(rs):
        return len({r.get("fusion_run", 0) for r in rs}) <= 1

    if single(base) or single(other):
        if single(base):
            by_seed = {r["seed"]: r for r in base}
            return [(by_seed[r["seed"]], r) for r in other if r["seed"] in by_seed]
        by_seed = {r["seed"]: r for r in other}
        return [(r, by_seed[r["seed"]]) for r in base if r["seed"] in by_seed]
    by_key = {(r.get("fusion_run", 0), r["seed"]): r for r in other}
    return [(r, by_key[k]) for r in base if (k := (r.get("fusion_run", 0), r["seed"])) in by_key]


def paired_differences(summary: dict[str, dict[str, Any]], baseline: str, metrics: Sequence[str]) -> dict[str, Any]:
    """Per source other than ``baseline``: the run-by-run differences ``source - baseline``
    (:func:`matched_runs` says which runs are matched), as ``{"mean": {metric: v}, "std": {...},
    "positive": {metric: k}, "n": n, "ci95": {metric: [lo, hi]}, "mark": {metric: m}}``.

    ``std`` is the sample standard deviation of the differences; ``positive`` counts the
    pairs in which the source scored higher. ``ci95`` is the Student-t 95% interval of
    the mean difference and ``mark`` is ``">"`` (above the baseline) or ``"<"`` (below)
    when that interval excludes 0, ``"="`` otherwise, ``""`` with fewer than two pairs.
    The interval treats the pairs as independent; pairs that share a fusion run or a
    seed are not quite, so read it as a guide and look at ``positive`` beside it.
    """
    from scipy import stats

    out: dict[str, Any] = {}
    base_runs = summary[baseline]["runs"]
    for name, s in summary.items():
        if name == baseline:
            continue
        pairs = matched_runs(base_runs, s["runs"])
        entry: dict[str, Any] = {"mean": {}, "std": {}, "positive": {}, "n": len(pairs), "ci95": {}, "mark": {}}
        for m in metrics:
            d = np.array([o[m] - b[m] for b, o in pairs
                          if isinstance(b.get(m), (int, float)) and isinstance(o.get(m), (int, float))], np.float64)
            if not len(d):
                continue
            mean = float(d.mean())
            std = float(d.std(ddof=1)) if len(d) > 1 else 0.0
            entry["mean"][m], entry["std"][m], entry["positive"][m] = mean, std, int((d > 0).sum())
            if len(d) > 1:
                half = float(stats.t.ppf(0.975, len(d) - 1)) * std / math.sqrt(len(d))
                entry["ci95"][m] = [mean - half, mean + half]
                entry["mark"][m] = ">" if mean - half > 0 else "<" if mean + half < 0 else "="
            else:
                entry["mark"][m] = ""
        out[name] = entry
    return {"baseline": baseline, "sources": out}
