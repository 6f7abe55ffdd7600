"""What a training run leaves behind (issue 15, items 4-6): progress lines off a terminal,
CSV and TensorBoard logs, best.pt, step checkpoints stored once, the samples and report."""
from __future__ import annotations

import csv
import io
import json
import re

import cv2
import numpy as np
import pytest
import torch
from rich.console import Console

from tdfusion import progress
from tdfusion.cli import main
from tdfusion.progress import progress_bar

TINY = ["train.device=cpu", "fusion.dim=4", "fusion.num_blocks=1", "fusion.heads=2", "lossgen.dim=4",
        "lossgen.num_blocks=1", "lossgen.heads=2", "dataset.options.length=4", "dataset.options.size=[48,48]",
        "data.crop_size=32", "data.task_size=[48,48]", "train.meta_steps=2", "train.fusion_steps=2",
        "run.samples=2", "run.eval_limit=2", "run.save_every=3", "optim.lr_fusion=0.01"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "run"
    code = main(["train", "--task", "recon", "--dataset", "synthetic", "--out", str(out), "--epochs", "3",
                 *TINY, "run.loggers=[jsonl,csv,tensorboard]"])
    assert code == 0
    return out


def _jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_csv_logs_hold_the_jsonl_records(run):
    records = _jsonl(run / "train_log.jsonl")
    with open(run / "train_log.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(records) == 12
    for row, rec in zip(rows, records):
        for key, value in rec.items():
            assert row[key] == str(value), key
    with open(run / "eval_log.csv", newline="") as fh:
        evals = list(csv.DictReader(fh))
    assert [float(r["psnr_a"]) for r in evals] == [r["psnr_a"] for r in _jsonl(run / "eval_log.jsonl")]


def test_tensorboard_scalars_and_sample_images(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    records = _jsonl(run / "train_log.jsonl")
    fusion_losses = [(r["global_step"], r["loss_f"]) for r in records if r["phase"] == "fusion"]
    logged = [(e.step, e.value) for e in acc.Scalars("fusion/loss_f")]
    assert [s for s, _ in logged] == [s for s, _ in fusion_losses]
    np.testing.assert_allclose([v for _, v in logged], [v for _, v in fusion_losses], rtol=1e-6)
    assert "eval/psnr_a" in tags["scalars"] and len(acc.Scalars("eval/psnr_a")) == 3
    images = acc.Images("samples")
    assert len(images) == 3
    decoded = cv2.imdecode(np.frombuffer(images[-1].encoded_image_string, np.uint8), cv2.IMREAD_COLOR)
    sheet = cv2.imread(str(run / "samples" / "epoch_003.png"))
    np.testing.assert_array_equal(decoded, sheet)


def test_best_pt_is_the_epoch_with_the_best_fitness(run):
    evals = _jsonl(run / "eval_log.jsonl")
    fitness = [(r["psnr_a"] + r["psnr_b"]) / 2 for r in evals]
    best_epoch = int(np.argmax(fitness)) + 1
    best = torch.load(run / "best.pt", weights_only=True)
    assert best["epoch"] == best_epoch
    assert best["train_state"]["best"] == {"fitness": pytest.approx(max(fitness)), "epoch": best_epoch}


def test_step_checkpoint_is_stored_once(run):
    # Steps are saved every 3: the last step save (global step 12) is a hard link to the
    # last.pt of that moment; the epoch end then replaced last.pt with a new file.
    steps = sorted(run.glob("step_*.pt"))
    assert [p.name for p in steps] == ["step_0000006.pt", "step_0000009.pt", "step_0000012.pt"]
    ckpt = torch.load(steps[-1], weights_only=True)
    assert ckpt["train_state"]["position"]["global_step"] == 12
    assert "train_state" in ckpt and "optimizers" in ckpt["train_state"]


def test_step_save_links_instead_of_writing_twice(tmp_path):
    from tdfusion.io import link_or_copy

    last = tmp_path / "last.pt"
    last.write_bytes(b"checkpoint")
    link_or_copy(last, tmp_path / "step_1.pt")
    assert (tmp_path / "step_1.pt").stat().st_ino == last.stat().st_ino
    last.with_name(".new").write_bytes(b"next")
    (last.with_name(".new")).replace(last)  # how save_checkpoint replaces last.pt
    assert (tmp_path / "step_1.pt").read_bytes() == b"checkpoint"


def test_samples_show_what_fuse_writes_with_labelled_columns(run):
    from tdfusion.report import colour_bar

    sheet = cv2.imread(str(run / "samples" / "epoch_003.png"))[:, :, ::-1]
    # 2 rows of 5 labelled 48-px panels and the colour bar: A | B | fused | w_A | v_A.
    width = 5 * 48 + 4 * 4
    bar = colour_bar(width)
    assert sheet.shape == (2 * (26 + 48) + 4 + 4 + bar.shape[0], width, 3)
    fused_tile = sheet[26:26 + 48, 2 * (48 + 4):2 * (48 + 4) + 48, 0]
    assert fused_tile.min() == 0 and fused_tile.max() == 255  # min-max stretched, as fuse writes it
    np.testing.assert_array_equal(sheet[-bar.shape[0]:], bar)


def test_run_report_title_provenance_and_links(run):
    page = (run / "report" / "index.html").read_text()
    assert "<title>training report: run</title>" in page and "run run" not in page
    sha = __import__("hashlib").sha256((run / "last.pt").read_bytes()).hexdigest()
    assert sha in page and "tdfusion train" in page and "0.1.0" in page and "UTC" in page
    for href in re.findall(r'href="([^"]+)"', page):
        assert (run / "report" / href).is_file(), href


# -- progress ------------------------------------------------------------------------------------

def test_progress_lines_off_a_terminal_at_least_every_interval(monkeypatch):
    clock = iter(float(t) for t in range(0, 10_000, 7))   # every call: 7 s later
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    buf = io.StringIO()
    with progress_bar(40, "epoch 1/40 learning G", console=Console(file=buf, force_terminal=False)) as advance:
        for _ in range(40):
            advance(1, loss_f=0.5)
    lines = buf.getvalue().splitlines()
    assert re.fullmatch(r"epoch 1/40 learning G: 0/40 \(0%\) elapsed 0:00:\d\d remaining -:--:--", lines[0])
    assert re.fullmatch(r"epoch 1/40 learning G: 40/40 \(100%\) elapsed \d+:\d\d:\d\d remaining 0:00:00  loss_f 0\.5",
                        lines[-1])
    # One line per 30 s of work at most apart: 40 steps of 7 s -> a line every 5 steps.
    done = [int(re.search(r": (\d+)/40", line).group(1)) for line in lines]
    assert all(b - a <= 5 for a, b in zip(done, done[1:])) and len(lines) >= 9


def test_progress_at_80_columns_keeps_whole_times():
    buf = io.StringIO()
    console = Console(file=buf, width=80, force_terminal=True, color_system=None)
    with progress_bar(200, "epoch 12/40 learning F, T", console=console) as advance:
        advance(50, loss_f=0.0123456, loss_t=1.234567)
    text = buf.getvalue()
    assert "…" not in text.split("50/200")[1].split("loss")[0]
    assert re.search(r"50/200 \d:\d\d:\d\d", text)
