"""``tdfusion metrics`` and ``tdfusion report``: output shapes, several methods, error paths
(exit 2, one ``error:`` line naming the file, nothing written) and the report folder."""
from __future__ import annotations

import csv
import json
from html.parser import HTMLParser
from pathlib import Path

import cv2
import numpy as np
import pytest

from tdfusion.cli import main
from tdfusion.metrics import METRIC_NAMES, evaluate_files

STEMS = ("s01", "s02")


def _write(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if pixels.ndim == 3:
        pixels = cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)
    assert cv2.imwrite(str(path), pixels)
    return path


@pytest.fixture
def folders(tmp_path):
    """Sources ir/ (grey) and vi/ (colour, .jpg), and two methods' fused folders."""
    rng = np.random.default_rng(0)
    for i, stem in enumerate(STEMS):
        base = cv2.GaussianBlur(rng.uniform(0, 255, (48, 56)), (0, 0), 1.5)
        ir = np.clip(base + 30 * i, 0, 255).astype(np.uint8)
        vi = np.clip(np.stack([base[:, ::-1], base, base * 0.8], 2), 0, 255).astype(np.uint8)
        _write(tmp_path / "ir" / f"{stem}.png", ir)
        _write(tmp_path / "vi" / f"{stem}.jpg", vi)
        _write(tmp_path / "mean" / f"{stem}.png", ((ir.astype(float) + vi.mean(2)) / 2).astype(np.uint8))
        _write(tmp_path / "maxrgb" / f"{stem}.png", np.maximum(vi, ir[:, :, None]))  # colour result
    return tmp_path


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _metrics(folders, *extra):
    return ("metrics", "--a", folders / "ir", "--b", folders / "vi", "--quiet", "--workers", "1", *extra)


# --------------------------------------------------------------------------- outputs

def test_json_shape_and_values(folders, capsys):
    out_json = folders / "out" / "m.json"
    code, _, err = _run(capsys, *_metrics(folders, "--fused", folders / "mean", folders / "maxrgb",
                                          "--json", out_json))
    assert code == 0, err
    doc = json.loads(out_json.read_text())
    assert list(doc) == ["methods"]
    assert list(doc["methods"]) == ["mean", "maxrgb"]  # default names: the folder names
    for name, block in doc["methods"].items():
        assert list(block) == ["mean", "per_image"]
        assert list(block["per_image"]) == list(STEMS)
        for stem, values in block["per_image"].items():
            assert list(values) == list(METRIC_NAMES)
            direct = evaluate_files(folders / name / f"{stem}.png", folders / "ir" / f"{stem}.png",
                                    folders / "vi" / f"{stem}.jpg")
            assert values == pytest.approx(direct, rel=1e-12)
        assert list(block["mean"]) == list(METRIC_NAMES)
        for metric in METRIC_NAMES:
            assert block["mean"][metric] == pytest.approx(
                np.mean([block["per_image"][s][metric] for s in STEMS]), rel=1e-12)


def test_csv_matches_json_and_names_override(folders, capsys):
    out_json, out_csv = folders / "m.json", folders / "m.csv"
    code, _, err = _run(capsys, *_metrics(folders, "--fused", folders / "mean", folders / "maxrgb",
                                          "--names", "avg", "max", "--json", out_json, "--csv", out_csv))
    assert code == 0, err
    doc = json.loads(out_json.read_text())["methods"]
    with out_csv.open() as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["method", "kind", "image", *METRIC_NAMES]
    assert len(rows) == 2 * (len(STEMS) + 1)
    for row in rows:
        block = doc[row["method"]]
        values = block["mean"] if row["kind"] == "mean" else block["per_image"][row["image"]]
        assert row["kind"] in ("image", "mean")
        for metric in METRIC_NAMES:
            assert float(row[metric]) == values[metric]  # repr round-trips exactly


