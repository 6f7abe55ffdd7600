"""``tdfusion fuse``: fuse image pairs or two video streams with a trained or published checkpoint.

Heavy imports (torch, OpenCV) happen inside :func:`run`: ``tdfusion fuse --help`` loads
neither.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..errors import TDFusionError
from ..hub import MODELS
from . import PRECISIONS, SUMMARY
from .common import (batch_size, check_memory, check_pair_size, done_line, fused_groups, load_net,
                     refuse_video_options, resized)

EPILOG = f"""\
examples:
  tdfusion fuse --checkpoint refusion-ivif --a ir/ --b vis/ --out fused/
  tdfusion fuse --checkpoint runs/demo/last.pt --a ir.png --b vis.jpg --out fused.png --gray
  tdfusion fuse --checkpoint refusion-ivif --a ir.mp4 --b vis.mp4 --out fused.mp4

Pairs are matched by file stem (ir/00001.png <-> vis/00001.jpg). Outputs are
<out>/<stem>.png, written atomically; 16-bit sources give 16-bit outputs. For one pair,
an --out ending in an image extension is the output file itself.

Video: --a/--b may be video files or folders of numbered frames (at least one a video);
--out a video file or a frame folder (PNG, lossless). Containers: .mkv .avi: FFV1,
lossless (frames read back exactly); .mp4 .mov .m4v: MPEG-4 part 2, lossy, plays
everywhere; .webm: VP9, lossy, takes --crf. --lossless stops instead of writing a lossy
file.

Published models by name (downloaded once, checksum-checked, cached in $TDFUSION_HOME or
the user cache folder; docs/models.md):
  {", ".join(list(MODELS)[:4])},
  {", ".join(list(MODELS)[4:])}.
