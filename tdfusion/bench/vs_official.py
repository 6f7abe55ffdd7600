"""``tdfusion bench --vs-official``: the official ReFusion network timed beside ``tdfusion fuse``.

The official network definition is not part of this toolkit (the user gives its file,
e.g. ``ReFusion.py`` of the ReFusion repository); it is imported from that path, built
with its defaults, given the published state_dict, and run as its own test script does:
``net(torch.cat([Y_a, Y_b], 1))`` under ``torch.no_grad`` on the OpenCV YCrCb luminance.

Both sides run on the same pairs, in alternating rounds of one benchmark run, so that a
busy neighbour on a shared machine slows both alike:

* ours, end to end: ``tdfusion fuse`` (through its CLI entry point, after an untimed first
  run) on a folder of ``n`` pairs; time per pair ``t_n / n``. It reads the checkpoint,
  checks and decodes the pairs, converts colour, runs the network, merges chroma and
  encodes PNGs; only the interpreter's start-up and imports are excluded. Also reported:
  ``(t_n - t_1) / (n - 1)`` (the marginal time of a pair, with a run on the first pair
  alone), which is fragile when ``--jobs`` pairs run at once: ``t_1`` runs one pair on all
  threads, ``t_n`` pairs on one thread each;
* official: the network's forward pass alone (no decoding, no saving), mean per pair.

Where each side runs (``isolate``):

* isolated (the default): every round of each side in a fresh interpreter, each program
  as its users run it, so that neither inherits what the other set process-wide:
  ``tdfusion fuse``'s allocator policy (:func:`~tdfusion.nets.band_plan.keep_freed_memory`),
  torch's thread pools, a heap fragmented by the other's tensors. On the project's VM the
  two modes measured alike within the rounds' spread (BENCHMARKS.md, "Fourth round");
* one process (``isolate=False``): both sides in this interpreter.

Each side's system (kernel) share of its CPU time is reported beside its time: the
official network's activations are tens of MiB each, and on the project's Linux VM about
60% of its CPU time goes to the page faults of fresh allocations (BENCHMARKS.md), so its
time, and the ratio, depend on the operating system's memory settings. The two networks' raw outputs
are compared on every pair (max absolute difference), untimed, in this process.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
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
from .measure import run_child

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


class _CpuClock:
    """Wall time over a block, and the system (kernel) share of this process's CPU time in
    it, all threads (``os.times``)."""

    def __enter__(self) -> _CpuClock:
        self._cpu, self._t0 = os.times(), time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self._t0
        cpu = os.times()
        user, system = cpu.user - self._cpu.user, cpu.system - self._cpu.system
        self.system_share = system / (user + system) if user + system > 0 else 0.0


class _Official:
    """The official network, loaded with the checkpoint, and the luminance of the pairs."""

    def __init__(self, official: str | os.PathLike, class_name: str, checkpoint: str | os.PathLike, pairs):
        from ..checkpoint import safe_torch_load
        from ..hub import resolve_checkpoint

        ref = load_official(official, class_name)()
        state = safe_torch_load(resolve_checkpoint(checkpoint))
        try:
            ref.load_state_dict(state)
        except Exception as exc:  # wrong kind of checkpoint for that network
            raise TDFusionError(f"{checkpoint}: the official network does not load it ({exc})") from None
        self.net = ref.eval()
        self.inputs = [torch.from_numpy(np.stack([_luma(pa), _luma(pb)]))[None] for _, pa, pb in pairs]

    def outputs(self) -> list[np.ndarray]:
        with torch.no_grad():
            return [self.net(x)[0, 0].numpy() for x in self.inputs]

    def round(self) -> dict[str, float]:
        """One timed pass over the pairs: the forward passes alone."""
        with torch.no_grad(), _CpuClock() as clock:
            for x in self.inputs:
                self.net(x)
        return {"official_s_per_pair": clock.wall / len(self.inputs), "official_system_share": clock.system_share}


class _Ours:
    """``tdfusion fuse`` on a folder of the pairs and on the first pair alone, in this process."""

    def __init__(self, checkpoint: str | os.PathLike, pairs, folder: Path, jobs: int | None):
        self.checkpoint, self.folder, self.pairs = str(checkpoint), folder, len(pairs)
        self.one = _link_pairs(pairs[:1], folder / "one")
        self.many = _link_pairs(pairs, folder / "many")
        self.extra = [] if jobs is None else ["--jobs", str(jobs)]
        self.runs = 0

    def fuse(self, src: tuple[Path, Path], *flags: str) -> tuple[Path, _CpuClock]:
        from ..cli import main

        self.runs += 1
        out = self.folder / f"out{self.runs}"
        with contextlib.redirect_stdout(io.StringIO()), _CpuClock() as clock:  # its progress bar and summary
            rc = main(["fuse", "--checkpoint", self.checkpoint, "--a", str(src[0]), "--b", str(src[1]),
                       "--out", str(out), "--device", "cpu", *self.extra, *flags])
        if rc != 0:
            raise TDFusionError("tdfusion fuse failed during the benchmark")
        return out, clock

    def round(self) -> dict[str, float]:
        """``t_1`` then ``t_n`` (the first-call costs were paid by an untimed run before)."""
        t1 = self.fuse(self.one)[1].wall
        clock = self.fuse(self.many)[1]
        tn = clock.wall
        return {"ours_1_pair_s": t1, f"ours_{self.pairs}_pairs_s": tn, "ours_s_per_pair": tn / self.pairs,
                "ours_marginal_s_per_pair": (tn - t1) / (self.pairs - 1), "ours_system_share": clock.system_share}


def _in_child(side: str, spec: dict[str, Any]) -> tuple[dict[str, float], int]:
    """One round of one side in a fresh interpreter (:func:`_child_main`): its figures and
    the process id it ran in."""
    out = run_child([sys.executable, "-m", "tdfusion.bench.vs_official", side, json.dumps(spec)],
                    f"--vs-official, {side} side")
    reply = json.loads(out.strip().splitlines()[-1])  # the child's last line; fuse's output comes before
    return reply["figures"], reply["pid"]


def _child_main(argv: list[str]) -> int:
    """``python -m tdfusion.bench.vs_official {ours|official} SPEC``: an untimed first run, then
    one timed round; prints the round's figures as one JSON line."""
    parser = argparse.ArgumentParser(prog="python -m tdfusion.bench.vs_official")
    parser.add_argument("side", choices=("ours", "official"))
    parser.add_argument("spec", help="JSON: official, class_name, checkpoint, pairs, jobs, threads")
    args = parser.parse_args(argv)
    spec = json.loads(args.spec)
    torch.set_num_threads(int(spec["threads"]))
    pairs = [(stem, Path(a), Path(b)) for stem, a, b in spec["pairs"]]
    if args.side == "official":
        side = _Official(spec["official"], spec["class_name"], spec["checkpoint"], pairs)
        side.round()
        row = side.round()
    else:
        with tempfile.TemporaryDirectory() as tmp:
            side = _Ours(spec["checkpoint"], pairs, Path(tmp), spec["jobs"])
            side.fuse(side.many)
            row = side.round()
    print(json.dumps({"figures": row, "pid": os.getpid()}))
    return 0


