"""Weight files never run code without consent (issue 15, item 7).

A pickle can run any code while it is unpickled. Every weights file is read with
``torch.load(weights_only=True)``; a pickled ultralytics checkpoint needs the opt-in
``--trust-weights`` (``task.trust_weights: true``).
"""
from __future__ import annotations


import pytest
import torch

from tdfusion.tasks.yolo import build_yolov8, load_yolov8_weights
from tdfusion.cli import main
from tdfusion.errors import TDFusionError

TINY = ["train.epochs=1", "train.meta_steps=1", "train.fusion_steps=1", "data.crop_size=32",
        "data.task_size=[64,64]", "dataset.options.length=2", "dataset.options.size=[64,64]",
        "fusion.dim=4", "fusion.num_blocks=1", "fusion.heads=2", "lossgen.dim=4", "lossgen.num_blocks=1",
        "lossgen.heads=2", "run.samples=0", "run.eval_every=0"]


class _CreatesFile:
    """Unpickling this object opens (so creates) a file: a stand-in for any code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _evil(tmp_path):
    marker = tmp_path / "created_by_unpickling"
    path = tmp_path / "evil.pt"
    torch.save({"model": _CreatesFile(marker)}, path)
    return path, marker


def test_pickled_weights_run_nothing_and_exit_2(tmp_path, capsys):
    evil, marker = _evil(tmp_path)
    code = main(["train", "--task", "det", "--dataset", "synthetic", "--task-weights", str(evil),
                 "--out", str(tmp_path / "run"), "--device", "cpu", "dataset.options.target=boxes", *TINY])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert not marker.exists(), "unpickling ran the file's code"
    assert len(err) == 1 and err[0].startswith(f"error: {evil}: ")
    assert "--trust-weights" in err[0] and "task.trust_weights: true" in err[0] and "run code" in err[0]
    assert not (tmp_path / "run" / "last.pt").exists()


def test_control_unpickling_really_creates_the_file(tmp_path):
    # The stand-in is a real threat: full unpickling does create the file.
    evil, marker = _evil(tmp_path)
    torch.load(evil, weights_only=False)
    assert marker.exists()


def test_ultralytics_checkpoint_needs_the_opt_in_and_then_loads(tmp_path):
    source = build_yolov8(3)
    with torch.no_grad():
        for p in source.parameters():
            p.add_(0.5)
    path = tmp_path / "yolo.pt"
    torch.save({"model": source, "epoch": 3}, path)  # how ultralytics saves: the pickled model object
    target = build_yolov8(3)
    with pytest.raises(TDFusionError, match="--trust-weights") as info:
        load_yolov8_weights(target, str(path))
    assert "\n" not in str(info.value)
    loaded, total = load_yolov8_weights(target, str(path), trust=True)
    assert loaded == total
    for (name, a), b in zip(source.state_dict().items(), target.state_dict().values()):
        assert torch.equal(a, b), name


def test_plain_state_dict_needs_no_opt_in(tmp_path):
    source = build_yolov8(2)
    path = tmp_path / "sd.pt"
    torch.save(source.state_dict(), path)
    loaded, total = load_yolov8_weights(build_yolov8(2), str(path))
    assert loaded == total


def test_text_file_named_pth_gives_no_unsafe_advice(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("these are not weights\n" * 20)
    for load in (lambda: load_yolov8_weights(build_yolov8(2), str(path)),):
        with pytest.raises(TDFusionError) as info:
            load()
        msg = str(info.value)
        assert msg.startswith(f"{path}: not a readable") and "weights_only" not in msg and "\n" not in msg