"""

def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "fuse", help=SUMMARY["fuse"],
        description="Fuse two images, or two folders of images paired by file stem.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, metavar="NAME|PATH",
                   help="a published model by name (refusion-ivif, tdfusion-msrs, ...: see below) or a "
                        "checkpoint file: tdfusion's (runs/x/last.pt) or a published ReFusion_*.pth")
    p.add_argument("--a", required=True, metavar="PATH",
                   help="first source: an image file, a folder or a video (infrared, CT/PET, near focus, "
                        "under-exposed)")
    p.add_argument("--b", required=True, metavar="PATH",
                   help="second source: an image file, a folder or a video (visible, MRI, far focus, "
                        "over-exposed)")
    p.add_argument("--out", required=True, metavar="PATH",
                   help="output folder (created if missing); for one pair an image file (fused.png); for "
                        "video a video file (fused.mp4) or a frame folder")
    p.add_argument("--skip-existing", action="store_true",
                   help="leave outputs that already exist alone and fuse only the missing ones (default: "
                        "replace them, and say how many were replaced)")
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
                        "computed exactly in bands of rows sized to fit (default: bands of about 20,000 "
                        "pixels on CPU; on GPU the whole image, or bands that fit 80%% of the free "
                        "GPU memory when it does not fit)")
    p.add_argument("--chunk-rows", type=int, default=None, metavar="N",
                   help="rows per band of the exact banded computation (overrides --max-memory)")
    p.add_argument("--precision", choices=PRECISIONS, default="float32",
                   help="the network's arithmetic: float32 (default; reproduces the published outputs "
                        "within 1e-4), bfloat16 (CPU or GPU) or float16 (GPU only): half the memory, "
                        "faster on GPUs, and about 2e-3 (bfloat16) off float32 "
                        "(tdfusion bench --bf16-error measures it)")
    p.add_argument("--batch", type=int, default=None, metavar="N",
                   help="pairs (or video frames) of one size per network call (default: 8 on GPU, fewer when "
                        "--max-memory or the free GPU memory would not hold them; on CPU one at a time through "
                        "the banded executor, the CPU path BENCHMARKS.md measures). Given on CPU, the batched path runs "
                        "there too; its outputs do not depend on N")
    p.add_argument("--sync", choices=("exact", "shortest"), default="exact",
                   help="video: exact (default) stops with an error when the two streams have different "
                        "frame counts; shortest fuses the first N frames, N the shorter stream's count")
    p.add_argument("--fps", type=float, default=None,
                   help="video: frame rate of the output (default: A's, else B's, else 25)")
    p.add_argument("--codec", default=None, metavar="FOURCC",
                   help="video: FourCC of the output codec (default by extension: mp4v for .mp4/.mov/.m4v, "
                        "FFV1 for .mkv/.avi, VP90 for .webm)")
    p.add_argument("--crf", type=int, default=None, metavar="N",
                   help="video: constant-rate factor of a lossy encoder that has one: VP9 (.webm), 3-63, lower "
                        "is closer to the frames and larger (default: none, the encoder's own rate control). "
                        "MPEG-4 part 2 (.mp4) has none, and FFV1 (.mkv) needs none: refused there")
    p.add_argument("--lossless", action="store_true",
                   help="video: the output must decode to exactly the fused 8-bit frames: a .mkv or .avi "
                        "file (FFV1) or --codec FFV1; a lossy container (.mp4, .mov, .webm) stops with an "
                        "error instead (default: off; .mkv/.avi are lossless anyway)")
    p.add_argument("--jobs", type=int, default=None, metavar="N",
                   help="image pairs in flight at once, sharing the --threads between them (default on "
                        "CPU: one pair per thread, each on one thread; 1 with --max-memory or on GPU). "
                        "The outputs do not depend on it")
    p.add_argument("--device", default=None, metavar="DEV",
                   help="torch device: cuda, cuda:1, cpu (default: cuda when available)")
    p.set_defaults(func=run)


def _check_sizes(pairs, resize_b: bool) -> list[tuple[int, int]]:
    """Fail before writing anything if a pair is unreadable or mismatched; the ``(H, W)`` of each A."""
    from ..io import read_image

    sizes = []
    for _, pa, pb in pairs:
        # A full decode, not a header read: a truncated file has an intact header and
        # would otherwise fail only mid-run, after other pairs were written. Decoding
        # costs little next to running the network.
        sa, sb = read_image(pa).size, read_image(pb).size
        check_pair_size(pa, pb, sa, sb, resize_b)
        sizes.append(sa)
    return sizes


def _jobs(args: argparse.Namespace, device, count: int) -> int:
    """Pairs in flight: ``--jobs``, else one per CPU thread (1 on GPU or under --max-memory)."""
    import torch

    if args.jobs is not None:
        return min(args.jobs, max(count, 1))
    if device.type != "cpu" or args.max_memory is not None:
        return 1
    return max(1, min(torch.get_num_threads(), count))


def _share_memory_bound(args: argparse.Namespace, jobs: int) -> argparse.Namespace:
    """Pairs in flight share --max-memory: each gets its part (bytes)."""
    if args.max_memory is None or jobs == 1:
        return args
    from ..nets.band_plan import parse_memory

    return argparse.Namespace(**{**vars(args), "max_memory": parse_memory(args.max_memory) // jobs})


def _fuse_pair(net, a, b, args: argparse.Namespace):
    """``(raw, out)`` of :func:`~tdfusion.inference.fuse_images` for two decoded images, B
    resampled to A's size first when they differ (sizes were checked against --resize-b)."""
    from ..inference import fuse_images

    if b.size != a.size:
        b = resized(b, a.size)
    return fuse_images(net, a, b, normalize=args.normalize, gray=args.gray,
                       max_memory=args.max_memory, chunk_rows=args.chunk_rows)


def _image_outputs(args: argparse.Namespace, pairs) -> list:
    """The output file of each pair: ``<out>/<stem>.png``, or ``--out`` itself when it
    names an image file and there is one pair."""
    from ..io import IMAGE_EXTENSIONS

    out = Path(args.out)
    if out.suffix.lower() in IMAGE_EXTENSIONS and not out.is_dir():
        if len(pairs) != 1:
            raise TDFusionError(f"{out}: an image file as --out needs one pair; {len(pairs)} pairs need a folder")
        return [out]
    if out.exists() and not out.is_dir():
        raise TDFusionError(f"{out}: --out exists and is not a folder")
    return [out / f"{stem}.png" for stem, _, _ in pairs]


