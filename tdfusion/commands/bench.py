"""``tdfusion bench``: speed and memory of inference and of one meta iteration per task."""
from __future__ import annotations

import argparse
import json
import sys

from ..errors import TDFusionError
from ..io import atomic_write
from . import PRECISIONS, SUMMARY

EPILOG = """\
examples:
  tdfusion bench                                   # inference 256x256..1024x1280, meta iteration seg/det/recon
  tdfusion bench --tasks none --paths banded,module,plain --json bench.json
  tdfusion bench --sizes 3000x4000 --max-memory 4G --repeats 1 --warmup 0 --tasks none
  tdfusion bench --tasks seg --meta-method jvp,second_order --sizes none
  tdfusion bench --sizes none --tasks none --data msrs_det --data-root ../shared/data/msrs_det
  tdfusion bench --sizes 480x640 --tasks seg --profile 10   # where the time goes, vs the machine's ceilings
  tdfusion bench --vs-official ReFusion.py --checkpoint ReFusion_IVIF.pth --a msrs/ir --b msrs/vi

Figures are medians of --repeats runs after --warmup runs. On a shared machine, check
the load average printed in the header: other processes slow every figure down.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help=SUMMARY["bench"],
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
    p.add_argument("--precision", choices=PRECISIONS, default="float32",
                   help="the network's arithmetic for inference figures (as tdfusion fuse --precision); for "
                        "training figures the autocast precision (as train.precision), with the cosine "
                        "similarity of G's meta-gradient to the fp32 one on two fixed batches")
    p.add_argument("--checkpoint", default=None, metavar="PATH",
                   help="fusion network to time (default: the ReFusion architecture, random weights: "
                        "same cost)")
    p.add_argument("--tasks", default="seg,det,recon", metavar="T,...",
                   help="meta iteration per task (recipe sizes, synthetic data), or 'none'")
    p.add_argument("--meta-method", default="jvp,fusion_step", metavar="M,...",
                   help="jvp (first-order meta-gradient, what training uses), second_order (double backward "
                        "through the inner gradient; slow and memory-hungry), fusion_step (one step of "
                        "F and T in the fusion phase)")
    p.add_argument("--no-isolate", dest="isolate", action="store_false",
                   help="measure everything in this process (default: each figure in a fresh process, "
                        "so that its peak memory and its allocator settings are its own)")
    p.add_argument("--item", default=None, help=argparse.SUPPRESS)  # internal: one figure, as JSON
    p.add_argument("--data", default=None, metavar="NAME",
                   help="also time training-batch loading from this dataset (e.g. msrs_det with "
                        "--data-root, or synthetic) with 0 and 2 workers, without and with caching")
    p.add_argument("--data-root", default=None, metavar="DIR", help="root folder of --data")
    p.add_argument("--bf16-error", action="store_true",
                   help="also report the output error of bfloat16 (and float16 on GPU) inference vs float32")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="also profile each figure: time and achieved GFLOP/s per operator category "
                        "(matrix products, convolutions, the rest) and the N slowest operators, against "
                        "the machine's measured matrix-product and memory-copy rates")
    p.add_argument("--repeats", type=int, default=3, metavar="N", help="timed runs per figure (default 3)")
    p.add_argument("--warmup", type=int, default=1, metavar="N", help="untimed runs first (default 1)")
    p.add_argument("--thread-counts", default="1,all", metavar="N,...",
                   help="measure every figure with each of these CPU thread counts ('all' = one per core; "
                        "default 1,all); --threads N measures with N only")
    p.add_argument("--vs-official", default=None, metavar="PATH",
                   help="time the official ReFusion network (its .py file, e.g. ReFusion.py of the ReFusion "
                        "repository; not shipped) beside tdfusion fuse end to end, in alternating rounds on "
                        "the pairs of --a/--b with the published --checkpoint; prints the ratio. Each round "
                        "of each side runs in a fresh process, each program as its users run it; "
                        "--no-isolate runs both in this process")
    p.add_argument("--official-class", default="ReFusion", metavar="NAME",
                   help="the network class in the --vs-official file (default ReFusion)")
    p.add_argument("--a", default=None, metavar="DIR", help="--vs-official: folder of first sources")
    p.add_argument("--b", default=None, metavar="DIR", help="--vs-official: folder of second sources")
    p.add_argument("--vs-pairs", type=int, default=7, metavar="N",
                   help="--vs-official: pairs fused per round (time per pair = t_N / N; default 7)")
    p.add_argument("--jobs", type=int, default=None, metavar="N",
                   help="--vs-official: tdfusion fuse --jobs (default: fuse's default)")
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


def _measure(item: dict, args: argparse.Namespace, device, say) -> list[dict]:
    """One figure: inference at one size along one path, or one task's meta method."""
    import torch

    from .. import bench
    from ..device import set_threads

    before = torch.get_num_threads()
    set_threads(item.get("threads"))
    try:
        if item["kind"] == "inference":
            net = _network(args, device)
            rows = bench.bench_inference(net, [tuple(item["size"])], device, args.warmup, args.repeats,
                                         (item["path"],), args.chunk_rows, args.max_memory,
                                         dtype=getattr(torch, args.precision), progress=say,
                                         profile_top=args.profile)
        else:
            rows = bench.bench_meta(item["task"], device, args.warmup, args.repeats, (item["method"],),
                                    progress=say, profile_top=args.profile,
                                    precision=_SHORT_PRECISION[args.precision])
        return [{**r, "threads": torch.get_num_threads()} for r in rows]
    finally:
        torch.set_num_threads(before)