def test_vif_sum_doubles_vif(folders, capsys):
    a, b = folders / "a.json", folders / "b.json"
    assert _run(capsys, *_metrics(folders, "--fused", folders / "mean", "--json", a))[0] == 0
    assert _run(capsys, *_metrics(folders, "--fused", folders / "mean", "--json", b, "--vif-sum"))[0] == 0
    va = json.loads(a.read_text())["methods"]["mean"]["per_image"]
    vb = json.loads(b.read_text())["methods"]["mean"]["per_image"]
    for stem in STEMS:
        assert vb[stem]["VIF"] == pytest.approx(2 * va[stem]["VIF"], rel=1e-12)
        assert vb[stem]["SSIM"] == va[stem]["SSIM"]


def test_table_lists_methods_and_highlights(folders, capsys):
    code, out, _ = _run(capsys, "metrics", "--a", folders / "ir", "--b", folders / "vi", "--workers", "1",
                        "--fused", folders / "mean", folders / "maxrgb")
    assert code == 0
    assert "mean" in out and "maxrgb" in out and all(m in out for m in METRIC_NAMES)


def test_table_highlights_the_best_mean_per_column():
    from tdfusion.commands.metrics import results_table

    def block(v):
        return {"mean": {m: v for m in METRIC_NAMES}, "per_image": {"x": {m: v for m in METRIC_NAMES}}}

    means = {"low": block(0.25), "high": block(0.5)}
    means["low"]["mean"]["SSIM"] = 0.9  # low wins this column only
    table = results_table(means)
    for column in table.columns[2:]:
        cells = list(column.cells)
        winner = 0 if column.header == "SSIM" else 1
        assert cells[winner].startswith("[bold green]") and not cells[1 - winner].startswith("[bold"), column.header


def test_single_files(folders, capsys):
    out_json = folders / "one.json"
    code, _, err = _run(capsys, "metrics", "--a", folders / "ir" / "s01.png", "--b", folders / "vi" / "s01.jpg",
                        "--fused", folders / "mean" / "s01.png", "--json", out_json, "--quiet")
    assert code == 0, err
    assert list(json.loads(out_json.read_text())["methods"]["s01"]["per_image"]) == ["s01"]


def test_process_pool_gives_the_same_numbers(folders, capsys):
    one, two = folders / "w1.json", folders / "w2.json"
    assert _run(capsys, *_metrics(folders, "--fused", folders / "mean", "--json", one))[0] == 0
    code, _, err = _run(capsys, "metrics", "--a", folders / "ir", "--b", folders / "vi", "--quiet",
                        "--workers", "2", "--fused", folders / "mean", "--json", two)
    assert code == 0, err
    assert json.loads(one.read_text()) == json.loads(two.read_text())


# --------------------------------------------------------------------------- errors

def _assert_clean_failure(code, err, must_name, *never_written):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert str(must_name) in lines[0], (must_name, lines[0])
    for p in never_written:
        assert not p.exists(), p
        assert not list(p.parent.glob(f".{p.name}*")), "temporary file left behind"


def test_missing_fused_partner(folders, capsys):
    (folders / "mean" / "s02.png").unlink()
    out_json, out_csv = folders / "res" / "m.json", folders / "res" / "m.csv"
    code, _, err = _run(capsys, *_metrics(folders, "--fused", folders / "mean", "--json", out_json, "--csv", out_csv))
    _assert_clean_failure(code, err, folders / "mean", out_json, out_csv)
    assert "s02" in err


def test_missing_source_partner(folders, capsys):
    (folders / "vi" / "s01.jpg").unlink()
    out_json = folders / "m.json"
    code, _, err = _run(capsys, *_metrics(folders, "--fused", folders / "mean", "--json", out_json))
    _assert_clean_failure(code, err, folders / "ir" / "s01.png", out_json)


def test_fused_image_without_sources_is_ignored_and_said(folders, capsys):
    # A fused folder may hold more than the sources name (tests/test_metrics_subset.py): the
    # named subset is scored, and the extra image is counted on one line, not scored.
    _write(folders / "mean" / "s99.png", np.zeros((48, 56), np.uint8))
    code, out, err = _run(capsys, *_metrics(folders, "--fused", folders / "mean", "--json", folders / "m.json"))
    assert code == 0, err
    assert "s99" not in (folders / "m.json").read_text()
    assert "ignored" in out + err


