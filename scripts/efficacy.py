#!/usr/bin/env python
"""The efficacy tables: does a fusion loss learned from a task give images on which that task does better?

Parts (``--parts``; ``--mode quick`` runs ``synthetic``, ``--mode full`` all of them):

``synthetic``
    For each task (segmentation, detection) on the built-in synthetic scenes: train, with one
    F schedule and **two fusion-training seeds** each (fusion run i of every method uses
    training seed i), a fixed-weight fusion (``fixed``: the ablation, w = 1/2, no
    meta-learning), a reconstruction-driven one (``recon``: ReFusion's loss and task), the
    task-driven one with the papers' meta objective (``seg`` / ``det``: TDFusion, Eq. 11)
    and the same with the ``steer`` preset (``seg_steer`` / ``det_steer``:
    configs/presets/steer.yaml); then ``tdfusion compare`` over IR only, VIS only and the
    fused sources (a fresh task network per source, fusion run and downstream seed), with
    every source's differences to ``fixed`` paired run by run.
``references``
    Two fusions that need no training beside them: the even blend and the mask oracle.
``official``
    ``tdfusion train --preset official`` (the released code's choices) on the synthetic
    scenes with as many meta iterations as fit in about an hour, against the fixed-weight
    F under the same preset.
``msrs_det``, ``msrs_seg``
    The 40 + 20 real MSRS pairs of ``../shared/data/msrs_det``, at the papers' single
    learning rate (1e-4 for F, G and T): detection with their boxes, and segmentation with
    the boxes painted into masks (``tdfusion convert yolo2mask``).

Each part writes ``results/efficacy_<table>.json`` (with ``paired``) and a chart. Every
command run is printed and appended to ``results/efficacy_<mode>_commands.txt``. Trainings
already finished in ``--work`` are reused (delete a folder to retrain), interrupted ones
resumed. Each training and task-network training runs on one CPU thread, two at a time
(``--jobs``): the numbers depend on the thread count (docs/results.md), so the harness
fixes it.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tdfusion.training import run_folder

REPO = Path(__file__).resolve().parents[1]
MSRS = REPO.parent / "shared" / "data" / "msrs_det"

#: The synthetic scenes, the F schedule every method shares, the downstream regime, the seeds.
#: ``train.fusion_steps`` x ``train.epochs`` = 800 F steps: where the fixed-weight F's
#: downstream score stopped rising (docs/results.md, "F trained to its plateau": 200, 400, 800
#: and 1600 steps measured), with 96 meta iterations for G (6 per epoch).
MODES = {
    "quick": {
        "size": [96, 128], "length": 48,
        "fusion": {"train.epochs": 16, "train.meta_steps": 6, "train.fusion_steps": 50},
        "downstream": {"downstream.epochs": 25}, "seeds": [0, 1, 2], "fusion_seeds": [0, 1],
        "parts": ["synthetic"],
    },
    "full": {
        "size": [96, 128], "length": 48,
        "fusion": {"train.epochs": 16, "train.meta_steps": 6, "train.fusion_steps": 50},
        "downstream": {"downstream.epochs": 25}, "seeds": [0, 1, 2], "fusion_seeds": [0, 1],
        "parts": ["synthetic", "references", "official", "msrs_det", "msrs_seg"],
        # about an hour of meta iterations per fusion run on one core (3 s per 200-step epoch's
        # fusion pass, 1 s per meta iteration): 15 of the released code's 40 epochs
        "official_epochs": 15,
        "msrs": {"train.epochs": 8, "train.meta_steps": 15, "train.fusion_steps": 40},
        "msrs_downstream": {"downstream.epochs": 40, "downstream.input_size": 320},
    },
    # The pipeline only (tests/test_efficacy.py): tiny networks, one step of everything.
    "smoke": {
        "size": [48, 64], "length": 4,
        "fusion": {"train.epochs": 1, "train.meta_steps": 1, "train.fusion_steps": 2, "fusion.dim": 8,
                   "fusion.num_blocks": 1, "lossgen.dim": 8, "lossgen.num_blocks": 1, "data.crop_size": 32},
        "downstream": {"downstream.epochs": 1, "downstream.batch_size": 2}, "seeds": [0, 1], "fusion_seeds": [0, 1],
        "parts": ["synthetic"],
        "task": {"seg": ["task.segformer={hidden_sizes: [8, 16, 16, 16], depths: [1, 1, 1, 1], "
                         "num_attention_heads: [1, 1, 1, 1], decoder_hidden_size: 16}"], "det": []},
    },
}
#: What every synthetic fusion run shares besides the mode's schedule. F at 1e-3 (not the
#: papers' 1e-4): on these small scenes it reaches its plateau in a few hundred steps without
#: collapsing; G at 3e-4: at 1e-3 the normalised-Adam steps saturated G's maps (docs/results.md).
F_SCHEDULE = {"data.crop_size": 64, "data.batch_size": 1, "data.swap_sources": True, "data.hflip": True,
              "optim.lr_fusion": 1e-3, "optim.lr_task": 1e-3, "optim.lr_lossgen": 3e-4, "optim.schedule": "none",
              "fusion.dim": 16, "run.eval_every": 0, "run.samples": 4}
#: The papers' single rate (TDFusion and ReFusion Sec. 4.1: Adam, 1e-4) for the MSRS runs.
PAPERS_RATES = {"optim.lr_fusion": 1e-4, "optim.lr_task": 1e-4, "optim.lr_lossgen": 1e-4, "optim.schedule": "none",
                "run.eval_every": 0, "run.samples": 4}


class Method:
    """One way of training F: the task it learns from, config overrides and a preset."""

    def __init__(self, task: str, overrides: dict | None = None, preset: str | None = None):
        self.task, self.overrides, self.preset = task, dict(overrides or {}), preset

    def args(self) -> list[str]:
        return ["--task", self.task, *(["--preset", self.preset] if self.preset else [])]


#: The fixed-weight ablation has no meta phase, so its task network never reaches F: a minimal
#: one (reconstruction, dim 4) only saves time; F comes out bit for bit the same.
METHODS = {
    "fixed": Method("recon", {"loss.fixed_weights": True, "loss.form": "tdfusion", "lossgen.with_gradients": False,
                              "task.dim": 4, "task.num_blocks": 1, "task.heads": 1}),
    "recon": Method("recon", {"loss.form": "refusion", "lossgen.with_gradients": True}),
    "seg": Method("seg", {"loss.form": "tdfusion"}),
    "seg_steer": Method("seg", {"loss.form": "tdfusion"}, preset="steer"),
    "det": Method("det", {"loss.form": "tdfusion"}),
    "det_steer": Method("det", {"loss.form": "tdfusion"}, preset="steer"),
}
TARGETS = {"seg": "mask", "det": "boxes", "recon": "none"}


def kv(d: dict) -> list[str]:
    return [f"{k}={json.dumps(v) if isinstance(v, (list, bool)) or v is None else v}" for k, v in d.items()]


class Runner:
    """Runs ``tdfusion`` commands in subprocesses with one CPU thread each, logging each command."""

    def __init__(self, log_path: Path, threads: int):
        self.log_path, self.threads = log_path, threads
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text("")

    def __call__(self, args: list[str], name: str) -> None:
        cmd = [sys.executable, "-m", "tdfusion", *args]
        text = " ".join(shlex.quote(c) for c in ["tdfusion", *args])
        with open(self.log_path, "a") as fh:
            fh.write(text + "\n")
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads), "PYTHONUNBUFFERED": "1"}
        start = time.perf_counter()
        print(f"[{time.strftime('%H:%M:%S')}] {name}: {text}", flush=True)
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
        tail = "\n".join(proc.stdout.strip().splitlines()[-40:])
        print(f"[{time.strftime('%H:%M:%S')}] {name} done in {time.perf_counter() - start:.0f} s\n{tail}", flush=True)
        if proc.returncode:
            sys.stderr.write(proc.stderr)
            raise SystemExit(f"{name} failed with status {proc.returncode}")


def train_or_resume(run: Runner, out: Path, train_args: list[str], name: str) -> Path:
    """Train into ``out``; reuse a finished run (it has summary.json; delete the folder to
    retrain) and resume an interrupted one from its last checkpoint."""
    if not (out / run_folder.SUMMARY).exists():
        if (out / run_folder.LAST).exists():
            run(["train", "--resume", str(out), "--out", str(out)], f"{name} (resumed)")
        else:
            run(train_args, name)
    return out / run_folder.LAST


def train_all(run: Runner, jobs: int, specs: list[tuple[str, Path, list[str]]]) -> dict[str, Path]:
    """``(name, run folder, train arguments)`` trained ``jobs`` at a time; ``{name: last.pt}``."""
    with ThreadPoolExecutor(jobs) as pool:
        paths = pool.map(lambda s: train_or_resume(run, s[1], s[2], f"train {s[0]}"), specs)
        return dict(zip([s[0] for s in specs], paths))


def synthetic_args(mode: dict, target: str) -> list[str]:
    return kv({"dataset.options.size": mode["size"], "dataset.options.length": mode["length"],
               "data.task_size": mode["size"], "dataset.options.target": target})


def compare(run: Runner, mode: dict, task: str, ckpts: list[tuple[str, Path]], out: Path, jobs: int, device: str,
            data: list[str], overrides: list[str], folders: dict[str, Path] | None = None) -> dict:
    """``tdfusion compare`` over the checkpoints (names may repeat: fusion runs of one method),
    ``folders`` and IR/VIS, paired against ``fixed``; returns its JSON."""
    fused = ["--fused", *map(str, folders.values()), "--names", *folders] if folders else []
    # KEY=VALUE overrides last: argparse takes the positionals in one run
    run(["compare", "--task", task, *data, "--checkpoint", *[str(p) for _, p in ckpts],
         "--checkpoint-names", *[n for n, _ in ckpts], *fused, "--baseline", ckpts[0][0],
         "--seeds", *map(str, mode["seeds"]), "--preset", "fast", "--jobs", str(jobs), "--device", device,
         "--json", str(out), *overrides, *mode.get("task", {}).get(task, [])], f"compare {task} -> {out.name}")
    return json.loads(out.read_text())


def lossgen_profiles(ckpts: list[tuple[str, Path]], data_args: dict, limit: int = 32) -> dict[str, list]:
    """Per method, per fusion run: G's mean weight for the infrared image per class of the
    test split (``tdfusion inspect``'s figures; empty for the fixed-weight ablation)."""
    from tdfusion.data import build_dataset
    from tdfusion.inspection.inspector import inspect_run, pairs_from_dataset

    data = pairs_from_dataset(build_dataset(**data_args), limit, "test split")
    ir = [c for c in ("person", "car") if c in data.classes]
    out: dict[str, list] = {}
    for name, path in ckpts:
        report = inspect_run(path, path.parent, data, ir, keep_maps=0)
        g = report["lossgen"]
        out.setdefault(name, []).append({} if g is None else {
            "w_a_per_class": {c: round(v["w_a"], 4) for c, v in (g.get("per_class") or {}).items()},
            "at_bounds": g["at_bounds"], "oracle_agreement": (g.get("oracle") or {}).get("class_mean_agreement")})
    return out


def chart(payload: dict, path: Path, title: str) -> None:
    """Left: each source's mean ± std; right: each source's run-by-run differences to the
    baseline (dots) and their mean."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = payload["metrics"][0]
    names = list(payload["sources"])
    paired = payload.get("paired") or {}
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 3.6), gridspec_kw={"width_ratios": [1, 1.1]})
    means = [payload["sources"][n]["mean"].get(m, 0.0) for n in names]
    stds = [payload["sources"][n]["std"].get(m, 0.0) for n in names]
    colours = ["#9e9e9e" if n in ("ir", "vis") else "#4c72b0" if n.startswith(("fixed", "recon")) else
               "#c7c7c7" if n in ("blend", "oracle") else "#dd8452" for n in names]
    ax.bar(names, means, yerr=stds, capsize=4, color=colours)
    ax.set_title(f"{m}: mean ± std over each source's runs", fontsize=9)
    ax.set_ylim(0, max(1e-3, max(a + b for a, b in zip(means, stds)) * 1.15))
    ax.tick_params(axis="x", labelsize=8, rotation=30)
    others = [n for n in names if n in (paired.get("sources") or {})]
    base_runs = payload["sources"][paired["baseline"]]["runs"] if paired else []
    for i, n in enumerate(others):
        d = _differences(base_runs, payload["sources"][n]["runs"], m)
        bx.scatter([i] * len(d), d, s=14, color="#4c72b0", alpha=0.7)
        bx.hlines(paired["sources"][n]["mean"][m], i - 0.3, i + 0.3, color="#dd8452", lw=2)
    bx.axhline(0, color="grey", lw=0.8)
    bx.set_xticks(range(len(others)), others, fontsize=8, rotation=30)
    bx.set_title(f"{m} minus {paired.get('baseline')}'s, run by run (same seed and fusion run)", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    os.replace(tmp, path)
    plt.close(fig)


def _differences(base: list[dict], other: list[dict], m: str) -> list[float]:
    from tdfusion.evaluation.statistics import matched_runs

    return [o[m] - b[m] for b, o in matched_runs(base, other)]


def write_table(payload: dict, extra: dict, out: Path, title: str) -> None:
    payload.update(extra)
    tmp = out.with_suffix(".tmp.json")
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, out)
    chart(payload, out.with_suffix(".png"), title)


# -- parts -------------------------------------------------------------------------------------------------------
def part_synthetic(ctx: dict, tasks: list[str], references: dict[str, Path] | None) -> None:
    mode, run, work = ctx["mode"], ctx["run"], ctx["work"]
    names = ["fixed", "recon", *[m for t in tasks for m in (t, f"{t}_steer")]]
    specs = []
    for seed in mode["fusion_seeds"]:
        for name in names:
            method = METHODS[name]
            out = work / "fusion" / f"{name}_s{seed}"
            specs.append((f"{name}_s{seed}", out, [
                "train", *method.args(), "--dataset", "synthetic", "--out", str(out), "--device", ctx["device"],
                *synthetic_args(mode, TARGETS[method.task]),
                *kv({**F_SCHEDULE, **mode["fusion"], "train.seed": seed, **method.overrides}),
                *mode.get("task", {}).get(method.task, [])]))
    trained = train_all(run, ctx["jobs"], specs)
    for task in tasks:
        ckpts = [(name, trained[f"{name}_s{seed}"]) for name in ("fixed", "recon", task, f"{task}_steer")
                 for seed in mode["fusion_seeds"]]
        out = ctx["out"] / f"efficacy_{task}.json"
        payload = compare(run, mode, task, ckpts, out, ctx["jobs"], ctx["device"], ["--dataset", "synthetic"],
                          synthetic_args(mode, TARGETS[task])[:2] + kv(mode["downstream"]), references)
        profiles = lossgen_profiles(ckpts, {"name": "synthetic", "split": "test", "length": min(32, mode["length"]),
                                            "size": mode["size"], "target": "mask"})
        write_table(payload, {"lossgen_per_class": profiles, "mode": {"name": ctx["mode_name"], **mode}}, out,
                    f"{task} on synthetic scenes ({ctx['mode_name']})")


def reference_folders(mode: dict, work: Path) -> dict[str, Path]:
    """Two fusions that need no training, as reference rows: ``blend`` = (IR + VIS) / 2 and
    ``oracle`` = IR on people and cars (their masks, dilated 2 px), VIS elsewhere: what a
    loss that weighs the sources by region could reach at best on these scenes."""
    import cv2
    import numpy as np

    from tdfusion.data import build_dataset
    from tdfusion.io import to_integer, write_image
    from tdfusion.synthetic import SEG_CLASSES

    objects = [SEG_CLASSES.index("person"), SEG_CLASSES.index("car")]
    out = {"blend": work / "references" / "blend", "oracle": work / "references" / "oracle"}
    for split in ("train", "test"):
        data = build_dataset("synthetic", None, split, length=mode["length"], size=mode["size"], target="mask")
        for i in range(len(data)):
            s = data[i]
            near = cv2.dilate(np.isin(s.target["mask"], objects).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
            for name, y in (("blend", 0.5 * (s.a + s.b)), ("oracle", np.where(near, s.a, s.b))):
                write_image(out[name] / split / f"{s.stem}.png", to_integer(y, 8), durable=False)
    return out


def part_official(ctx: dict) -> None:
    """``--preset official`` (segmentation-driven) against the fixed-weight F under the same
    preset, two fusion seeds each, on the synthetic scenes (crops 64: the preset's 256 exceed them)."""
    mode, run, work = ctx["mode"], ctx["run"], ctx["work"]
    specs = []
    for seed in mode["fusion_seeds"]:
        for name, method in (("fixed_official", METHODS["fixed"]), ("seg_official", METHODS["seg"])):
            out = work / "official" / f"{name}_s{seed}"
            specs.append((f"{name}_s{seed}", out, [
                "train", *method.args(), "--preset", "official", "--dataset", "synthetic", "--out", str(out),
                "--device", ctx["device"], *synthetic_args(mode, TARGETS[method.task]),
                *kv({"data.crop_size": 64, "train.epochs": mode["official_epochs"], "fusion.dim": 16,
                     "run.eval_every": 0, "run.samples": 4, "train.seed": seed, **method.overrides})]))
    trained = train_all(run, ctx["jobs"], specs)
    ckpts = [(name, trained[f"{name}_s{seed}"]) for name in ("fixed_official", "seg_official")
             for seed in mode["fusion_seeds"]]
    out = ctx["out"] / "efficacy_seg_official.json"
    payload = compare(run, mode, "seg", ckpts, out, ctx["jobs"], ctx["device"], ["--dataset", "synthetic"],
                      synthetic_args(mode, "mask")[:2] + kv(mode["downstream"]))
    profiles = lossgen_profiles(ckpts, {"name": "synthetic", "split": "test", "length": min(32, mode["length"]),
                                        "size": mode["size"], "target": "mask"})
    write_table(payload, {"lossgen_per_class": profiles, "mode": {"name": ctx["mode_name"], **mode}}, out,
                "seg on synthetic scenes, --preset official")


def msrs_seg_root(work: Path, msrs: Path, run: Runner) -> Path:
    """A ``seg_folder`` of the MSRS pairs with their boxes painted into masks (0 background,
    1 person, 2 bicycle, 3 car); the images are linked, not copied."""
    root = work / "msrs_seg_data"
    for split in ("train", "test"):
        for sub in ("ir", "vi"):
            dest = root / split / sub
            if not dest.exists():
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.symlink((msrs / split / sub).resolve(), dest)
        if not (root / split / "label").is_dir():
            run(["convert", "yolo2mask", "--labels", str(msrs / split / "labels"), "--images", str(msrs / split / "ir"),
                 "--out", str(root / split / "label"), "--preset", "msrs_det"], f"masks {split}")
    (root / "dataset.yaml").write_text("classes: [background, person, bicycle, car]\nignore_index: 255\n")
    return root


def part_msrs(ctx: dict, task: str) -> None:
    """The MSRS pairs: fixed, recon, the task's paper objective and its steer preset, two fusion
    seeds each, at the papers' rate; fixed and recon are shared by both tasks."""
    mode, run, work, msrs = ctx["mode"], ctx["run"], ctx["work"], ctx["msrs"]
    if not msrs.is_dir():
        raise SystemExit(f"{msrs}: no such folder (the MSRS detection pairs, see datasets/detection.md)")
    det_data = ["--dataset", "msrs_det", "--data-root", str(msrs)]
    data = det_data if task == "det" else ["--dataset", "seg_folder", "--data-root", str(msrs_seg_root(work, msrs, run))]
    schedule = {"data.crop_size": 128, "data.task_size": [240, 320], **PAPERS_RATES, **mode["msrs"]}
    specs = []
    for seed in mode["fusion_seeds"]:
        for name in ("fixed", "recon", task, f"{task}_steer"):
            method = METHODS[name]
            out = work / "msrs" / f"{name}_s{seed}"
            specs.append((f"msrs {name}_s{seed}", out, [
                "train", *method.args(), *(det_data if method.task == "recon" else data), "--out", str(out),
                "--device", ctx["device"], *kv({**schedule, "train.seed": seed, **method.overrides})]))
    trained = train_all(run, ctx["jobs"], specs)
    ckpts = [(name, trained[f"msrs {name}_s{seed}"]) for name in ("fixed", "recon", task, f"{task}_steer")
             for seed in mode["fusion_seeds"]]
    out = ctx["out"] / f"efficacy_{task}_msrs.json"
    payload = compare(run, mode, task, ckpts, out, ctx["jobs"], ctx["device"], data, kv(mode["msrs_downstream"]))
    write_table(payload, {"mode": {"name": ctx["mode_name"], "msrs": mode["msrs"], "rates": PAPERS_RATES}}, out,
                f"{task} on 40 + 20 real MSRS pairs" + (" (boxes painted as masks)" if task == "seg" else ""))


def main(argv: list[str] | None = None) -> int:
    parts = ("synthetic", "references", "official", "msrs_det", "msrs_seg")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=list(MODES), default=os.environ.get("EFFICACY", "quick"),
                   help="quick (the synthetic tables, at most 25 min on 2 cores), full (every part: hours), "
                        "smoke (the pipeline)")
    p.add_argument("--parts", nargs="+", choices=parts, help="run these parts only (default: the mode's)")
    p.add_argument("--tasks", nargs="+", choices=("seg", "det"), default=["seg", "det"])
    p.add_argument("--out", default="results", help="where the JSON files and charts go")
    p.add_argument("--work", default=None, help="run folders (default runs/efficacy_<mode>)")
    p.add_argument("--jobs", type=int, default=2, help="trainings at once, one thread each (default 2)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--msrs", default=str(MSRS), help="the MSRS detection pairs (parts msrs_det, msrs_seg)")
    args = p.parse_args(argv)
    mode = MODES[args.mode]
    chosen = args.parts or mode["parts"]
    out = Path(args.out)
    work = Path(args.work or f"runs/efficacy_{args.mode}")
    out.mkdir(parents=True, exist_ok=True)
    # a subset run (--parts, --tasks) keeps its own command list beside the full run's
    subset = [*(args.parts or []), *([] if sorted(args.tasks) == ["det", "seg"] else args.tasks)]
    log = out / f"efficacy_{args.mode}{''.join('_' + s for s in subset)}_commands.txt"
    run = Runner(log, threads=1 if args.jobs > 1 else os.cpu_count() or 1)
    ctx = {"mode": mode, "mode_name": args.mode, "run": run, "work": work, "out": out, "jobs": args.jobs,
           "device": args.device, "msrs": Path(args.msrs)}
    start = time.perf_counter()
    if "synthetic" in chosen:
        refs = reference_folders(mode, work) if "references" in chosen else None
        part_synthetic(ctx, args.tasks, refs)
    elif "references" in chosen:
        raise SystemExit("--parts references goes with synthetic (its rows join the synthetic tables)")
    if "official" in chosen:
        part_official(ctx)
    for task in ("det", "seg"):
        if f"msrs_{task}" in chosen:
            part_msrs(ctx, task)
    print(f"efficacy ({args.mode}: {', '.join(chosen)}) done in {(time.perf_counter() - start) / 60:.1f} min; "
          f"results in {out}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