def _network(args: argparse.Namespace, device):
    import torch

    from ..nets import FusionNet

    if args.checkpoint:
        from ..checkpoint import load_fusion_net

        return load_fusion_net(args.checkpoint, device)[0]
    torch.manual_seed(0)
    return FusionNet().to(device).eval()


def _in_child(item: dict, args: argparse.Namespace) -> list[dict]:
    """Run one figure in a fresh interpreter: peak memory then belongs to that figure alone."""
    import tempfile

    from ..bench.measure import run_child

    with tempfile.TemporaryDirectory() as tmp:
        out = f"{tmp}/rows.json"
        argv = [sys.executable, "-m", "tdfusion", "bench", "--item", json.dumps(item), "--json", out,
                "--repeats", str(args.repeats), "--warmup", str(args.warmup), "--profile", str(args.profile),
                "--precision", args.precision]
        for flag, value in (("--device", args.device), ("--threads", item.get("threads")),
                            ("--max-memory", args.max_memory),
                            ("--chunk-rows", args.chunk_rows), ("--checkpoint", args.checkpoint)):
            if value is not None:
                argv += [flag, str(value)]
        run_child(argv, f"bench {item}")
        with open(out) as fh:
            return json.load(fh)


#: --precision (torch dtype names, as tdfusion fuse) -> train.precision names.
_SHORT_PRECISION = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def _thread_counts(args: argparse.Namespace) -> list[int]:
    """``--threads N`` -> [N]; else ``--thread-counts`` ('all' = the cores), in order, without repeats."""
    from ..device import cpu_cores

    if args.threads is not None:
        return [args.threads]
    counts: list[int] = []
    for item in args.thread_counts.split(","):
        item = item.strip().lower()
        try:
            n = cpu_cores() if item == "all" else int(item)
        except ValueError:
            raise TDFusionError(f"--thread-counts {item!r}: expected numbers or 'all', e.g. 1,all") from None
        if n < 1:
            raise TDFusionError(f"--thread-counts {item!r}: must be at least 1")
        if n not in counts:
            counts.append(n)
    return counts