def test_size_mismatch(folders, capsys):
    bad = _write(folders / "mean" / "s02.png", np.zeros((40, 56), np.uint8))
    out_json = folders / "m.json"
    code, _, err = _run(capsys, *_metrics(folders, "--fused", folders / "mean", "--json", out_json))
    _assert_clean_failure(code, err, bad, out_json)
    assert "56x40" in err


def test_unreadable_file(folders, capsys):
    bad = folders / "mean" / "s01.png"
    bad.write_bytes(b"this is not an image")
    out_json = folders / "m.json"
    code, _, err = _run(capsys, *_metrics(folders, "--fused", folders / "mean", "--json", out_json))
    _assert_clean_failure(code, err, bad, out_json)


def test_truncated_file_fails_inside_a_worker(folders, capsys):
    """The header is fine (passes the up-front size check), the pixels are not: the error
    comes back from a worker process and still stops the run cleanly."""
    bad = folders / "maxrgb" / "s02.png"
    bad.write_bytes(bad.read_bytes()[:120])
    out_json, out_csv = folders / "m.json", folders / "m.csv"
    code, _, err = _run(capsys, "metrics", "--a", folders / "ir", "--b", folders / "vi", "--quiet",
                        "--workers", "2", "--fused", folders / "mean", folders / "maxrgb",
                        "--json", out_json, "--csv", out_csv)
    _assert_clean_failure(code, err, bad, out_json, out_csv)


def test_duplicate_method_names_and_bad_names_count(folders, capsys):
    code, _, err = _run(capsys, *_metrics(folders, "--fused", folders / "mean", folders / "maxrgb",
                                          "--names", "x", "x"))
    _assert_clean_failure(code, err, folders / "maxrgb")
    code, _, err = _run(capsys, *_metrics(folders, "--fused", folders / "mean", "--names", "x", "y"))
    assert code == 2 and err.startswith("error: --names")


def test_image_too_small_for_vif(tmp_path, capsys):
    for d in ("a", "b", "f"):
        _write(tmp_path / d / "x.png", np.full((20, 20), 9, np.uint8))
    code, _, err = _run(capsys, "metrics", "--a", tmp_path / "a", "--b", tmp_path / "b",
                        "--fused", tmp_path / "f", "--quiet", "--workers", "1")
    _assert_clean_failure(code, err, tmp_path / "a" / "x.png")


# --------------------------------------------------------------------------- shared data

def test_cli_reproduces_reference_values(shared_data, tmp_path, capsys):
    ref = json.loads((shared_data / "refusion" / "reference_metrics.json").read_text())["MFIF"]
    out_json = tmp_path / "m.json"
    code, _, err = _run(capsys, "metrics", "--a", shared_data / ref["a"], "--b", shared_data / ref["b"],
                        "--fused", shared_data / ref["fused"], "--names", "refusion", "--quiet",
                        "--workers", "1", "--json", out_json)
    assert code == 0, err
    got = json.loads(out_json.read_text())["methods"]["refusion"]
    for stem, values in ref["per_image"].items():
        for metric, v in values.items():
            assert abs(got["per_image"][stem][metric] - v) / abs(v) < 1e-3, (stem, metric)


# --------------------------------------------------------------------------- report

class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for key, value in attrs:
            if key in ("src", "href") and value:
                self.links.append(value)


def _report(folders, out, *extra):
    return ("report", "--a", folders / "ir", "--b", folders / "vi", "--fused", folders / "mean",
            folders / "maxrgb", "--out", out, "--quiet", "--workers", "1", "--height", "64", *extra)