def run(args: argparse.Namespace) -> int:
    from ..device import resolve_device
    from ..video import is_video

    if args.jobs is not None and args.jobs < 1:
        raise TDFusionError(f"--jobs {args.jobs}: must be at least 1")
    device = resolve_device(args.device)
    if args.precision == "float16" and device.type != "cuda":
        # CPU kernels for float16 are slow or missing; bfloat16 is the CPU's half precision.
        raise TDFusionError("--precision float16 needs a CUDA device; use bfloat16 on CPU")
    if is_video(args.a) or is_video(args.b):
        return run_video(args, device)
    refuse_video_options(args, "image pairs, whose outputs are PNG files (lossless)")
    return _run_images(args, device)


def _run_image_batches(args: argparse.Namespace, net, todo, batch: int, skipped: int) -> int:
    """Image pairs ``batch`` at a time per network call (pairs of one size together), in
    groups of at most ``4 * batch`` decoded pairs: memory stays bounded for any folder."""
    from ..io import read_image
    from ..progress import progress_bar

    replaced = sum(out.exists() for _, out in todo)
    start = time.perf_counter()
    with progress_bar(len(todo), "fusing") as advance:
        for first in range(0, len(todo), 4 * batch):
            group = todo[first:first + 4 * batch]
            decoded = [(read_image(pa), read_image(pb)) for (_, pa, pb), _ in group]
            for indices, results in fused_groups(net, decoded, args, batch):
                for i, (raw, fused) in zip(indices, results):
                    _write_outputs(args, group[i][1], decoded[i], raw, fused)
                advance(len(indices))
    print(done_line("pair(s)", len(todo), time.perf_counter() - start, Path(args.out), replaced, skipped))
    return 0


def _write_outputs(args: argparse.Namespace, out: Path, pair, raw, fused) -> None:
    """The fused image (at the sources' bit depth) and, with --raw, the network's output."""
    import numpy as np

    from ..io import atomic_write, to_integer, write_image

    a, b = pair
    write_image(out, to_integer(fused, max(a.bit_depth, b.bit_depth)))
    if args.raw:
        with atomic_write(out.with_name(f"{out.stem}.raw.npy")) as fh:
            np.save(fh, raw)


def _run_images(args: argparse.Namespace, device) -> int:
    from ..device import in_flight
    from ..io import match_pairs, read_image
    from ..progress import progress_bar

    pairs = match_pairs(args.a, args.b)
    outputs = _image_outputs(args, pairs)
    todo = [(pair, out) for pair, out in zip(pairs, outputs) if not (args.skip_existing and out.exists())]
    skipped = len(pairs) - len(todo)
    if not todo:
        print(done_line("pair(s)", 0, 0.0, Path(args.out), 0, skipped))
        return 0
    sizes = _check_sizes([pair for pair, _ in todo], args.resize_b)
    batch = batch_size(args, device)
    net = load_net(args, device)
    jobs = 1 if batch is not None else _jobs(args, device, len(todo))
    args = _share_memory_bound(args, jobs)
    check_memory(net, [(pair[1], size) for (pair, _), size in zip(todo, sizes)], args, device)
    if batch is not None:
        return _run_image_batches(args, net, todo, batch, skipped)
    replaced = sum(out.exists() for _, out in todo)
    start = time.perf_counter()

    def fuse_one(item) -> None:  # decoding, colour and encoding overlap other pairs' network time
        (_, pa, pb), out = item
        a, b = read_image(pa), read_image(pb)
        raw, fused = _fuse_pair(net, a, b, args)
        _write_outputs(args, out, (a, b), raw, fused)

    # A bar even for one pair: a large image takes seconds, and silence looks like a hang.
    with progress_bar(len(todo), "fusing") as advance:
        for _ in in_flight(fuse_one, todo, jobs):
            advance()
    print(done_line("pair(s)", len(todo), time.perf_counter() - start, Path(args.out), replaced, skipped))
    return 0