def _run_vs_official(args: argparse.Namespace, console, hw: dict, say) -> int:
    """``--vs-official``: the official network beside ``tdfusion fuse``, alternating rounds."""
    from rich.table import Table

    from ..bench.vs_official import bench_vs_official

    if not (args.checkpoint and args.a and args.b):
        raise TDFusionError("--vs-official needs --checkpoint (a published ReFusion_*.pth) and --a/--b folders")
    res = bench_vs_official(args.vs_official, args.checkpoint, args.a, args.b, pairs=args.vs_pairs,
                            rounds=args.repeats, class_name=args.official_class, jobs=args.jobs,
                            isolate=args.isolate, progress=say)
    where = "each side in a fresh process" if res["isolated"] else "both in one process"
    t = Table(title=f"tdfusion fuse end to end vs the official network's forward, {res['pairs']} pairs "
                    f"({', '.join(res['sizes'])}), {res['threads']} threads, {where}")
    for col in ("round", "ours s/pair", "official s/pair", "official / ours", "ours system",
                "official system", "load (1 min)"):
        t.add_column(col, justify="right")
    for i, r in enumerate(res["rounds"], 1):
        t.add_row(str(i), _fmt(r["ours_s_per_pair"]), _fmt(r["official_s_per_pair"]), f"{r['ratio']:.2f}x",
                  f"{r['ours_system_share']:.0%}", f"{r['official_system_share']:.0%}",
                  _fmt(r["load_average_1min"]))
    t.add_row("median", _fmt(res["ours_s_per_pair"]), _fmt(res["official_s_per_pair"]),
              f"{res['median_ratio']:.2f}x", "", "", "")
    console.print(t)
    console.print(f"outputs: max |official - tdfusion| = {res['max_abs_diff']:.2g} (raw network outputs); "
                  "system: the kernel's share of a side's CPU time (page faults, mostly)")
    if args.json:
        with atomic_write(args.json, "w") as fh:
            json.dump({"hardware": hw, "vs_official": res}, fh, indent=2)
        print(f"wrote {args.json}")
    return 0


def _print_profile(console, row: dict) -> None:
    from rich.table import Table

    prof = row["profile"]
    label = (f"inference {row['size']} {row['path']}" if row["what"] == "inference"
             else f"{row['task']} {'fusion step' if row['what'] == 'fusion_step' else 'meta ' + row['method']}")
    t = Table(title=f"where the time goes: {label} ({prof['timer']}, {prof['total_s']:.3g} s in operators)")
    for col in ("operators", "s", "share", "calls", "GFLOP", "GFLOP/s"):
        t.add_column(col, justify="left" if col == "operators" else "right")
    for c in prof["categories"]:
        t.add_row(c["category"], _fmt(c["s"]), f"{c['share']:.0%}", str(c["calls"]), _fmt(c["gflop"]),
                  _fmt(c["gflops_per_s"]))
    for o in prof["top_ops"]:
        t.add_row(f"  {o['op']}", _fmt(o["s"]), f"{o['share']:.0%}", str(o["calls"]), "", "")
    console.print(t)