def test_report_is_self_contained(folders, capsys):
    out = folders / "rep"
    code, _, err = _run(capsys, *_report(folders, out, "--crop", "8,8,20,16"))
    assert code == 0, err
    parser = _Links()
    parser.feed((out / "index.html").read_text())
    assert "table" in parser.tags and "img" in parser.tags
    assert parser.links
    for link in parser.links:
        assert "://" not in link and not link.startswith("/") and ".." not in link, link
        assert (out / link).resolve().is_file(), link
        assert (out / link).resolve().is_relative_to(out.resolve())
    assert sorted(p.name for p in (out / "sheets").iterdir()) == [f"{s}.jpg" for s in STEMS]
    assert sorted(p.name for p in (out / "crops").iterdir()) == [f"{s}.png" for s in STEMS]
    sheet = cv2.imread(str(out / "sheets" / "s01.jpg"))
    assert sheet.shape[0] == 64 + 26  # one row: panel height + label strip
    doc = json.loads((out / "metrics.json").read_text())
    assert list(doc["methods"]) == ["mean", "maxrgb"]
    html_text = (out / "index.html").read_text()
    assert f'{doc["methods"]["mean"]["per_image"]["s01"]["SSIM"]:.4f}' in html_text
    assert not [p for p in folders.iterdir() if p.name.startswith(".rep.")], "temporary folder left behind"


def test_report_gets_the_modes_of_ordinary_files(folders, capsys, tmp_path):
    (tmp_path / "ref_dir").mkdir()  # the reference: what mkdir/open give under this umask
    (tmp_path / "ref_file").write_text("x")
    out = folders / "rep_modes"
    code, _, err = _run(capsys, *_report(folders, out))
    assert code == 0, err
    mode = lambda p: p.stat().st_mode & 0o7777  # noqa: E731
    assert mode(out) == mode(out / "sheets") == mode(tmp_path / "ref_dir")
    assert {mode(p) for p in out.rglob("*") if p.is_file()} == {mode(tmp_path / "ref_file")}


def test_report_replaces_previous_report_only(folders, capsys):
    out = folders / "rep"
    assert _run(capsys, *_report(folders, out, "--no-metrics"))[0] == 0
    assert not (out / "metrics.json").exists()
    (out / "stale.txt").write_text("old")
    assert _run(capsys, *_report(folders, out))[0] == 0
    assert not (out / "stale.txt").exists() and (out / "metrics.json").is_file()

    other = folders / "precious"
    other.mkdir()
    (other / "thesis.tex").write_text("keep me")
    code, _, err = _run(capsys, *_report(folders, other))
    _assert_clean_failure(code, err, other)
    assert [p.name for p in other.iterdir()] == ["thesis.tex"]


def test_report_failure_leaves_nothing(folders, capsys, monkeypatch):
    import tdfusion.report as report_mod

    calls = {"n": 0}
    real = report_mod.contact_sheet

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(report_mod, "contact_sheet", failing)
    out = folders / "rep"
    code, _, _ = _run(capsys, *_report(folders, out))
    assert code == 130
    assert not out.exists()
    assert not [p for p in folders.iterdir() if p.name.startswith(".rep.")]


def test_report_with_loss_generator_weight_maps(folders, capsys):
    from tdfusion.checkpoint import module_record, save_checkpoint
    from tdfusion.nets.lossgen import LossGenerator

    net = LossGenerator(dim=8, num_blocks=1, heads=2, pairs=2)
    ckpt = folders / "g.pt"
    save_checkpoint({"lossgen": module_record("lossgen", net)}, ckpt)
    out = folders / "rep"
    code, _, err = _run(capsys, *_report(folders, out, "--checkpoint", ckpt, "--device", "cpu",
                                         "--no-metrics", "--columns", "10"))
    assert code == 0, err
    without = folders / "rep2"
    assert _run(capsys, *_report(folders, without, "--no-metrics", "--columns", "10"))[0] == 0
    w_with = cv2.imread(str(out / "sheets" / "s01.jpg")).shape[1]
    w_without = cv2.imread(str(without / "sheets" / "s01.jpg")).shape[1]
    panel = round(56 * 64 / 48)
    assert w_with - w_without == 2 * (panel + 4)  # two more panels: w_A and v_A maps

    no_g = folders / "fusion_only.pt"
    from tdfusion.nets import create_model
    save_checkpoint({"fusion": module_record("fusion", create_model("fusion", dim=8, num_blocks=1, heads=2))}, no_g)
    code, _, err = _run(capsys, *_report(folders, folders / "rep3", "--checkpoint", no_g, "--device", "cpu"))
    _assert_clean_failure(code, err, no_g, folders / "rep3")
