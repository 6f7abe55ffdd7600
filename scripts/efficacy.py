#!/usr/bin/env python
"""The efficacy table: does a fusion loss learned from a task give images on which that task does better?

For each task (segmentation, detection) on the built-in synthetic scenes:

1. train three fusion networks with the same F schedule (epochs, steps, crops, learning
   rates, data): a fixed-weight fusion (the ablation: w = 1/2, no meta-learning), a
   reconstruction-driven one (ReFusion's loss and task) and the task-driven one (TDFusion
   with SegFormer or YOLOv8); the fixed and reconstruction-driven networks serve both tasks;
2. run ``tdfusion compare`` over IR only, VIS only and the three networks: a fresh task
   network per source and seed, mean ± std over the seeds;
3. write ``results/efficacy_<task>.json`` and a bar chart ``results/efficacy_<task>.png``.

``--mode quick`` (``EFFICACY=quick make efficacy``) fits about 20 minutes on 2 CPU cores;
``--mode full`` takes hours on a CPU and adds detection on the real MSRS pairs of
``../shared/data/msrs_det`` when that folder exists (``--msrs-only`` runs that part alone).
Every command run is printed, and written to ``results/efficacy_<mode>_commands.txt``
(``efficacy_msrs_commands.txt`` with ``--msrs-only``).
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

#: Per mode: the synthetic data, the shared F schedule, the downstream regime and the seeds.
MODES = {
    "quick": {
        "size": [96, 128], "length": 48,
        "fusion": {"train.epochs": 4, "train.meta_steps": 16, "train.fusion_steps": 48},
        "downstream": {"downstream.epochs": 25}, "seeds": [0, 1, 2], "msrs": False,
    },
    "full": {
        "size": [128, 160], "length": 128,
        "fusion": {"train.epochs": 8, "train.meta_steps": 40, "train.fusion_steps": 128},
        "downstream": {"downstream.epochs": 40}, "seeds": [0, 1, 2], "msrs": True, "references": True,
    },
    # The pipeline only (tests/test_efficacy.py): tiny networks, one step of everything.
    "smoke": {
        "size": [48, 64], "length": 4,
        "fusion": {"train.epochs": 1, "train.meta_steps": 1, "train.fusion_steps": 2, "fusion.dim": 8,
                   "fusion.num_blocks": 1, "lossgen.dim": 8, "lossgen.num_blocks": 1, "data.crop_size": 32},
        "downstream": {"downstream.epochs": 1, "downstream.batch_size": 2}, "seeds": [0, 1], "msrs": False,
        "task": {"seg": ["task.segformer={hidden_sizes: [8, 16, 16, 16], depths: [1, 1, 1, 1], "
                         "num_attention_heads: [1, 1, 1, 1], decoder_hidden_size: 16}"], "det": []},
    },
}
#: What every fusion network shares besides the mode's schedule.
#: G's learning rate: 3e-4, not 1e-3: at 1e-3 the normalised-Adam steps saturated G's maps
#: within 64 meta iterations (w_IR 0.81-0.94 for every class of the synthetic scenes), and a
#: saturated softmax passes no gradient back; at 1e-4 they moved less (0.32-0.48, docs/results.md).
F_SCHEDULE = {"data.crop_size": 64, "data.batch_size": 1, "data.swap_sources": True, "data.hflip": True,
              "optim.lr_fusion": 1e-3, "optim.lr_task": 1e-3, "optim.lr_lossgen": 3e-4, "optim.schedule": "none",
              "fusion.dim": 16, "run.eval_every": 0, "run.samples": 4, "train.seed": 0}
#: The three losses (and the task the driven one learns from).
METHODS = {
    "fixed": ("recon", {"loss.fixed_weights": True, "loss.form": "tdfusion", "lossgen.with_gradients": False}),
    "recon": ("recon", {"loss.form": "refusion", "lossgen.with_gradients": True}),
    "seg": ("seg", {"loss.form": "tdfusion"}),
    "det": ("det", {"loss.form": "tdfusion"}),
}


def kv(d: dict) -> list[str]:
    return [f"{k}={json.dumps(v) if isinstance(v, (list, bool)) or v is None else v}" for k, v in d.items()]


class Runner:
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
        tail = "\n".join(proc.stdout.strip().splitlines()[-25:])
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


def train_fusion(run: Runner, mode: dict, work: Path, methods: list[str], jobs: int, device: str) -> dict[str, Path]:
    data = {"dataset.options.size": mode["size"], "dataset.options.length": mode["length"],
            "data.task_size": mode["size"]}

    def one(name: str) -> Path:
        task, loss = METHODS[name]
        target = {"seg": "mask", "det": "boxes"}.get(task, "none")
        out = work / "fusion" / name
        return train_or_resume(run, out, ["train", "--task", task, "--dataset", "synthetic", "--out", str(out),
                                          "--device", device,
                                          *kv({**data, "dataset.options.target": target, **F_SCHEDULE,
                                               **mode["fusion"], **loss}),
                                          *mode.get("task", {}).get(task, [])], f"train {name}")

    with ThreadPoolExecutor(jobs) as pool:
        return dict(zip(methods, pool.map(one, methods)))


def compare(run: Runner, mode: dict, task: str, ckpts: dict[str, Path], out: Path, jobs: int, device: str,
            extra: list[str] | None = None, dataset: list[str] | None = None,
            folders: dict[str, Path] | None = None) -> dict:
    if dataset is None:
        dataset = ["--dataset", "synthetic"]
        extra = [*kv({"dataset.options.size": mode["size"], "dataset.options.length": mode["length"]}),
                 *(extra or [])]
    names = list(ckpts)
    # KEY=VALUE overrides last: argparse takes the positionals in one run
    fused = ["--fused", *map(str, folders.values()), "--names", *folders] if folders else []
    run(["compare", "--task", task, *dataset, "--checkpoint", *map(str, ckpts.values()),
         "--checkpoint-names", *names, *fused, "--seeds", *map(str, mode["seeds"]), "--preset", "fast",
         "--jobs", str(jobs), "--device", device, "--json", str(out), *kv(mode["downstream"]),
         *mode.get("task", {}).get(task, []), *(extra or [])],
        f"compare {task}")
    return json.loads(out.read_text())


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


def g_weight_profile(ckpt: Path, mode: dict, n: int = 32) -> dict[str, float]:
    """Mean weight G gives the infrared image (w_a) per segmentation class of the synthetic
    test scenes: does the learned loss weigh sources by region, or globally?"""
    import numpy as np
    import torch

    from tdfusion.checkpoint import load_checkpoint, trained_lossgen
    from tdfusion.data import build_dataset
    from tdfusion.synthetic import SEG_CLASSES

    g = trained_lossgen(load_checkpoint(ckpt), str(ckpt))
    if g is None:
        return {}
    data = build_dataset("synthetic", None, "test", length=min(n, mode["length"]), size=mode["size"], target="mask")
    sums, counts = np.zeros(len(SEG_CLASSES)), np.zeros(len(SEG_CLASSES))
    with torch.no_grad():
        for i in range(len(data)):
            s = data[i]
            w_a = g(torch.from_numpy(s.a)[None, None], torch.from_numpy(s.b)[None, None])[0, 0].numpy()
            mask = s.target["mask"]
            sums += np.bincount(mask.ravel(), weights=w_a.ravel(), minlength=len(SEG_CLASSES))
            counts += np.bincount(mask.ravel(), minlength=len(SEG_CLASSES))
    return {c: round(float(sums[k] / counts[k]), 4) for k, c in enumerate(SEG_CLASSES) if counts[k]}


def chart(payload: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = payload["metrics"][:1] + [m for m in payload["metrics"][1:] if m in ("mAcc", "mAP50_95")]
    names = list(payload["sources"])
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        means = [payload["sources"][n]["mean"].get(m, 0.0) for n in names]
        stds = [payload["sources"][n]["std"].get(m, 0.0) for n in names]
        colours = ["#9e9e9e" if n in ("ir", "vis") else "#4c72b0" if n in ("fixed", "recon") else
                   "#c7c7c7" if n in ("blend", "oracle") else "#dd8452" for n in names]
        ax.bar(names, means, yerr=stds, capsize=4, color=colours)
        ax.set_title(f"{m} (mean ± std, {len(payload['seeds'])} seeds)", fontsize=9)
        ax.set_ylim(0, max(1e-3, max(m_ + s_ for m_, s_ in zip(means, stds)) * 1.15))
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    os.replace(tmp, path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=list(MODES), default=os.environ.get("EFFICACY", "quick"),
                   help="quick (about 20 min on 2 cores), full (hours; docs/results.md), smoke (the pipeline)")
    p.add_argument("--tasks", nargs="+", choices=("seg", "det"), default=["seg", "det"])
    p.add_argument("--out", default="results", help="where the JSON files and charts go")
    p.add_argument("--work", default=None, help="run folders (default runs/efficacy_<mode>)")
    p.add_argument("--jobs", type=int, default=2, help="trainings at once, one thread each (default 2)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--msrs-only", action="store_true",
                   help="run only the detection comparison on the real MSRS pairs (--msrs)")
    p.add_argument("--references", action="store_true",
                   help="add the blend (IR + VIS) / 2 and the mask-based oracle fusion as sources (on in full mode)")
    p.add_argument("--msrs", default=str(REPO.parent / "shared" / "data" / "msrs_det"),
                   help="MSRS detection pairs for the real-data run (full mode)")
    args = p.parse_args(argv)
    mode = MODES[args.mode]
    out = Path(args.out)
    work = Path(args.work or f"runs/efficacy_{args.mode}")
    out.mkdir(parents=True, exist_ok=True)
    log_name = f"efficacy_{'msrs' if args.msrs_only else args.mode}_commands.txt"
    run = Runner(out / log_name, threads=1 if args.jobs > 1 else os.cpu_count() or 1)
    start = time.perf_counter()
    if args.msrs_only:
        if not Path(args.msrs).is_dir():
            raise SystemExit(f"{args.msrs}: no such folder (the MSRS detection pairs, see datasets/detection.md)")
        msrs_efficacy(run, mode, Path(args.msrs), work, out, args.jobs, args.device)
        print(f"MSRS detection efficacy done in {(time.perf_counter() - start) / 60:.1f} min; results in {out}/")
        return 0
    methods = ["fixed", "recon", *args.tasks]
    ckpts = train_fusion(run, mode, work, methods, args.jobs, args.device)
    references = reference_folders(mode, work) if (mode.get("references") or args.references) else None
    for task in args.tasks:
        sources = {"fixed": ckpts["fixed"], "recon": ckpts["recon"], task: ckpts[task]}
        payload = compare(run, mode, task, sources, out / f"efficacy_{task}.json", args.jobs, args.device,
                          folders=references)
        # G's weight for the infrared image per class: the learned loss, by region
        payload["g_weight_ir_per_class"] = {name: g_weight_profile(path, mode) for name, path in sources.items()}
        payload["mode"] = {"name": args.mode, **mode}
        (out / f"efficacy_{task}.json").write_text(json.dumps(payload, indent=2))
        chart(payload, out / f"efficacy_{task}.png", f"{task} on synthetic scenes ({args.mode})")
    if mode["msrs"] and "det" in args.tasks and Path(args.msrs).is_dir():
        msrs_efficacy(run, mode, Path(args.msrs), work, out, args.jobs, args.device)
    print(f"efficacy ({args.mode}) done in {(time.perf_counter() - start) / 60:.1f} min; results in {out}/")
    return 0


def msrs_efficacy(run: Runner, mode: dict, root: Path, work: Path, out: Path, jobs: int, device: str) -> None:
    """Detection on the 40 + 20 real MSRS pairs: the three losses trained on the 40 training
    pairs (task input 240x320, as TDFusion's MSRS detection recipe), compared at 320 wide."""
    schedule = {"data.crop_size": 128, "data.task_size": [240, 320], "train.epochs": 4, "train.meta_steps": 30,
                "train.fusion_steps": 40, "optim.lr_fusion": 1e-3, "optim.lr_task": 1e-3, "optim.lr_lossgen": 3e-4,
                "optim.schedule": "none", "run.eval_every": 0, "run.samples": 4, "train.seed": 0}
    base = ["--dataset", "msrs_det", "--data-root", str(root)]

    def one(name: str) -> Path:
        task, loss = METHODS[name]
        dest = work / "msrs" / name
        return train_or_resume(run, dest, ["train", "--task", task, *base, "--out", str(dest), "--device", device,
                                           *kv({**schedule, **loss})], f"train msrs {name}")

    with ThreadPoolExecutor(jobs) as pool:
        ckpts = dict(zip(["fixed", "recon", "det"], pool.map(one, ["fixed", "recon", "det"])))
    payload = compare(run, mode, "det", ckpts, out / "efficacy_det_msrs.json", jobs, device,
                      extra=["downstream.input_size=320"], dataset=base)
    chart(payload, out / "efficacy_det_msrs.png", "detection on 40 + 20 real MSRS pairs")


if __name__ == "__main__":
    raise SystemExit(main())
