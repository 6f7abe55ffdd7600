#!/usr/bin/env python
"""Paired differences across several ``tdfusion compare`` JSON files.

A source's runs depend only on its images, the downstream regime and the seeds (the same
command gives the same numbers: tests/test_reproducible.py), so sources measured in separate
``compare`` runs can be paired run by run as if they had been compared together, provided
the files agree on the task, the dataset, the seeds and the regime (checked here). This is
how docs/results.md pairs the exploratory runs of the steer preset against one baseline
without training the same task networks again.

    python scripts/pair_tables.py results/a.json results/b.json --baseline fixed --sources seg steer
"""
from __future__ import annotations

import argparse
import json
import sys


def _scores(runs: list[dict]) -> list[dict]:
    """A source's runs less their training time (which two measurements never share)."""
    return [{k: v for k, v in r.items() if k != "train_seconds"} for r in runs]


def _pooled(earlier: dict, later: dict, metrics: list, summarize) -> dict:
    """One source from two files' runs: the later file's fusion runs numbered after the
    earlier's; mean and std over all of them."""
    offset = 1 + max(r.get("fusion_run", 0) for r in earlier["runs"])
    runs = earlier["runs"] + [{**r, "fusion_run": r.get("fusion_run", 0) + offset} for r in later["runs"]]
    out = summarize(runs, metrics)
    out["fusion_runs"] = earlier.get("fusion_runs", []) + later.get("fusion_runs", [])
    return out


def main(argv: list[str] | None = None) -> int:
    from tdfusion.evaluation.statistics import paired_differences

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("tables", nargs="+", help="compare JSON files")
    p.add_argument("--baseline", required=True, help="the source every other is paired with")
    p.add_argument("--sources", nargs="+", help="only these sources (default: all)")
    p.add_argument("--rename", nargs="+", default=[], metavar="FILE:OLD=NEW",
                   help="rename a source of one file (the i-th file is its index: 0:fixed=fixed_refusion_form)")
    p.add_argument("--pool", action="store_true",
                   help="a source whose runs differ between files is one method's further fusion runs (more "
                        "fusion seeds measured later): its runs are pooled, fusion runs numbered on from the "
                        "earlier files' (default: an error)")
    p.add_argument("--json", help="write the merged sources and their pairing")
    args = p.parse_args(argv)
    payloads = [json.loads(open(t).read()) for t in args.tables]
    first = payloads[0]
    for t, pl in zip(args.tables[1:], payloads[1:]):
        for key in ("task", "dataset", "seeds", "downstream", "metrics"):
            if pl.get(key) != first.get(key):
                sys.exit(f"{t}: its {key!r} differs from {args.tables[0]}'s: the runs cannot be paired")
    renames = {}
    for r in args.rename:
        where, _, change = r.partition(":")
        old, _, new = change.partition("=")
        renames[(int(where), old)] = new
    from tdfusion.evaluation.statistics import summarize

    merged: dict = {}
    for i, pl in enumerate(payloads):
        for name, s in pl["sources"].items():
            name = renames.get((i, name), name)
            if name in merged:
                if _scores(merged[name]["runs"]) == _scores(s["runs"]):
                    continue  # the same source (an input image) measured again
                if not args.pool:
                    sys.exit(f"source {name!r} has different runs in two files: rename one (--rename), or "
                             f"--pool them as more fusion runs")
                merged[name] = _pooled(merged[name], s, first["metrics"], summarize)
                continue
            merged[name] = s
    keep = [args.baseline, *(args.sources or [n for n in merged if n != args.baseline])]
    missing = [n for n in keep if n not in merged]
    if missing:
        sys.exit(f"not in the files: {', '.join(missing)}; known: {', '.join(merged)}")
    summary = {n: merged[n] for n in keep}
    paired = paired_differences(summary, args.baseline, first["metrics"])
    m = first["metrics"][0]
    print(f"{m}: mean ± std over each source's runs; Δ paired with {args.baseline} run by run")
    for n in keep:
        s, d = summary[n], paired["sources"].get(n)
        row = f"{n:24s} {s['mean'][m]:.3f} ± {s['std'][m]:.3f} ({len(s['runs'])} runs)"
        if d:
            lo, hi = d["ci95"].get(m, [float("nan")] * 2)
            row += (f"   Δ {d['mean'][m]:+.3f} ± {d['std'][m]:.3f}, {d['positive'][m]}/{d['n']} above, "
                    f"95% [{lo:+.3f}, {hi:+.3f}]")
        print(row)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"metrics": first["metrics"], "seeds": first["seeds"], "sources": summary, "paired": paired,
                       "tables": args.tables}, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