def run(args: argparse.Namespace) -> int:
    # torch (and the device helpers that import it) only when the command runs, so that
    # --help stays as quick as the other commands'
    from rich.console import Console
    from rich.table import Table

    from .. import bench
    from ..device import resolve_device
    from ..nets.band_plan import parse_memory

    if args.repeats < 1 or args.warmup < 0 or args.profile < 0:
        raise TDFusionError("--repeats must be >= 1, --warmup and --profile >= 0")
    if args.max_memory is not None:
        parse_memory(args.max_memory)
    device = resolve_device(args.device)
    if args.item:  # a child process measuring one figure
        rows = _measure(json.loads(args.item), args, device, None)
        with atomic_write(args.json, "w") as fh:
            json.dump(rows, fh)
        return 0

    sizes = _sizes(args.sizes)
    paths = _names(args.paths, ("banded", "module", "plain"), "--paths")
    tasks = _names(args.tasks, ("seg", "det", "recon"), "--tasks")
    methods = _names(args.meta_method, ("jvp", "second_order", "fusion_step"), "--meta-method")
    # Redirected output would otherwise be cut to 80 columns and truncate the figures.
    console = Console() if sys.stdout.isatty() else Console(width=160)
    hw = bench.hardware(device)
    if args.profile:
        hw["roofline"] = bench.machine_roofline(device)
    console.print("hardware: " + ", ".join(f"{k} {v}" for k, v in hw.items() if v is not None and k != "roofline"))
    if args.profile:
        roof = hw["roofline"]
        console.print(f"machine ceilings: fp32 matrix product {roof['matmul_gflops_per_s']:.1f} GFLOP/s, "
                      f"memory copy {roof['copy_gb_per_s']:.1f} GB/s (read + write)")
    say = (lambda msg: console.print(f"[dim]... {msg}[/dim]"))
    if args.vs_official:
        return _run_vs_official(args, console, hw, say)
    counts = _thread_counts(args)
    items = ([{"kind": "inference", "size": list(s), "path": p, "threads": n} for s in sizes for p in paths
              for n in counts]
             + [{"kind": "meta", "task": t, "method": m, "threads": n} for t in tasks for m in methods
                for n in counts])
    rows: list[dict] = []
    for item in items:
        if args.isolate:
            say(" ".join(str(v) for k, v in item.items() if k != "kind"))
            rows += _in_child(item, args)
        else:
            rows += _measure(item, args, device, say)
    results: dict = {"hardware": hw, "isolated": args.isolate,
                     "inference": [r for r in rows if r["what"] == "inference"],
                     "meta": [r for r in rows if r["what"] != "inference"]}

    if results["inference"]:
        t = Table(title="inference: one pair")
        for col in ("size", "path", "dtype", "threads", "median s", "min s", "pairs/s", "GFLOP/s", "peak MiB",
                    "start MiB", "bands"):
            t.add_column(col, justify="left" if col in ("size", "path", "dtype") else "right")
        for r in results["inference"]:
            bands = f"{r['bands']}x{r['band_rows']}" if "bands" in r else "-"
            t.add_row(r["size"], r["path"], r["dtype"], str(r["threads"]), _fmt(r["median_s"]), _fmt(r["min_s"]),
                      _fmt(r["pairs_per_s"]),
                      _fmt(r["gflops_per_s"]), _fmt(r["peak_mb"], 5), _fmt(r["start_mb"], 5), bands)
        console.print(t)
    if results["meta"]:
        t = Table(title="training: one meta iteration (inner + outer update), one fusion-phase step")
        for col in ("task", "what", "precision", "threads", "median s", "min s", "GFLOP/s", "peak MiB",
                    "cos vs fp32", "phases (s)"):
            t.add_column(col, justify="left" if col in ("task", "what", "phases (s)") else "right")
        for r in results["meta"]:
            what = "fusion step" if r["what"] == "fusion_step" else "meta " + r["method"]
            phases = " ".join(f"{k} {v:.2f}" for k, v in r.get("phases_s", {}).items()) or "-"
            cos = " ".join(f"{c:.4f}" for c in r["cosine_vs_fp32"]) if "cosine_vs_fp32" in r else "-"
            t.add_row(r["task"], what, r["precision"], str(r["threads"]), _fmt(r["median_s"]), _fmt(r["min_s"]),
                      _fmt(r["gflops_per_s"]), _fmt(r["peak_mb"], 5), cos, phases)
        console.print(t)
        console.print("sizes: " + "; ".join(sorted({f"{r['task']}: {r['shape']}" for r in results["meta"]})))
    for r in rows:
        if "profile" in r:
            _print_profile(console, r)
    if args.data:
        results["data"] = bench.bench_data(args.data, args.data_root, progress=say)
        t = Table(title=f"data loading: {args.data}, one training batch (1 pair + swap, crop 256, task 240x320)")
        for col in ("workers", "cache", "s / batch (first pass)", "s / batch (this pass)"):
            t.add_column(col, justify="right")
        for r in results["data"]:
            t.add_row(str(r["workers"]), "yes" if r["cache"] else "no", _fmt(r["first_pass_s_per_batch"]),
                      _fmt(r["s_per_batch"]))
        console.print(t)
    if args.bf16_error:
        results["low_precision_error"] = bench.bf16_error(_network(args, device), device)
        console.print(f"low-precision output error vs float32 (256x256): {results['low_precision_error']}")
    if args.json:
        with atomic_write(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
        print(f"wrote {args.json}")
    return 0