def bench_vs_official(official: str | os.PathLike, checkpoint: str | os.PathLike, dir_a: str | os.PathLike,
                      dir_b: str | os.PathLike, pairs: int = 7, rounds: int = 3, class_name: str = "ReFusion",
                      jobs: int | None = None, isolate: bool = True,
                      progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Time ``tdfusion fuse`` end to end against the official network's forward pass (CPU).

    Args:
        official: the official network's Python file; ``class_name`` the class in it.
        checkpoint: a published ``ReFusion_*.pth`` (the state_dict both sides load).
        dir_a, dir_b: folders of source pairs (the first ``pairs`` stems are used).
        rounds: alternating rounds (ours, official, ours, ...); figures are medians.
        jobs: ``tdfusion fuse --jobs`` (default: its own default).
        isolate: each round of each side in a fresh interpreter (see the module's text);
            else both in this process.
    Returns:
        per-round times (with each side's system share of its CPU time and the process ids
        the two sides ran in), medians, the ratio official / ours and the outputs' max
        difference.
    """
    if pairs < 2:
        raise TDFusionError("--vs-pairs must be at least 2")
    found = match_pairs(dir_a, dir_b)
    if len(found) < pairs:
        raise TDFusionError(f"{dir_a}: {len(found)} pair(s), --vs-pairs asks for {pairs}")
    chosen = found[:pairs]
    ref = _Official(official, class_name, checkpoint, chosen)
    sizes = sorted({f"{x.shape[-1]}x{x.shape[-2]}" for x in ref.inputs})
    spec = {"official": str(Path(official).resolve()), "class_name": class_name,
            "checkpoint": str(checkpoint), "pairs": [[s, str(a), str(b)] for s, a, b in chosen],
            "jobs": jobs, "threads": torch.get_num_threads()}

    with tempfile.TemporaryDirectory() as tmp:
        ours = _Ours(checkpoint, chosen, Path(tmp), jobs)
        # Untimed: the raw outputs for the comparison, and every first-call cost.
        raw = ours.fuse(ours.many, "--raw")[0]
        ours_raw = [np.load(raw / f"{stem}.raw.npy") for stem, _, _ in chosen]
        diff = max(float(np.abs(o.astype(np.float64) - r).max()) for o, r in zip(ours_raw, ref.outputs()))

        rows = []
        for r in range(rounds):
            if progress:
                progress(f"vs official: round {r + 1}/{rounds}" + (" (each side in a fresh process)" if isolate else ""))
            if isolate:
                (ours_row, ours_pid), (ref_row, ref_pid) = _in_child("ours", spec), _in_child("official", spec)
                row = {**ours_row, **ref_row, "processes": [ours_pid, ref_pid]}
            else:
                row = {**ours.round(), **ref.round(), "processes": [os.getpid(), os.getpid()]}
            row["ratio"] = row["official_s_per_pair"] / row["ours_s_per_pair"]
            row["load_average_1min"] = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
            rows.append(row)
    ours_s = statistics.median(r["ours_s_per_pair"] for r in rows)
    off = statistics.median(r["official_s_per_pair"] for r in rows)
    return {"what": "vs_official", "pairs": pairs, "sizes": sizes, "isolated": isolate, "rounds": rows,
            "ours_s_per_pair": ours_s, "official_s_per_pair": off, "ratio_of_medians": off / ours_s,
            "median_ratio": statistics.median(r["ratio"] for r in rows), "max_abs_diff": diff,
            "threads": torch.get_num_threads(), "jobs": jobs}


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
