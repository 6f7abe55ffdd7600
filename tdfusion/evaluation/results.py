"""Result tables: rich console tables, JSON and CSV for per-source task metrics."""
from __future__ import annotations

import csv
import io
import json
import math
import os
from typing import Any

from ..io import atomic_write

__all__ = ["best_at_precision", "jsonable", "print_summary_table", "print_table", "scalar_metrics", "write_csv",
           "write_json", "write_summary_csv"]


def best_at_precision(values: list[float | None], digits: int = 4, lower: bool = False) -> set[int]:
    """Indices of the best values *as shown* (rounded to ``digits``): none when every shown
    value is equal (a tie at the shown precision is no winner), all those tied for best
    otherwise. ``None`` and non-finite values never win."""
    shown = {i: round(v, digits) for i, v in enumerate(values) if _is_number(v) and math.isfinite(v)}
    if len(set(shown.values())) < 2:
        return set()
    best = min(shown.values()) if lower else max(shown.values())
    return {i for i, v in shown.items() if v == best}


def jsonable(obj: Any) -> Any:
    """``obj`` with NumPy scalars, tensors and arrays turned into Python values and
    non-finite floats into None, so that ``json.dump`` writes valid JSON."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "tolist"):  # NumPy scalars and arrays, torch tensors
        return jsonable(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The top-level numeric entries of a metrics dict."""
    return {k: v for k, v in metrics.items() if _is_number(v)}


def print_table(results: dict[str, dict[str, Any]], title: str) -> None:
    """Sources as rows, scalar metrics as columns, the best value per column in bold
    (lowest for columns named like a loss, highest otherwise)."""
    from rich.console import Console
    from rich.table import Table

    columns: list[str] = []
    for metrics in results.values():
        columns += [k for k in scalar_metrics(metrics) if k not in columns]
    table = Table(title=title)
    table.add_column("source")
    for c in columns:
        table.add_column(c, justify="right")
    names = list(results)
    best = {c: best_at_precision([results[n].get(c) for n in names], 4, lower="loss" in c) for c in columns}
    for row, name in enumerate(names):
        metrics = results[name]
        cells = []
        for c in columns:
            v = metrics.get(c)
            text = f"{v:.4f}" if _is_number(v) else "-"
            cells.append(f"[bold green]{text}[/]" if row in best[c] else text)
        table.add_row(name, *cells)
    console = Console()
    console.print(table)
    _print_per_class(console, results)


def _print_per_class(console, results: dict[str, dict[str, Any]]) -> None:
    """A second table, classes as rows and (source, metric) as columns, when results have ``per_class``."""
    from rich.table import Table

    per = {name: m["per_class"] for name, m in results.items() if isinstance(m.get("per_class"), dict)}
    if not per:
        return
    classes: list[str] = []
    metrics: list[str] = []
    for table in per.values():
        for cls, vals in table.items():
            if cls not in classes:
                classes.append(cls)
            metrics += [k for k, v in (vals or {}).items() if k not in metrics and (_is_number(v) or v is None)]
    # Classes x sources as rows and the metrics as columns: a column per (source, metric)
    # made the table so wide that at 80 columns rich cut every header and value to "fus…".
    table = Table(title="per class")
    table.add_column("class", no_wrap=True)
    if len(per) > 1:
        table.add_column("source", no_wrap=True)
    for m in metrics:
        table.add_column(m, justify="right", no_wrap=True)
    for cls in classes:
        for i, name in enumerate(per):
            vals = per[name].get(cls) or {}
            cells = [f"{vals[m]:.4f}" if _is_number(vals.get(m)) else "-" for m in metrics]
            label = str(cls) if i == 0 else ""
            table.add_row(label, *([name] if len(per) > 1 else []), *cells,
                          end_section=len(per) > 1 and i == len(per) - 1)
    console.print(table)


def write_json(path: str | os.PathLike, results: dict[str, dict[str, Any]], primary: str, extra: dict | None = None) -> None:
    """Top level: the primary source's metrics; ``"sources"``: every source's."""
    payload = {**results[primary], "source": primary, "sources": results, **(extra or {})}
    with atomic_write(path, "w") as fh:
        json.dump(payload, fh, indent=2, default=float)


def _flatten(prefix: str, obj: Any, out: dict[str, Any]) -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    elif _is_number(obj) or obj is None:
        out[prefix] = obj


def write_csv(path: str | os.PathLike, results: dict[str, dict[str, Any]], protocol: str | None = None) -> None:
    """One row per source; nested entries (per class) flattened to dotted column names;
    ``protocol`` (the JSON's ``"protocol"``) repeated in a column after ``source``.
    Columns: docs/evaluation.md."""
    rows = []
    for name, metrics in results.items():
        flat: dict[str, Any] = {}
        _flatten("", metrics, flat)
        rows.append({"source": name, **({"protocol": protocol} if protocol else {}), **flat})
    _write_rows(path, rows)


