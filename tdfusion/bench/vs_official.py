"""``tdfusion bench --vs-official``: the official ReFusion network timed beside ``tdfusion fuse``.

The official network definition is not part of this toolkit (the user gives its file,
e.g. ``ReFusion.py`` of the ReFusion repository); it is imported from that path, built
with its defaults, given the published state_dict, and run as its own test script does:
``net(torch.cat([Y_a, Y_b], 1))`` under ``torch.no_grad`` on the OpenCV YCrCb luminance.

Both sides run in ONE process, on the same pairs, in alternating rounds, so that a busy
neighbour on a shared machine slows both alike:

* ours, end to end: ``tdfusion fuse`` (in-process, through its CLI entry point, after an
  untimed first run) on a folder of ``n`` pairs; time per pair ``t_n / n``. It reads the
  checkpoint, checks and decodes the pairs, converts colour, runs the network, merges
  chroma and encodes PNGs; only the interpreter's start-up and imports are excluded.
  Also reported: ``(t_n - t_1) / (n - 1)`` (the marginal time of a pair, with a run on
  the first pair alone), which is fragile when ``--jobs`` pairs run at once: ``t_1``
  runs one pair on all threads, ``t_n`` pairs on one thread each;
* official: the network's forward pass alone (no decoding, no saving), mean per pair.

The two networks' raw outputs are compared on every pair (max absolute difference).
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..errors import TDFusionError
from ..colour import split_luma
from ..io import match_pairs, read_image

__all__ = ["bench_vs_official", "load_official"]


def load_official(path: str | os.PathLike, class_name: str = "ReFusion") -> type:
    """Import the network class ``class_name`` from a Python file (never copied or kept)."""
    path = Path(path)
    if not path.is_file():
        raise TDFusionError(f"{path}: no such file (--vs-official takes the official network's .py file)")
    spec = importlib.util.spec_from_file_location(f"_official_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))  # its own imports (e.g. utils) resolve beside it
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # a missing dependency (einops) or a broken file: one line, not a trace
        raise TDFusionError(f"{path}: cannot import it ({type(exc).__name__}: {exc})") from None
    finally:
        sys.path.remove(str(path.parent))
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type) or not issubclass(cls, torch.nn.Module):
        raise TDFusionError(f"{path}: defines no network class {class_name!r} (--official-class)")
    return cls


def _luma(path: Path) -> np.ndarray:
    """``(H, W)`` float32: the luminance ``tdfusion fuse`` gives its network (OpenCV YCrCb,
    as the official test script), so that the outputs' difference is the networks' alone."""
    return split_luma(read_image(path).pixels)[0]


def _link_pairs(pairs, folder: Path) -> tuple[Path, Path]:
    """Folders ``a/``, ``b/`` of symbolic links to the given pairs (the CLI takes folders)."""
    fa, fb = folder / "a", folder / "b"
    fa.mkdir(parents=True)
    fb.mkdir(parents=True)
    for _, pa, pb in pairs:
        (fa / pa.name).symlink_to(pa.resolve())
        (fb / pb.name).symlink_to(pb.resolve())
    return fa, fb


def bench_vs_official(official: str | os.PathLike, checkpoint: str | os.PathLike, dir_a: str | os.PathLike,
                      dir_b: str | os.PathLike, pairs: int = 7, rounds: int = 3, class_name: str = "ReFusion",
                      jobs: int | None = None, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Time ``tdfusion fuse`` end to end against the official network's forward pass (CPU).

    Args:
        official: the official network's Python file; ``class_name`` the class in it.
        checkpoint: a published ``ReFusion_*.pth`` (the state_dict both sides load).
        dir_a, dir_b: folders of source pairs (the first ``pairs`` stems are used).
        rounds: alternating rounds (ours, official, ours, ...); figures are medians.
        jobs: ``tdfusion fuse --jobs`` (default: its own default).
    Returns:
        per-round times, medians, the ratio official / ours and the outputs' max difference.
    """
    from ..cli import main

    if pairs < 2:
        raise TDFusionError("--vs-pairs must be at least 2")
    found = match_pairs(dir_a, dir_b)
    if len(found) < pairs:
        raise TDFusionError(f"{dir_a}: {len(found)} pair(s), --vs-pairs asks for {pairs}")
    chosen = found[:pairs]
    cls = load_official(official, class_name)
    ref = cls()
    from ..checkpoint import safe_torch_load
    from ..hub import resolve_checkpoint

    state = safe_torch_load(resolve_checkpoint(checkpoint))
    try:
        ref.load_state_dict(state)
    except Exception as exc:  # wrong kind of checkpoint for that network
        raise TDFusionError(f"{checkpoint}: the official network does not load it ({exc})") from None
    ref = ref.eval()
    inputs = [torch.from_numpy(np.stack([_luma(pa), _luma(pb)]))[None] for _, pa, pb in chosen]
    sizes = sorted({f"{x.shape[-1]}x{x.shape[-2]}" for x in inputs})

    def official_round() -> tuple[float, list[np.ndarray]]:
        outs, total = [], 0.0
        with torch.no_grad():
            for x in inputs:
                t0 = time.perf_counter()
                y = ref(x)
                total += time.perf_counter() - t0
                outs.append(y[0, 0].numpy())
        return total / len(inputs), outs

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        one = _link_pairs(chosen[:1], tmp / "one")
        many = _link_pairs(chosen, tmp / "many")
        extra = [] if jobs is None else ["--jobs", str(jobs)]

        def fuse(src: tuple[Path, Path], out: Path, *flags: str) -> float:
            t0 = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):  # its progress bar and summary
                rc = main(["fuse", "--checkpoint", str(checkpoint), "--a", str(src[0]), "--b", str(src[1]),
                           "--out", str(out), "--device", "cpu", *extra, *flags])
            if rc != 0:
                raise TDFusionError("tdfusion fuse failed during the benchmark")
            return time.perf_counter() - t0

        # Untimed: the raw outputs for the comparison, and every first-call cost.
        fuse(many, tmp / "raw", "--raw")
        ours_raw = [np.load(tmp / "raw" / f"{stem}.raw.npy") for stem, _, _ in chosen]
        _, ref_raw = official_round()
        diff = max(float(np.abs(o.astype(np.float64) - r).max()) for o, r in zip(ours_raw, ref_raw))

        rows = []
        for r in range(rounds):
            if progress:
                progress(f"vs official: round {r + 1}/{rounds}")
            t1 = fuse(one, tmp / f"o1_{r}")
            tn = fuse(many, tmp / f"on_{r}")
            official_s, _ = official_round()
            ours_s = tn / pairs
            rows.append({"ours_1_pair_s": t1, f"ours_{pairs}_pairs_s": tn, "ours_s_per_pair": ours_s,
                         "ours_marginal_s_per_pair": (tn - t1) / (pairs - 1),
                         "official_s_per_pair": official_s, "ratio": official_s / ours_s,
                         "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None})
    ours = statistics.median(r["ours_s_per_pair"] for r in rows)
    off = statistics.median(r["official_s_per_pair"] for r in rows)
    return {"what": "vs_official", "pairs": pairs, "sizes": sizes, "rounds": rows, "ours_s_per_pair": ours,
            "official_s_per_pair": off, "ratio_of_medians": off / ours,
            "median_ratio": statistics.median(r["ratio"] for r in rows), "max_abs_diff": diff,
            "threads": torch.get_num_threads(), "jobs": jobs}
