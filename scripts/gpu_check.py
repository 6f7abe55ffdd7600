#!/usr/bin/env python
"""The GPU checks of issue 13, item 5, in one run that writes one JSON of figures.

    scripts/gpu_check.sh                       # on a CUDA machine, about 5-8 minutes
    scripts/gpu_check.sh --device cpu --quick  # the same steps, small sizes (what the tests run)

Steps (each a ``tdfusion`` command in its own process, as a user would run it):

1. parity: the four published checkpoints fuse their shared test cases on the device;
   raw outputs against the reference implementation's (max abs difference, bar 1e-4);
2. bench_inference: ``tdfusion bench`` inference in float32, bfloat16 and (CUDA) float16,
   with the low-precision output error;
3. bench_meta: one meta iteration per task (seg, det, recon) in fp32 and bf16 autocast,
   with the cosine similarity of G's meta-gradient to the fp32 one;
4. amp_training: 50 training steps with ``train.precision`` fp16 (CUDA) or bf16 (CPU);
5. torchrun: a one-process ``torchrun`` run (NCCL on CUDA, Gloo on CPU);
6. resume_after_sigkill: a run killed with SIGKILL while writing its second checkpoint,
   then ``--resume``d to the end;
7. batched_throughput (issue 25): the network's pairs/s at batch 1/8/32, float32 and
   bfloat16, 640x480 and 1280x1024, and batch N against batch 1 in float32;
8. fuse_folder: ``tdfusion fuse`` over 200 640x480 pairs at the default batch and at 1;
9. vs_official: the official network beside ``tdfusion fuse`` in the same run (needs
   ``--official ReFusion.py``);
10. training_data_time: the MSRS detection recipe's step times on the real pairs and the
    share of each phase spent waiting for data (loader workers 0 and the default).

A failed step is recorded (its error's last lines) and the others still run; the exit
status is 1 if any step failed. Needs the shared data folder (``--data``) for step 1.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CASES = {  # task -> (folder of A, folder of B), as in tests/test_parity.py
    "IVIF": ("infrared", "visible"), "MIF": ("CT_PET_SPECT", "MRI"),
    "MFIF": ("near", "far"), "MEIF": ("under", "over"),
}
PARITY_BAR = 1e-4
TINY = ["fusion.dim=8", "fusion.num_blocks=1", "fusion.heads=2", "lossgen.dim=8", "lossgen.num_blocks=1",
        "lossgen.heads=2", "dataset.options.length=8", "dataset.options.size=[48,48]", "data.crop_size=32",
        "run.samples=0", "run.eval_every=0", "run.save_every=2"]


class StepFailed(Exception):
    pass


def tdfusion(args: list[str], timeout: float, env: dict | None = None, check: bool = True,
             launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m tdfusion ARGS`` (or ``launcher + ARGS``) from the repository root."""
    cmd = (launcher or [sys.executable, "-m", "tdfusion"]) + [str(a) for a in args]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise StepFailed(f"{' '.join(cmd[2:5])} ... exited {proc.returncode}: " + " | ".join(tail))
    return proc


def step_parity(opts, tmp: Path) -> dict:
    root = opts.data / "refusion"
    if not root.is_dir():
        raise StepFailed(f"{root}: shared data not found (--data)")
    out = {}
    for task, (fa, fb) in CASES.items():
        if opts.quick and task != "MIF":  # the smallest case (256x256); tests/test_parity.py runs all on CPU
            continue
        dest = tmp / f"parity_{task}"
        t0 = time.perf_counter()
        tdfusion(["fuse", "--checkpoint", root / "models" / f"ReFusion_{task}.pth",
                  "--a", root / "test_cases" / task / fa, "--b", root / "test_cases" / task / fb,
                  "--out", dest, "--gray", "--raw", "--device", opts.device, "--jobs", "1"], timeout=300)
        import numpy as np

        diffs = {}
        for ref in sorted((root / "reference_outputs" / task).glob("*.raw.npy")):
            ours = np.load(dest / ref.name)
            diffs[ref.name.split(".")[0]] = float(np.abs(ours.astype(np.float64) - np.load(ref)).max())
        out[task] = {"max_abs_diff": diffs, "seconds": time.perf_counter() - t0}
    worst = max(v for t in out.values() for v in t["max_abs_diff"].values())
    if not worst <= PARITY_BAR:
        per_task = ", ".join(f"{t} {max(v['max_abs_diff'].values()):.3g}" for t, v in out.items())
        raise StepFailed(f"parity: max difference {worst:.3g} > {PARITY_BAR} ({per_task})")
    return {"tasks": out, "worst": worst, "bar": PARITY_BAR}


