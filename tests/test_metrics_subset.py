"""``tdfusion metrics``/``report`` on a fused folder larger than the sources, and the
``--workers`` default that follows ``--threads`` (issue 24, items 1 and 3)."""
from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from tdfusion.cli import build_parser, main
from tdfusion.commands.common import metric_workers
from tdfusion.metrics import MethodInput, plan_jobs

SOURCES = ("s1", "s2")
EXTRA = ("s3", "s4", "s5")


@pytest.fixture
def folders(tmp_path):
    """ir/, vi/ with SOURCES; fused/ with SOURCES + EXTRA (a whole test set's results)."""
    rng = np.random.default_rng(0)
    for stem in SOURCES + EXTRA:
        for name in ("ir", "vi", "fused"):
            if name != "fused" and stem in EXTRA:
                continue
            (tmp_path / name).mkdir(exist_ok=True)
            pixels = cv2.GaussianBlur(rng.uniform(0, 255, (44, 52)), (0, 0), 1.5).astype(np.uint8)
            assert cv2.imwrite(str(tmp_path / name / f"{stem}.png"), pixels)
    return tmp_path


def _metrics(folders, *extra):
    return ["metrics", "--a", str(folders / "ir"), "--b", str(folders / "vi"), "--quiet", "--workers", "1",
            *map(str, extra)]


# -- item 1: a larger fused folder -----------------------------------------------------------------------------

def test_larger_fused_folder_scores_the_subset_the_sources_name(folders, capsys):
    out = folders / "m.json"
    assert main(_metrics(folders, "--fused", folders / "fused", "--json", out)) == 0
    printed = capsys.readouterr().out
    per_image = json.loads(out.read_text())["methods"]["fused"]["per_image"]
    assert sorted(per_image) == list(SOURCES)
    notes = [line for line in printed.splitlines() if "ignored" in line]
    assert len(notes) == 1 and f"fused: {len(EXTRA)} fused image(s)" in notes[0], printed

    # the same values as a fused folder holding exactly the sources' images
    exact = folders / "exact"
    exact.mkdir()
    for stem in SOURCES:
        shutil.copy(folders / "fused" / f"{stem}.png", exact)
    out2 = folders / "m2.json"
    assert main(_metrics(folders, "--fused", exact, "--names", "fused", "--json", out2)) == 0
    assert "ignored" not in capsys.readouterr().out
    assert json.loads(out2.read_text()) == json.loads(out.read_text())


def test_missing_fused_image_is_still_refused_without_allow_missing(folders, capsys):
    (folders / "fused" / "s2.png").unlink()  # extras present and one source image missing
    out = folders / "m.json"
    assert main(_metrics(folders, "--fused", folders / "fused", "--json", out)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {folders / 'fused'}: no fused image for s2")
    assert not out.exists()
    assert main(_metrics(folders, "--fused", folders / "fused", "--json", out, "--allow-missing")) == 0
    printed = capsys.readouterr().out
    assert sorted(json.loads(out.read_text())["methods"]["fused"]["per_image"]) == ["s1"]
    assert "1 fused image(s) missing" in printed and f"{len(EXTRA)} fused image(s)" in printed


def test_report_shows_the_subset_of_a_larger_fused_folder(folders, capsys):
    out = folders / "report"
    assert main(["report", "--a", str(folders / "ir"), "--b", str(folders / "vi"), "--fused",
                 str(folders / "fused"), "--out", str(out), "--quiet", "--workers", "1", "--height", "32"]) == 0
    printed = capsys.readouterr().out
    assert sum("ignored" in line for line in printed.splitlines()) == 1  # planned once, said once
    assert sorted(p.stem for p in (out / "sheets").iterdir()) == list(SOURCES)
    assert sorted(json.loads((out / "metrics.json").read_text())["methods"]["fused"]["per_image"]) == list(SOURCES)


def test_plan_jobs_collects_the_ignored_images(folders):
    ignored: list = []
    jobs = plan_jobs(folders / "ir", folders / "vi", [MethodInput("f", folders / "fused")], ignored=ignored)
    assert [j.stem for j in jobs] == list(SOURCES)
    assert sorted((m, p.name) for m, p in ignored) == [("f", f"{s}.png") for s in EXTRA]


# -- item 3: --workers follows --threads -----------------------------------------------------------------------

@pytest.mark.parametrize("workers, threads, expected", [
    (None, None, None),   # every CPU (evaluate_jobs' default)
    (None, 1, 1), (None, 3, 3),
    (2, None, 2), (1, 2, 1),
    (4, 2, 2),            # never above the thread budget
])
def test_metric_workers_follow_threads(workers, threads, expected, capsys):
    assert metric_workers(argparse.Namespace(workers=workers, threads=threads)) == expected
    note = capsys.readouterr().out
    assert ("lowered to --threads" in note) == (workers is not None and threads is not None and workers > threads)


def test_metrics_command_runs_threads_workers(folders, monkeypatch, capsys):
    """``--threads 1`` without ``--workers``: one worker (in this process), not one per CPU."""
    import tdfusion.metrics.folders as folders_mod

    seen = []
    real = folders_mod.evaluate_jobs

    def spy(jobs, workers=None, *args, **kwargs):
        seen.append(workers)
        return real(jobs, 1, *args, **kwargs)  # whatever was asked, compute in this process

    monkeypatch.setattr(folders_mod, "evaluate_jobs", spy)
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))  # restored after the test
    before = torch.get_num_threads()
    base = ["metrics", "--a", str(folders / "ir"), "--b", str(folders / "vi"), "--fused", str(folders / "fused"),
            "--quiet"]
    try:
        assert main([*base, "--threads", "1"]) == 0
        assert main([*base, "--threads", "2", "--workers", "5"]) == 0
        assert main(base) == 0
    finally:
        torch.set_num_threads(before)
    assert seen == [1, 2, None]
    assert "note: --workers 5 lowered to --threads 2" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["metrics", "report"])
def test_help_states_the_workers_default(command, capsys):
    with pytest.raises(SystemExit):
        build_parser([command]).parse_args([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "default: --threads N when given, else the number of CPUs; never more than --threads" in text
