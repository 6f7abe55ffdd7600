"""The README's "Adding a task" example runs as written (with a tiny schedule)."""
from __future__ import annotations

import json
import re
import types

from tdfusion.cli import main
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_adding_a_task_example_trains(tmp_path):
    text = (REPO / "README.md").read_text()
    section = text.split("## Adding a task", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    module = types.ModuleType("mytask")
    exec(compile(code, "README.md:mytask", "exec"), module.__dict__)
    tiny = ["fusion.dim=4", "fusion.num_blocks=1", "fusion.heads=2", "lossgen.dim=4", "lossgen.num_blocks=1",
            "lossgen.heads=2", "dataset.options.target=none", "dataset.options.length=4",
            "dataset.options.size=[40,40]", "data.crop_size=32", "data.task_size=[32,32]", "train.epochs=1",
            "train.meta_steps=2", "train.fusion_steps=2", "run.samples=1", "run.eval_limit=2", "train.device=cpu"]
    out = tmp_path / "run"
    assert main(["train", "--task", "brightness", "--dataset", "synthetic", "--out", str(out), *tiny]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["eval"]["mae"] >= 0.0
    assert len((out / "train_log.jsonl").read_text().splitlines()) == 4
