"""``tdfusion bench``: speed and memory of inference and of one meta iteration per task."""
from __future__ import annotations

import argparse
import json

import torch

from ..device import resolve_device
from ..errors import TDFusionError
from ..io import atomic_write

EPILOG = """\
examples:
  tdfusion bench                                   # inference 256x256..1024x1280, meta iteration seg/det/recon
  tdfusion bench --tasks none --paths banded,module,plain --json bench.json
  tdfusion bench --sizes 3000x4000 --max-memory 4G --repeats 1 --warmup 0 --tasks none
  tdfusion bench --tasks seg --meta-method jvp,plain --sizes none

Figures are medians of --repeats runs after --warmup runs. On a shared machine, check
the load average printed in the header: other processes slow every figure down.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="measure inference and meta-iteration speed and memory",
                       description="Benchmark fusion inference (several sizes) and one meta iteration "
                                   "per task; prints the hardware, medians, GFLOP/s and peak memory.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="256x256,480x640,1024x1280", metavar="HxW,...",
                   help="inference image sizes as HEIGHTxWIDTH, comma-separated, or 'none'")
    p.add_argument("--paths", default="banded", metavar="P,...",
                   help="inference paths: banded (what tdfusion fuse runs), module (whole-image "
                        "forward), plain (the unoptimised formulation); comma-separated")
    p.add_argument("--max-memory", default=None, metavar="SIZE", help="memory bound for the banded path, e.g. 4G")
    p.add_argument("--chunk-rows", type=int, default=None, metavar="N", help="rows per band for the banded path")
    p.add_argument("--checkpoint", default=None, metavar="PATH",
                   help="fusion network to time (default: the ReFusion architecture, random weights: "
                        "same cost)")
    p.add_argument("--tasks", default="seg,det,recon", metavar="T,...",
                   help="meta iteration per task (recipe sizes, synthetic data), or 'none'")
    p.add_argument("--meta-method", default="jvp", metavar="M,...",
                   help="jvp (first-order meta-gradient, what training uses) and/or plain "
                        "(second-order through the inner gradient; slow and memory-hungry)")
    p.add_argument("--bf16-error", action="store_true",
                   help="also report the output error of bfloat16 (and float16 on GPU) inference vs float32")
    p.add_argument("--repeats", type=int, default=3, metavar="N", help="timed runs per figure (default 3)")
    p.add_argument("--warmup", type=int, default=1, metavar="N", help="untimed runs first (default 1)")
    p.add_argument("--threads", type=int, default=None, metavar="N", help="torch CPU threads (default: torch's)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write all figures as JSON")
    p.add_argument("--device", default=None, metavar="DEV",
                   help="torch device: cuda, cuda:1, cpu (default: cuda when available)")
    p.set_defaults(func=run)


def _sizes(text: str) -> list[tuple[int, int]]:
    if text.strip().lower() in ("", "none"):
        return []
    out = []
    for item in text.split(","):
        try:
            h, w = (int(v) for v in item.lower().split("x"))
        except ValueError:
            raise TDFusionError(f"--sizes {item!r}: expected HEIGHTxWIDTH, e.g. 480x640") from None
        if h < 1 or w < 1:
            raise TDFusionError(f"--sizes {item!r}: sizes must be positive")
        out.append((h, w))
    return out


def _names(text: str, known: tuple[str, ...], flag: str) -> list[str]:
    if text.strip().lower() in ("", "none"):
        return []
    names = [t.strip() for t in text.split(",")]
    for n in names:
        if n not in known:
            raise TDFusionError(f"{flag} {n!r}: expected one of {', '.join(known)}")
    return names


def _fmt(v, digits=3) -> str:
    if v is None:
        return "-"
    return f"{v:.{digits}g}" if isinstance(v, float) else str(v)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from .. import bench
    from ..chunked import parse_memory
    from ..nets import FusionNet

    sizes = _sizes(args.sizes)
    paths = _names(args.paths, ("banded", "module", "plain"), "--paths")
    tasks = _names(args.tasks, ("seg", "det", "recon"), "--tasks")
    methods = _names(args.meta_method, ("jvp", "plain"), "--meta-method")
    if args.max_memory is not None:
        parse_memory(args.max_memory)
    if args.repeats < 1 or args.warmup < 0:
        raise TDFusionError("--repeats must be >= 1 and --warmup >= 0")
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.checkpoint:
        from ..checkpoint import load_fusion_net

        net, _ = load_fusion_net(args.checkpoint, device)
    else:
        torch.manual_seed(0)
        net = FusionNet().to(device).eval()

    console = Console()
    hw = bench.hardware(device)
    console.print("hardware: " + ", ".join(f"{k} {v}" for k, v in hw.items() if v is not None))
    say = (lambda msg: console.print(f"[dim]... {msg}[/dim]"))
    results: dict = {"hardware": hw, "inference": [], "meta": []}

    if sizes and paths:
        results["inference"] = bench.bench_inference(net, sizes, device, args.warmup, args.repeats, tuple(paths),
                                                     args.chunk_rows, args.max_memory, progress=say)
        t = Table(title="inference: one pair")
        for col in ("size", "path", "median s", "min s", "pairs/s", "GFLOP/s", "peak MiB", "bands"):
            t.add_column(col, justify="left" if col in ("size", "path") else "right")
        for r in results["inference"]:
            bands = f"{r['bands']} x {r['band_rows']} rows" if "bands" in r else "-"
            t.add_row(r["size"], r["path"], _fmt(r["median_s"]), _fmt(r["min_s"]), _fmt(r["pairs_per_s"]),
                      _fmt(r["gflops_per_s"]), _fmt(r["peak_mb"], 5), bands)
        console.print(t)
    if args.bf16_error:
        results["low_precision_error"] = bench.bf16_error(net, device)
        console.print(f"low-precision output error vs float32 (256x256): {results['low_precision_error']}")
    for task in tasks:
        results["meta"] += bench.bench_meta(task, device, args.warmup, args.repeats, tuple(methods), progress=say)
    if results["meta"]:
        t = Table(title="training: one meta iteration (inner + outer update) and one fusion-phase step")
        for col in ("task", "what", "median s", "min s", "GFLOP/s", "peak MiB", "phases (s)"):
            t.add_column(col, justify="left" if col in ("task", "what", "phases (s)") else "right")
        for r in results["meta"]:
            what = "meta " + r["method"] if r["what"] == "meta" else "fusion step"
            phases = "  ".join(f"{k} {v:.2f}" for k, v in r.get("phases_s", {}).items()) or "-"
            t.add_row(r["task"], what, _fmt(r["median_s"]), _fmt(r["min_s"]), _fmt(r["gflops_per_s"]),
                      _fmt(r["peak_mb"], 5), phases)
        console.print(t)
        console.print("sizes: " + "; ".join(sorted({f"{r['task']}: {r['shape']}" for r in results["meta"]})))
    if args.json:
        with atomic_write(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
        print(f"wrote {args.json}")
    return 0
