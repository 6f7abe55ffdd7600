"""``tdfusion fuse``: fuse image pairs with a trained or published checkpoint."""
from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import torch

from ..checkpoint import load_fusion_net
from ..chunked import parse_memory, plan_bands
from ..device import in_flight, resolve_device
from ..errors import TDFusionError
from ..inference import fuse_images, to_integer
from ..io import Image, atomic_write, match_pairs, read_image, write_image
from ..progress import progress_bar
from . import PRECISIONS, SUMMARY

EPILOG = """\
examples:
  tdfusion fuse --checkpoint ReFusion_IVIF.pth --a ir/ --b vis/ --out fused/
  tdfusion fuse --checkpoint runs/demo/last.pt --a ir.png --b vis.jpg --out out/ --gray

Pairs are matched by file stem (ir/00001.png <-> vis/00001.jpg). Outputs are
<out>/<stem>.png, written atomically; 16-bit sources give 16-bit outputs.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "fuse", help=SUMMARY["fuse"],
        description="Fuse two images, or two folders of images paired by file stem.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, metavar="PATH",
                   help="tdfusion checkpoint (e.g. runs/x/last.pt) or published ReFusion_*.pth")
    p.add_argument("--a", required=True, metavar="PATH",
                   help="first source: an image file or a folder (infrared, CT/PET, near focus, under-exposed)")
    p.add_argument("--b", required=True, metavar="PATH",
                   help="second source: an image file or a folder (visible, MRI, far focus, over-exposed)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    p.add_argument("--normalize", choices=("minmax", "none"), default="minmax",
                   help="minmax: stretch the fused luminance to the full range, as the published "
                        "results did (default); none: keep the network output as is")
    p.add_argument("--gray", action="store_true",
                   help="write only the fused luminance (Y), even when a source has colour")
    p.add_argument("--resize-b", action="store_true",
                   help="resample B to A's size when they differ (default: stop with an error)")
    p.add_argument("--raw", action="store_true",
                   help="also save the network's raw float32 output as <stem>.raw.npy")
    p.add_argument("--max-memory", default=None, metavar="SIZE",
                   help="bound the memory the network uses, e.g. 4G or 800M: large images are "
                        "computed exactly in bands of rows sized to fit (default: no bound)")
    p.add_argument("--chunk-rows", type=int, default=None, metavar="N",
                   help="rows per band of the exact banded computation (overrides --max-memory)")
    p.add_argument("--precision", choices=PRECISIONS, default="float32",
                   help="the network's arithmetic: float32 (default; reproduces the published outputs "
                        "within 1e-4), bfloat16 (CPU or GPU) or float16 (GPU only): half the memory, "
                        "faster on GPUs, and about 2e-3 (bfloat16) off float32 "
                        "(tdfusion bench --bf16-error measures it)")
    p.add_argument("--jobs", type=int, default=None, metavar="N",
                   help="pairs in flight at once, sharing the --threads between them (default on CPU: "
                        "one pair per thread, each on one thread; 1 with --max-memory or on GPU). "
                        "The outputs do not depend on it")
    p.add_argument("--device", default=None, metavar="DEV",
                   help="torch device: cuda, cuda:1, cpu (default: cuda when available)")
    p.set_defaults(func=run)


def _check_sizes(pairs, resize_b: bool) -> list[tuple[int, int]]:
    """Fail before writing anything if a pair is unreadable or mismatched; the ``(H, W)`` of each A."""
    sizes = []
    for _, pa, pb in pairs:
        # A full decode, not a header read: a truncated file has an intact header and
        # would otherwise fail only mid-run, after other pairs were written. Decoding
        # costs little next to running the network.
        sa, sb = read_image(pa).size, read_image(pb).size
        if sa != sb and not resize_b:
            raise TDFusionError(f"{pb}: size {sb[1]}x{sb[0]} differs from {pa} ({sa[1]}x{sa[0]}); "
                                f"pass --resize-b to resample B")
        sizes.append(sa)
    return sizes


def _jobs(args: argparse.Namespace, device, count: int) -> int:
    """Pairs in flight: ``--jobs``, else one per CPU thread (1 on GPU or under --max-memory)."""
    if args.jobs is not None:
        return min(args.jobs, max(count, 1))
    if device.type != "cpu" or args.max_memory is not None:
        return 1
    return max(1, min(torch.get_num_threads(), count))


def _check_memory(net, pairs, sizes, args: argparse.Namespace, device, max_memory) -> None:
    """Fail before writing anything if a pair cannot fit --max-memory (or, on GPU, its free memory)."""
    if max_memory is None and args.chunk_rows is None and device.type != "cuda":
        return
    for (_, pa, _), (height, width) in zip(pairs, sizes):
        try:
            plan_bands(net, height, width, args.chunk_rows, max_memory, device,
                       next(net.parameters()).element_size())
        except TDFusionError as exc:
            raise TDFusionError(f"{pa}: {exc}") from None


def _resized(img: Image, size: tuple[int, int]) -> Image:
    h, w = size
    shrink = img.size[0] * img.size[1] > h * w
    pixels = cv2.resize(img.pixels, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)
    return Image(np.clip(pixels, 0.0, 1.0), img.bit_depth)


def run(args: argparse.Namespace) -> int:
    if args.jobs is not None and args.jobs < 1:
        raise TDFusionError(f"--jobs {args.jobs}: must be at least 1")
    device = resolve_device(args.device)
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise TDFusionError(f"{args.out}: --out exists and is not a folder")
    if args.precision == "float16" and device.type != "cuda":
        # CPU kernels for float16 are slow or missing; bfloat16 is the CPU's half precision.
        raise TDFusionError("--precision float16 needs a CUDA device; use bfloat16 on CPU")
    pairs = match_pairs(args.a, args.b)
    sizes = _check_sizes(pairs, args.resize_b)
    net, _ = load_fusion_net(args.checkpoint, device)
    net = net.to(getattr(torch, args.precision))
    jobs = _jobs(args, device, len(pairs))
    # Pairs in flight share the bound: each gets its part.
    max_memory = None if args.max_memory is None else parse_memory(args.max_memory) // jobs
    _check_memory(net, pairs, sizes, args, device, max_memory)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    def fuse_pair(pair) -> None:  # decoding, colour and encoding overlap other pairs' network time
        stem, pa, pb = pair
        a, b = read_image(pa), read_image(pb)
        if b.size != a.size:
            b = _resized(b, a.size)
        raw, out = fuse_images(net, a, b, normalize=args.normalize, gray=args.gray,
                               max_memory=max_memory, chunk_rows=args.chunk_rows)
        write_image(out_dir / f"{stem}.png", to_integer(out, max(a.bit_depth, b.bit_depth)))
        if args.raw:
            with atomic_write(out_dir / f"{stem}.raw.npy") as fh:
                np.save(fh, raw)

    with progress_bar(len(pairs), "fusing", enabled=len(pairs) > 1) as advance:
        for _ in in_flight(fuse_pair, pairs, jobs):
            advance()
    print(f"fused {len(pairs)} pair(s) into {out_dir}")
    return 0