def _bench(opts, tmp: Path, name: str, extra: list[str], timeout: float) -> dict:
    dest = tmp / f"{name}.json"
    tdfusion(["bench", "--device", opts.device, "--threads", str(opts.threads), "--json", dest, *extra],
             timeout=timeout)
    return json.loads(dest.read_text())


def step_bench_inference(opts, tmp: Path) -> dict:
    sizes = "64x64" if opts.quick else "480x640,1024x1280"
    rep = ["--repeats", "1", "--warmup", "0"] if opts.quick else ["--repeats", "5", "--warmup", "2"]
    precisions = ["float32", "bfloat16"] + (["float16"] if opts.device.startswith("cuda") else [])
    out = {}
    for p in precisions:
        extra = ["--tasks", "none", "--sizes", sizes, "--precision", p, *rep] + (["--bf16-error"] if p == "float32" else [])
        res = _bench(opts, tmp, f"inference_{p}", extra, timeout=300)
        out[p] = [{k: r.get(k) for k in ("size", "median_s", "min_s", "pairs_per_s", "peak_mb", "bands")}
                  for r in res["inference"]]
        if "low_precision_error" in res:
            out["low_precision_error_256x256"] = res["low_precision_error"]
    return out


def step_bench_meta(opts, tmp: Path) -> dict:
    tasks = "recon" if opts.quick else "seg,det,recon"
    rep = ["--repeats", "1", "--warmup", "0"] if opts.quick else ["--repeats", "3", "--warmup", "1"]
    out = {}
    for p in ("float32", "bfloat16"):
        res = _bench(opts, tmp, f"meta_{p}", ["--sizes", "none", "--tasks", tasks, "--meta-method", "jvp",
                                              "--precision", p, *rep], timeout=600)
        out[p] = [{k: r.get(k) for k in ("task", "median_s", "min_s", "peak_mb", "phases_s", "cosine_vs_fp32")}
                  for r in res["meta"]]
    return out


def _train_args(opts, out: Path, steps_meta: int, steps_fusion: int, epochs: int = 1) -> list[str]:
    return ["--task", "recon", "--dataset", "synthetic", "--out", out, "train.device=" + opts.device,
            f"train.epochs={epochs}", f"train.meta_steps={steps_meta}", f"train.fusion_steps={steps_fusion}", *TINY]


def _logged_steps(run: Path) -> list[dict]:
    lines = (run / "train_log.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def step_amp_training(opts, tmp: Path) -> dict:
    precision = "fp16" if opts.device.startswith("cuda") else "bf16"
    meta, fusion = (2, 8) if opts.quick else (10, 40)
    run = tmp / "amp"
    t0 = time.perf_counter()
    tdfusion(["train", *_train_args(opts, run, meta, fusion), f"train.precision={precision}"], timeout=600)
    seconds = time.perf_counter() - t0
    logs = _logged_steps(run)
    losses = [r["loss_f"] for r in logs if "loss_f" in r]
    if len(logs) != meta + fusion or not all(map(lambda v: v == v and abs(v) != float("inf"), losses)):
        raise StepFailed(f"amp training: {len(logs)} steps logged, losses {losses[-3:]}")
    return {"precision": precision, "steps": len(logs), "seconds_with_startup": seconds,
            "loss_f_first": losses[0], "loss_f_last": losses[-1]}


def step_torchrun(opts, tmp: Path) -> dict:
    run = tmp / "torchrun"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
                str(REPO / "train_fusion.py")]
    t0 = time.perf_counter()
    tdfusion(_train_args(opts, run, 2, 2), timeout=300, launcher=launcher)
    steps = len(_logged_steps(run))
    if steps != 4:
        raise StepFailed(f"torchrun: {steps} steps logged, 4 expected")
    return {"backend": "nccl" if opts.device.startswith("cuda") else "gloo", "steps": steps,
            "seconds_with_startup": time.perf_counter() - t0}


def step_resume_after_sigkill(opts, tmp: Path) -> dict:
    run = tmp / "resume"
    args = _train_args(opts, run, 2, 4, epochs=2)  # 12 steps, a checkpoint every 2
    # The tests' fault: SIGKILL halfway through the 2nd checkpoint write (tests/kill_during_save.py).
    killer = [sys.executable, str(REPO / "tests" / "kill_during_save.py"), "2"]
    killed = tdfusion(args, timeout=300, launcher=killer, check=False)
    if killed.returncode != -signal.SIGKILL:
        raise StepFailed(f"the run was to be killed while saving, it exited {killed.returncode}")
    before = len(_logged_steps(run))
    tdfusion(["train", "--resume", run, "--out", run], timeout=300)
    steps = sorted({r["global_step"] for r in _logged_steps(run)})
    if steps != list(range(1, 13)) and steps != list(range(12)):
        raise StepFailed(f"resume: logged steps {steps}, expected 12 distinct steps")
    return {"steps_before_kill": before, "steps_after_resume": len(steps), "killed_by": "SIGKILL"}