def _write_rows(path: str | os.PathLike, rows: list[dict[str, Any]]) -> None:
    """CSV with the union of the rows' keys as columns (first seen first), atomically."""
    fields: list[str] = []
    for r in rows:
        fields += [k for k in r if k not in fields]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    with atomic_write(path, "w") as fh:
        fh.write(buf.getvalue())


#: The per-class value shown for each kind of per-class record (IoU for masks, AP50 for boxes).
_PER_CLASS_KEY = ("IoU", "AP50")


def print_summary_table(payload: dict[str, Any], title: str) -> None:
    """``tdfusion compare``'s tables: sources as rows, ``mean ± std`` over each source's runs
    per metric, the best mean in bold, ``>`` / ``<`` where the paired difference to the
    baseline is clear; then the paired differences themselves (mean ± std of the run-by-run
    differences, runs above / pairs); then one narrow per-class table (classes as rows,
    sources as columns)."""
    from rich.console import Console
    from rich.table import Table

    metrics, sources = payload["metrics"], payload["sources"]
    paired = payload.get("paired") or {}
    diffs, baseline = paired.get("sources", {}), paired.get("baseline")
    table = Table(title=title)
    table.add_column("source", overflow="fold")
    table.add_column("runs", justify="right", no_wrap=True)
    for m in metrics:
        table.add_column(m, justify="right", no_wrap=True)
    for name, s in sources.items():
        cells = []
        for m in metrics:
            if m not in s["mean"]:
                cells.append("-")
                continue
            text = f"{s['mean'][m]:.3f} ± {s['std'][m]:.3f}"
            mark = (diffs.get(name) or {}).get("mark", {}).get(m, "")
            text = f"{text} {mark}" if mark in (">", "<") else text
            best = s.get("vs_best", {}).get(m) == "best" and len(sources) > 1
            cells.append(f"[bold green]{text}[/]" if best else text)
        fusion_runs = len(s.get("fusion_runs") or [])
        runs = f"{fusion_runs}x{len(s['runs']) // fusion_runs}" if fusion_runs > 1 else str(len(s["runs"]))
        table.add_row(name + (" (baseline)" if name == baseline else ""), runs, *cells)
    table.caption = ("mean ± std over each source's runs (fusion runs x seeds)"
                     + (f"; > / <: the paired difference to {baseline} is clear (95% interval)" if diffs else ""))
    console = Console()
    console.print(table)
    if diffs:
        pt = Table(title=f"paired differences to {baseline}: run by run (same seed, same fusion run)")
        pt.add_column("source", overflow="fold")
        for m in metrics:
            pt.add_column(f"Δ {m}", justify="right", no_wrap=True)
        for name, d in diffs.items():
            pt.add_row(name, *[f"{d['mean'][m]:+.3f} ± {d['std'][m]:.3f} {d['positive'][m]}/{d['n']} "
                               f"{d['mark'].get(m, '').strip('=')}".rstrip() if m in d["mean"] else "-" for m in metrics])
        pt.caption = "mean ± std of the differences, runs above the baseline / pairs, > / <: 95% interval excludes 0"
        console.print(pt)
    per = {name: s.get("per_class_mean") or {} for name, s in sources.items()}
    classes = list(dict.fromkeys(c for p in per.values() for c in p))
    if not classes:
        return
    key = next((k for k in _PER_CLASS_KEY if any(k in (p.get(c) or {}) for p in per.values() for c in p)), None)
    if key is None:
        return
    pc = Table(title=f"per class: {key}, mean over seeds")
    pc.add_column("class")
    for name in per:
        pc.add_column(name, justify="right", overflow="fold")
    for c in classes:
        pc.add_row(str(c), *[f"{v:.3f}" if _is_number(v := (per[n].get(c) or {}).get(key)) else "-" for n in per])
    console.print(pc)


def write_summary_csv(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """One row per (source, fusion run, seed) run, one ``mean`` and one ``std`` row per
    source, and for each source but the baseline its paired differences (``paired mean``,
    ``paired std``); the payload's ``protocol`` in a column after ``row``. Columns:
    docs/evaluation.md."""
    diffs = (payload.get("paired") or {}).get("sources", {})
    protocol = {"protocol": payload["protocol"]} if payload.get("protocol") else {}
    rows = []
    for name, s in payload["sources"].items():
        for run in s["runs"]:
            flat: dict[str, Any] = {}
            _flatten("", {k: v for k, v in run.items()}, flat)
            label = f"seed {run.get('seed')}"
            if len(s.get("fusion_runs") or []) > 1:
                label = f"fusion run {run.get('fusion_run')} {label}"
            rows.append({"source": name, "row": label, **protocol, **flat})
        rows.append({"source": name, "row": "mean", **protocol, **s["mean"]})
        rows.append({"source": name, "row": "std", **protocol, **s["std"]})
        if name in diffs:
            rows.append({"source": name, "row": "paired mean", **protocol, **diffs[name]["mean"]})
            rows.append({"source": name, "row": "paired std", **protocol, **diffs[name]["std"]})
    _write_rows(path, rows)
