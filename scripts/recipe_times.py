#!/usr/bin/env python
"""What each shipped recipe costs: ``tdfusion train --config RECIPE --estimate`` for every
recipe in configs/, one after the other, on one device; a markdown table and a JSON file.

    python scripts/recipe_times.py --device cpu --threads 2 --out results/recipe_times_cpu.json

A recipe whose data is not on this machine is timed on synthetic stand-in images of its
size and counted for its dataset (``recipe.image_size``, ``recipe.pairs``): the step times
depend on the crop and task sizes, not on the images. The figures are measured per step and
projected to the whole run; run it on a quiet machine (the load average is recorded).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
NUMBER = r"([0-9.]+(?:e[-+]?[0-9]+)?)"


def recipes() -> list[Path]:
    return [p for p in sorted((REPO / "configs").glob("*.yaml"))
            if (yaml.safe_load(p.read_text()) or {}).get("recipe", {}).get("dataset")]


def parse(text: str) -> dict:
    """The figures of the estimate lines ``tdfusion train --estimate`` prints."""
    line = next(ln for ln in text.splitlines() if ln.startswith("estimate: about"))
    h, m, s = map(int, re.search(r"about (\d+):(\d\d):(\d\d)", line).groups())
    out = {"total_seconds": h * 3600 + m * 60 + s, "line": line,
           "stand_in": next((ln for ln in text.splitlines() if ln.startswith("no data at")), None)}
    for key, pattern in (("meta", rf"(\d+) meta iterations x {NUMBER} s"),
                         ("fusion", rf"(\d+) fusion steps x {NUMBER} s")):
        found = re.search(pattern, line)
        out[key] = {"steps": int(found.group(1)), "seconds_per_step": float(found.group(2))} if found else None
    found = re.search(rf"(\d+) evaluations x (\d+) pairs x {NUMBER} s", line)
    out["eval"] = ({"evaluations": int(found.group(1)), "pairs": int(found.group(2)),
                    "seconds_per_pair": float(found.group(3))} if found else None)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="CPU threads of each estimate (default: torch's)")
    p.add_argument("--steps", type=int, default=2, help="timed steps of each phase (run.estimate_steps)")
    p.add_argument("--out", default=None, help="JSON file of the figures")
    args = p.parse_args(argv)
    rows = {}
    for path in recipes():
        cmd = [sys.executable, "-m", "tdfusion", "train", "--config", str(path), "--estimate", "--device", args.device,
               *(["--threads", str(args.threads)] if args.threads else []), f"run.estimate_steps={args.steps}"]
        start = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        if done.returncode != 0:
            print(f"{path.name}: {done.stderr.strip().splitlines()[-1]}", file=sys.stderr)
            rows[path.stem] = {"error": done.stderr.strip().splitlines()[-1]}
            continue
        rows[path.stem] = {**parse(done.stdout), "measured_in_seconds": round(time.perf_counter() - start, 1)}
        print(f"{path.stem}: {rows[path.stem]['line']}", flush=True)
    from tdfusion.hostinfo import environment
    from tdfusion.progress import clock

    payload = {"command": " ".join(["python", "scripts/recipe_times.py", *(argv or sys.argv[1:])]),
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "device": args.device,
               "threads": args.threads, "load_average_after": os.getloadavg(), "environment": environment(),
               "recipes": rows}
    print("\n| recipe | per meta iteration | per fusion step | per test pair | projected run | timed on |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, r in rows.items():
        if "error" in r:
            print(f"| `{name}` | | | | {r['error']} | |")
            continue
        meta = f"{r['meta']['seconds_per_step']:.3g} s x {r['meta']['steps']}" if r["meta"] else "-"
        fusion = f"{r['fusion']['seconds_per_step']:.3g} s x {r['fusion']['steps']}"
        ev = (f"{r['eval']['seconds_per_pair']:.3g} s x {r['eval']['evaluations']} x {r['eval']['pairs']}"
              if r["eval"] else "-")
        print(f"| `{name}` | {meta} | {fusion} | {ev} | {clock(r['total_seconds'])} | "
              f"{'stand-in' if r['stand_in'] else 'its data'} |")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