def step_batched_throughput(opts, tmp: Path) -> dict:
    """Issue 25, item 2: the fusion network's pairs/s at batch 1, 8 and 32, float32 and
    bfloat16, at 640x480 and 1280x1024 (random images on the device: the network alone),
    and each batch's float32 outputs against batch 1's. Batches that do not fit the
    device's free memory are shrunk (``batch_that_fits``) and say so."""
    import torch

    from tdfusion.bench.measure import timed
    from tdfusion.nets import create_model
    from tdfusion.nets.band_plan import batch_that_fits

    sizes = [(48, 64)] if opts.quick else [(480, 640), (1024, 1280)]
    batches = [1, 2] if opts.quick else [1, 8, 32]
    repeats = 1 if opts.quick else 5
    torch.manual_seed(0)
    net = create_model("fusion").to(opts.device).eval()
    out = []
    for h, w in sizes:
        a, b = torch.rand(max(batches), 1, h, w), torch.rand(max(batches), 1, h, w)
        for precision in ("float32", "bfloat16"):
            model = net.to(getattr(torch, precision))  # in place: float32 again for the next size
            for n in batches:
                fits = batch_that_fits(net, h, w, n, None, opts.device, 4 if precision == "float32" else 2)
                if fits < 1:
                    out.append({"size": f"{w}x{h}", "precision": precision, "batch": n, "fits": 0})
                    continue
                x = a[:fits].to(opts.device, getattr(torch, precision))
                y = b[:fits].to(opts.device, getattr(torch, precision))
                with torch.inference_mode():
                    times = sorted(timed(lambda: model(x, y), torch.device(opts.device), 1, repeats))
                row = {"size": f"{w}x{h}", "precision": precision, "batch": n, "fits": fits,
                       "median_s": times[len(times) // 2], "pairs_per_s": fits / times[len(times) // 2]}
                if precision == "float32":  # each pair of the batch against its own batch-1 call
                    with torch.inference_mode():
                        res = model(x, y)
                        singles = torch.cat([model(x[i:i + 1], y[i:i + 1]) for i in range(min(fits, 4))])
                    row["max_abs_diff_vs_batch1"] = float((res[:len(singles)].float() - singles.float()).abs().max())
                out.append(row)
        net.float()
    return {"rows": out, "targets_h100_640x480_pairs_per_s": {"float32": 150, "bfloat16": 300},
            "bar_vs_batch1_float32": 1e-4}


def step_fuse_folder(opts, tmp: Path) -> dict:
    """Issue 25, item 2: ``tdfusion fuse`` on a folder of 200 640x480 pairs (what compare's
    fusing does per checkpoint, I/O included), at the default batch and at --batch 1."""
    import torch

    from tdfusion.checkpoint import module_record, save_checkpoint
    from tdfusion.nets import create_model

    n, (h, w) = (6, (48, 64)) if opts.quick else (200, (480, 640))
    data = tmp / "folder_pairs"
    tdfusion(["synth", "--out", data, "--train", n, "--test", 0, "--size", h, w], timeout=600)
    torch.manual_seed(0)
    ckpt = tmp / "folder_net.pt"
    save_checkpoint({"fusion": module_record("fusion", create_model("fusion"))}, ckpt)
    out = {}
    for label, extra in (("default", []), ("batch_1", ["--batch", "1"])):
        dest = tmp / f"folder_{label}"
        t0 = time.perf_counter()
        tdfusion(["fuse", "--checkpoint", ckpt, "--a", data / "train" / "ir", "--b", data / "train" / "vi",
                  "--out", dest, "--device", opts.device, *extra], timeout=600)
        seconds = time.perf_counter() - t0
        out[label] = {"pairs": n, "seconds_with_startup": round(seconds, 2), "pairs_per_s": round(n / seconds, 2)}
    return out


def step_vs_official(opts, tmp: Path) -> dict:
    """Issue 25, item 2: the official network's forward beside ``tdfusion fuse`` in the same
    run (``tdfusion bench --vs-official``); needs the official ``ReFusion.py`` (--official),
    which this repository does not ship."""
    if not opts.official:
        return {"skipped": "no --official ReFusion.py given (the released network file; not shipped here)"}
    root = opts.data / "refusion"
    ckpt = root / "models" / "ReFusion_IVIF.pth"
    pairs = opts.data / "msrs_det" / "test"
    return _bench(opts, tmp, "vs_official", ["--vs-official", opts.official, "--checkpoint", ckpt,
                                            "--a", pairs / "ir", "--b", pairs / "vi"], timeout=600)


def step_training_data_time(opts, tmp: Path) -> dict:
    """Issue 25, item 3: the MSRS detection recipe's steps on the real 640x480 pairs of the
    shared data (PNG decoding included; 256 crops, task 240x320): seconds per meta iteration
    and fusion step, and the share of each phase's wall time spent waiting for data
    (``data_s`` in the train log), with the loader in the training process and by default."""
    root = opts.data / "msrs_det"
    if not root.is_dir():
        raise StepFailed(f"{root}: shared data not found (--data)")
    meta, fusion = (3, 4) if opts.quick else (10, 60)
    crop = 32 if opts.quick else 256
    task_size = "[64,64]" if opts.quick else "[240,320]"
    out = {}
    for workers in ("0", "auto"):  # the loader in the training process, and the default
        run = tmp / f"data_time_{workers}"
        tdfusion(["train", "--task", "det", "--dataset", "msrs_det", "--data-root", root, "--out", run,
                  "--device", opts.device, "train.epochs=1", f"train.meta_steps={meta}",
                  f"train.fusion_steps={fusion}", f"data.crop_size={crop}", f"data.task_size={task_size}",
                  "run.eval_every=0", "run.samples=0", "run.estimate_steps=0", f"data.num_workers={workers}"],
                 timeout=900)
        logs = _logged_steps(run)
        for phase in ("meta", "fusion"):
            rows = [r for r in logs if r["phase"] == phase][1:]  # the first step carries start-up costs
            if len(rows) < 2:
                continue
            span = rows[-1]["time"] - rows[0]["time"]
            waited = sum(r["data_s"] for r in rows[1:])
            out[f"{phase}_workers_{workers}"] = {"steps": len(rows), "seconds_per_step": span / (len(rows) - 1),
                                                 "data_share": waited / span if span > 0 else None}
    return {**out, "targets_h100": {"meta_seconds_per_step": 0.2, "fusion_busy_share": 0.9}}


STEPS = {
    "parity": step_parity,
    "bench_inference": step_bench_inference,
    "bench_meta": step_bench_meta,
    "amp_training": step_amp_training,
    "torchrun": step_torchrun,
    "resume_after_sigkill": step_resume_after_sigkill,
    "batched_throughput": step_batched_throughput,
    "fuse_folder": step_fuse_folder,
    "vs_official": step_vs_official,
    "training_data_time": step_training_data_time,
}


def device_info(device: str) -> dict:
    import torch

    info = {"device": device, "torch": torch.__version__, "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None}
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(device))
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2 ** 30, 1),
                    cuda=torch.version.cuda)
    return info


