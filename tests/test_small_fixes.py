"""The small inconsistencies of issue 15 ("What users tripped over", item 9), each fixed."""
from __future__ import annotations

import io
import re

import cv2
import numpy as np
import pytest
from rich.console import Console

from tdfusion.cli import main
from tdfusion.data import build_dataset
from tdfusion.errors import TDFusionError
from tdfusion.evaluation.results import best_at_precision


def _pair_folders(root, split=None, names=("ir", "vi"), stems=("1", "2")):
    rng = np.random.default_rng(0)
    base = root / split if split else root
    for name in names:
        (base / name).mkdir(parents=True, exist_ok=True)
        for stem in stems:
            cv2.imwrite(str(base / name / f"{stem}.png"), rng.integers(0, 256, (48, 48), dtype=np.uint8))


def test_folder_options_take_either_spelling(tmp_path):
    _pair_folders(tmp_path, "train", ("IR", "VIS"))
    a = build_dataset("pairs", str(tmp_path), "train", dir_a="IR", dir_b="VIS")
    b = build_dataset("pairs", str(tmp_path), "train", a_dir="IR", b_dir="VIS")  # seg datasets' spelling
    assert a.pairs == b.pairs and len(a) == 2


def test_misspelt_option_names_the_closest(tmp_path):
    with pytest.raises(TDFusionError, match=r"has no option 'dir_aa'; did you mean 'dir_a'\?"):
        build_dataset("pairs", str(tmp_path), "train", dir_aa="IR")
    with pytest.raises(TDFusionError, match=r"unknown dataset 'msr'; did you mean 'msrs'\?"):
        build_dataset("msr", str(tmp_path), "train")


def test_data_check_checks_every_split_by_default(tmp_path, capsys):
    _pair_folders(tmp_path, "train")
    _pair_folders(tmp_path, "test", stems=("7",))
    assert main(["data", "check", "--dataset", "pairs", "--data-root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "pairs / train" in out and "pairs / test" in out
    assert "checked split(s): train, test (no other split: val)" in out


def test_data_check_reports_problems_in_the_test_split(tmp_path, capsys):
    _pair_folders(tmp_path, "train")
    _pair_folders(tmp_path, "test", stems=("7",))
    (tmp_path / "test" / "vi" / "7.png").write_bytes(b"broken")
    assert main(["data", "check", "--dataset", "pairs", "--data-root", str(tmp_path)]) == 2
    assert "7.png" in capsys.readouterr().err


def test_data_list_says_what_each_dataset_serves_and_lists_the_recipes(capsys):
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    datasets = out.split("recipes (")[0]
    rows = {line.split("│")[1].strip(): line for line in datasets.splitlines() if line.count("│") >= 4}
    assert "seg" in rows["msrs"].split("│")[2] and "det" in rows["m3fd"].split("│")[2]
    assert "a_dir" in rows["msrs"] and "dir_a" in rows["pairs"]
    for recipe in ("ivif", "mif", "mfif", "meif"):
        assert re.search(rf"│ {recipe}\s+│ recon\s+│ pairs \(dir_a: ", out), recipe


def test_metrics_allow_missing_scores_the_present_images(tmp_path, capsys):
    _pair_folders(tmp_path, names=("a", "b", "fused"), stems=("1", "2", "3"))
    (tmp_path / "fused" / "3.png").unlink()
    args = ["metrics", "--a", str(tmp_path / "a"), "--b", str(tmp_path / "b"), "--fused", str(tmp_path / "fused"),
            "--workers", "1", "--json", str(tmp_path / "m.json")]
    assert main(args) == 2
    assert "--allow-missing" in capsys.readouterr().err
    assert main(args + ["--allow-missing"]) == 0
    out = capsys.readouterr().out
    assert "note: fused: 1 fused image(s) missing, scored without them: 3" in out
    import json
    per_image = json.loads((tmp_path / "m.json").read_text())["methods"]["fused"]["per_image"]
    assert sorted(per_image) == ["1", "2"]


def test_fuse_help_and_docs_agree_on_max_memory_default(capsys):
    with pytest.raises(SystemExit):
        main(["fuse", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    from pathlib import Path
    docs = (Path(__file__).resolve().parents[1] / "docs" / "fuse.md").read_text()
    from tdfusion.nets.band_plan import DEFAULT_BAND_PIXELS

    stated = f"bands of about {round(DEFAULT_BAND_PIXELS, -3):,} pixels on CPU"  # what the code uses
    assert "no bound" not in text
    assert stated in text and stated in docs


def test_per_class_table_fits_80_columns():
    from tdfusion.evaluation.results import _print_per_class

    results = {name: {"per_class": {c: {"IoU": 0.81234, "Acc": 0.9} for c in ("road", "person", "car")}}
               for name in ("fused", "ir", "vis", "runs/other")}
    buf = io.StringIO()
    _print_per_class(Console(file=buf, width=80, force_terminal=False), results)
    text = buf.getvalue()
    assert "…" not in text and "0.8123" in text and "runs/other" in text
    assert max(len(line) for line in text.splitlines()) <= 80


@pytest.mark.parametrize("values, expected", [
    ([0.5, 0.6, 0.6], {1, 2}),            # tied for best: both marked
    ([0.5, None, 0.4], {0}),
    ([0.7, 0.7], set()),                  # all equal: no winner
])
def test_best_marks(values, expected):
    assert best_at_precision(values) == expected


def test_tie_at_the_fourth_decimal_is_not_best():
    assert best_at_precision([0.123401, 0.123449]) == set()   # both show 0.1234
    assert best_at_precision([0.1234, 0.1236]) == {1}
    assert best_at_precision([3.0, 2.0], lower=True) == {1}


@pytest.mark.parametrize("content", [b"these are not weights\n" * 20, b"PK\x03\x04 not a zip either",
                                     np.random.default_rng(0).bytes(4096)])  # torch: "retry with weights_only=False"
def test_text_renamed_pth_gets_no_unsafe_advice(tmp_path, content):
    """torch's message suggests weights_only=False (running the file): it must not reach users."""
    from tdfusion.checkpoint import load_checkpoint

    path = tmp_path / "model.pth"
    path.write_bytes(content)
    with pytest.raises(TDFusionError) as info:
        load_checkpoint(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: not a readable checkpoint") and "\n" not in msg
    assert "weights_only" not in msg and "trusted source" not in msg