# -- video ---------------------------------------------------------------------------
def _video_plan(args: argparse.Namespace):
    """Open both streams and check them against each other before anything is computed."""
    from ..video import open_stream

    sa, sb = open_stream(args.a), open_stream(args.b)
    check_pair_size(sa.path, sb.path, sa.size, sb.size, args.resize_b)
    if sa.count != sb.count and args.sync == "exact":
        raise TDFusionError(f"{sb.path}: {sb.count} frames, but {sa.path} has {sa.count}; pass --sync shortest "
                            f"to fuse the first {min(sa.count, sb.count)}")
    if args.raw:
        raise TDFusionError("--raw is for image pairs, not video")
    return sa, sb, min(sa.count, sb.count)


def _fuse_frames(net, frames, args: argparse.Namespace, batch: int | None) -> list:
    """Fused frames (float [0, 1]) of a list of ``(a, b)`` decoded frames, in order."""
    out: list = [None] * len(frames)
    for indices, results in fused_groups(net, frames, args, batch):
        for i, (_, fused) in zip(indices, results):
            out[i] = fused
    return out


def run_video(args: argparse.Namespace, device) -> int:
    import itertools

    from ..io import to_integer, write_image
    from ..progress import progress_bar
    from ..video import DEFAULT_FPS, VideoWriter, is_video

    sa, sb, count = _video_plan(args)
    out = Path(args.out)
    to_video = is_video(out)
    if to_video and out.is_dir() or not to_video and out.exists() and not out.is_dir():
        raise TDFusionError(f"{out}: --out must be a video file name or a folder for the frames")
    if to_video:
        # Before the network is loaded: a lossy codec under --lossless wastes nothing.
        from ..video import CODECS, check_quality

        fourcc = args.codec or CODECS.get(out.suffix.lower())
        if fourcc is not None:
            check_quality(out, fourcc, args.crf, args.lossless, codec_given=args.codec is not None)
    else:
        refuse_video_options(args, "a folder of PNG frames (lossless)")
    names = sa.names[:count]
    frame_paths = [] if to_video else [out / f"{name}.png" for name in names]
    if to_video and args.skip_existing and out.exists():
        print(done_line("frame(s)", 0, 0.0, out, 0, count))
        return 0
    keep = [not (args.skip_existing and p.exists()) for p in frame_paths] if not to_video else [True] * count
    replaced = int(to_video and out.exists()) + sum(p.exists() for p, k in zip(frame_paths, keep) if k)
    net = load_net(args, device)
    check_memory(net, [(sa.path, sa.size)], args, device)
    writer = (VideoWriter(out, args.fps or sa.fps or sb.fps or DEFAULT_FPS, sa.size, args.codec, args.crf,
                          args.lossless) if to_video else None)
    batch = batch_size(args, device)
    start, done = time.perf_counter(), 0
    try:
        with progress_bar(count, "fusing frames") as advance:
            frames = zip(range(count), sa.frames(), sb.frames())
            while chunk := list(itertools.islice(frames, batch or 1)):
                wanted = [(i, a, b) for i, a, b in chunk if keep[i]]
                fused = _fuse_frames(net, [(a, b) for _, a, b in wanted], args, batch) if wanted else []
                for (i, a, b), pixels in zip(wanted, fused):
                    # Video containers hold 8-bit frames; frame folders keep 16-bit sources' depth.
                    if writer is not None:
                        writer.write(to_integer(pixels, 8))
                    else:
                        write_image(frame_paths[i], to_integer(pixels, max(a.bit_depth, b.bit_depth)))
                done += len(wanted)
                advance(len(chunk))
        if writer is not None:
            writer.commit()
    except BaseException:
        if writer is not None:
            writer.abort()  # nothing half-written under the final name
        raise
    print(done_line("frame(s)", done, time.perf_counter() - start, out, replaced, count - sum(keep)))
    return 0
