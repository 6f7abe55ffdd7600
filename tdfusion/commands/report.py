"""``tdfusion report``: an offline HTML page + PNG contact sheets comparing fusion methods."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import TDFusionError
from ..io import read_image
from ..metrics.folders import Job
from ..progress import progress_bar
from ..report import ReportEntry, check_destination, provenance, write_report
from . import SUMMARY
from .common import WORKERS_HELP, add_input_arguments, compute_metrics, planned_jobs

EPILOG = """\
examples:
  tdfusion report --a ir/ --b vis/ --fused ours/ cddfuse/ --out report/
  tdfusion report --a ir/ --b vis/ --fused runs/demo/fused/ --names ours --out report/ \\
                  --checkpoint runs/demo/last.pt --crop 200,150,160,120

Open report/index.html in a browser: a table of metric means, then for every image a
labelled sheet A | B | each method (| G's weight maps) and that image's metrics.
The folder is written atomically and holds everything the page shows.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report", help=SUMMARY["report"],
        description="Write a self-contained report folder (index.html + PNG sheets) comparing methods.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_input_arguments(p)
    p.add_argument("--out", required=True, metavar="DIR",
                   help="report folder (replaced if it holds a previous report)")
    p.add_argument("--checkpoint", metavar="PATH",
                   help="tdfusion checkpoint with a loss generator G: add its per-pixel weight maps "
                        "(viridis, with a colour bar: yellow = the loss pulls toward A)")
    p.add_argument("--crop", metavar="X,Y,W,H", type=_parse_crop,
                   help="also show this region (source pixels) of every panel, enlarged")
    p.add_argument("--height", type=int, default=320, metavar="PX", help="panel height in the sheets (default 320)")
    p.add_argument("--columns", type=int, default=4, metavar="N", help="panels per sheet row (default 4)")
    p.add_argument("--no-metrics", action="store_true", help="images only, no metric tables")
    p.add_argument("--vif-sum", action="store_true", help="VIF summed over the two sources (see tdfusion metrics)")
    p.add_argument("--workers", type=int, default=None, metavar="N", help=WORKERS_HELP)
    p.add_argument("--title", default="tdfusion report", help="page title")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--device", default=None, metavar="DEV",
                   help="torch device for G's weight maps: cuda, cpu (default: cuda when available)")
    p.set_defaults(func=run)


def _checkpoint_file(checkpoint: str | None):
    """The file behind --checkpoint (a published model's cached copy for a name)."""
    if checkpoint is None:
        return None
    from ..hub import resolve_checkpoint

    return resolve_checkpoint(checkpoint, quiet=True)


def _parse_crop(text: str) -> tuple[int, int, int, int]:
    try:
        x, y, w, h = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected X,Y,W,H integers, got {text!r}") from None
    if x < 0 or y < 0 or w < 1 or h < 1:
        raise argparse.ArgumentTypeError(f"expected X,Y >= 0 and W,H >= 1, got {text!r}")
    return x, y, w, h


def _weight_map_fn(checkpoint: str, device_name: str | None):
    """Load G from a checkpoint; return ``f(a_pixels, b_pixels) -> [(label, map)]``."""
    from ..api import loss_weight_maps
    from ..checkpoint import load_checkpoint, load_module
    from ..device import resolve_device

    device = resolve_device(device_name)
    net = load_module(load_checkpoint(checkpoint), "lossgen", str(checkpoint)).to(device).eval()
    described = {"w_a": "w_A (intensity)", "v_a": "v_A (gradient)"}

    def weight_maps(a: np.ndarray, b: np.ndarray) -> list[tuple[str, np.ndarray]]:
        return [(described[k], m) for k, m in loss_weight_maps(net, a, b).items()]

    return weight_maps


def _entries(jobs: list[Job], results: dict | None, a_name: str, b_name: str, weight_maps) -> Iterator[ReportEntry]:
    by_stem: dict[str, list[Job]] = {}
    for job in jobs:
        by_stem.setdefault(job.stem, []).append(job)
    for stem, stem_jobs in by_stem.items():
        a, b = read_image(stem_jobs[0].a).pixels, read_image(stem_jobs[0].b).pixels
        panels = [(f"A: {a_name}", a), (f"B: {b_name}", b)]
        panels += [(job.method, read_image(job.fused).pixels) for job in stem_jobs]
        if weight_maps is not None:
            panels += weight_maps(a, b)
        metrics = {job.method: results[job.method]["per_image"][stem] for job in stem_jobs} if results else {}
        yield ReportEntry(stem, panels, metrics)


def run(args: argparse.Namespace) -> int:
    if args.height < 16:
        raise TDFusionError(f"--height {args.height}: must be at least 16 pixels")
    if args.columns < 1:
        raise TDFusionError(f"--columns {args.columns}: must be at least 1")
    out = check_destination(args.out)
    jobs = planned_jobs(args)
    if not jobs:
        raise TDFusionError("no fused image to show")
    if args.crop is not None:
        x, y, _, _ = args.crop
        h, w = read_image(jobs[0].a).size
        if x >= w or y >= h:
            raise TDFusionError(f"--crop {x},{y}: outside the {w}x{h} image {jobs[0].a}")
    weight_maps = _weight_map_fn(args.checkpoint, args.device) if args.checkpoint else None
    results = None if args.no_metrics else compute_metrics(args, "metrics", jobs)
    notes = ["Metrics on 8-bit luminance (OpenCV RGB->GRAY, rounded); all higher-is-better; "
             f"VIF {'summed' if args.vif_sum else 'averaged'} over the two sources. "
             "Definitions: docs/metrics.md of tdfusion."] if results else []
    stems = len({job.stem for job in jobs})
    a_name, b_name = Path(args.a).resolve().name, Path(args.b).resolve().name
    with progress_bar(stems, "sheets", enabled=not args.quiet and stems > 1) as advance:
        def entries() -> Iterator[ReportEntry]:
            for entry in _entries(jobs, results, a_name, b_name, weight_maps):
                yield entry
                advance()
        write_report(out, entries(), summary=results, title=args.title, notes=notes,
                     height=args.height, columns=args.columns, crop=args.crop,
                     provenance=provenance(_checkpoint_file(args.checkpoint)))
    print(f"wrote {out / 'index.html'}")
    return 0