def _write_json(out: Path, report: dict) -> None:
    tmp_out = out.with_name(f".{out.name}.tmp")
    tmp_out.write_text(json.dumps(report, indent=2))
    os.replace(tmp_out, out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    p.add_argument("--out", default="gpu_check.json", help="the JSON of figures (default gpu_check.json)")
    p.add_argument("--data", default=os.environ.get("TDFUSION_SHARED_DATA", str(REPO.parent / "shared" / "data")),
                   help="the shared data folder (published checkpoints and test cases)")
    p.add_argument("--quick", action="store_true", help="small sizes and fewer steps (for the CPU test)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads (default: all cores)")
    p.add_argument("--steps", default=",".join(STEPS), help="comma-separated subset of " + ", ".join(STEPS))
    p.add_argument("--official", default=None, metavar="PATH",
                   help="the released ReFusion.py, for the vs_official step (not shipped with tdfusion)")
    opts = p.parse_args(argv)
    opts.data = Path(opts.data)
    chosen = [s.strip() for s in opts.steps.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in STEPS]
    if unknown:
        p.error(f"unknown steps: {', '.join(unknown)}")
    report = {"started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "quick": opts.quick,
              "machine": device_info(opts.device), "steps": {}}
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for name in chosen:
            t0 = time.perf_counter()
            try:
                figures = STEPS[name](opts, Path(tmp))
                entry = {"ok": True, "figures": figures}
            except StepFailed as exc:
                entry = {"ok": False, "error": str(exc)}
            except Exception as exc:  # a bug or a timeout: record it, run the other steps
                entry = {"ok": False, "error": f"{type(exc).__name__}: {exc}",
                         "trace": traceback.format_exc().splitlines()[-4:]}
            entry["seconds"] = round(time.perf_counter() - t0, 1)
            report["steps"][name] = entry
            print(f"{name}: {'ok' if entry['ok'] else 'FAILED ' + entry['error']} ({entry['seconds']} s)",
                  flush=True)
            # after every step, so a run stopped at a time limit still leaves what it measured
            report["seconds"] = round(time.perf_counter() - t_all, 1)
            _write_json(Path(opts.out), report)
    report["seconds"] = round(time.perf_counter() - t_all, 1)
    report["machine"]["load_average_1min_end"] = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    out = Path(opts.out)
    _write_json(out, report)
    print(f"wrote {out} ({report['seconds']} s)")
    return 0 if all(e["ok"] for e in report["steps"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
