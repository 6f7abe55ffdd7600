"""The README's "Adding a task" example runs as written (with a tiny schedule)."""
from __future__ import annotations

import json
import re

from tdfusion.cli import main
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_adding_a_task_example_trains(tmp_path, monkeypatch):
    """The module and the config of the section, as files; the config's ``imports:`` loads
    the module (no launcher)."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Adding a task", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    config = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    (tmp_path / "mytask.py").write_text(code)
    (tmp_path / "brightness.yaml").write_text(config.replace("configs/base.yaml", str(REPO / "configs" / "base.yaml")))
    monkeypatch.syspath_prepend(str(tmp_path))
    tiny = ["fusion.dim=4", "fusion.num_blocks=1", "fusion.heads=2", "lossgen.dim=4", "lossgen.num_blocks=1",
            "lossgen.heads=2", "dataset.options.target=none", "dataset.options.length=4",
            "dataset.options.size=[40,40]", "data.crop_size=32", "data.task_size=[32,32]", "train.epochs=1",
            "train.meta_steps=2", "train.fusion_steps=2", "run.samples=1", "run.eval_limit=2", "train.device=cpu"]
    out = tmp_path / "run"
    assert main(["train", "--config", str(tmp_path / "brightness.yaml"), "--out", str(out), *tiny]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["eval"]["mae"] >= 0.0
    assert len((out / "train_log.jsonl").read_text().splitlines()) == 4
