"""Training sample sheets name their pairs (issue 24): every row of ``samples/epoch_<e>.png``
carries the pair's file stem in its label strip, after the first panel's label, in the
name colour, so that a row can be traced back to its images."""
from __future__ import annotations

import re

import cv2
import numpy as np
import pytest

from tdfusion.cli import main
from tdfusion.report import NAME_COLOUR, sample_sheet
from conftest import train_tiny_recon

LABEL = 26   # label strip height
GAP = 4


def _name_pixels(strip: np.ndarray) -> np.ndarray:
    """Where a uint8 RGB label strip is drawn in the name colour (anti-aliased on black)."""
    r, g, b = (strip[..., c].astype(int) for c in range(3))
    return (r > 100) & (b * 3 < r) & (g * 10 > r * 6)


def _row_strips(sheet: np.ndarray, rows: int, tile: int, panels: int, panel_w: int):
    """``[[strip of each tile] for each row]`` of a sample sheet."""
    return [[sheet[r * (LABEL + tile + GAP):r * (LABEL + tile + GAP) + LABEL,
                   c * (panel_w + GAP):c * (panel_w + GAP) + panel_w] for c in range(panels)]
            for r in range(rows)]


def _name_drawn(strip: np.ndarray, name: str) -> bool:
    """Whether ``strip`` shows exactly ``name`` after the label "A", at the labels' size."""
    font = cv2.FONT_HERSHEY_SIMPLEX
    x = 4 + cv2.getTextSize("A", font, 0.55, 1)[0][0] + 8
    expected = np.zeros_like(strip)
    cv2.putText(expected, name, (x, LABEL - 8), font, 0.55, NAME_COLOUR, 1, cv2.LINE_AA)
    return np.array_equal(strip[:, x:], expected[:, x:])


def _panels(seed: int, h: int, w: int):
    rng = np.random.default_rng(seed)
    return [(label, rng.random((h, w), dtype=np.float32)) for label in ("A", "B", "fused", "w_A")]


def test_each_sample_row_shows_its_pair_name():
    stems = ["FLIR_00012", "FLIR_00099"]
    sheet = sample_sheet([(stem, _panels(i, 96, 160)) for i, stem in enumerate(stems)])
    strips = _row_strips(sheet, 2, 96, 4, 160)
    font = cv2.FONT_HERSHEY_SIMPLEX
    for stem, row in zip(stems, strips):
        mask = _name_pixels(row[0])
        cols = np.flatnonzero(mask.any(axis=0))
        assert cols.size, f"no pair name on the row of {stem}"
        # The whole stem, at the labels' size, after the label "A".
        width = cv2.getTextSize(stem, font, 0.55, 1)[0][0]
        assert abs((cols[-1] - cols[0] + 1) - width) <= 3, (cols[0], cols[-1], width)
        assert cols[0] > cv2.getTextSize("A", font, 0.55, 1)[0][0] + 4
        assert not any(_name_pixels(s).any() for s in row[1:])   # the other panels: their labels only
        assert _name_drawn(row[0], stem)
    assert not np.array_equal(strips[0][0], strips[1][0])            # two names, two strips
    assert NAME_COLOUR == (255, 200, 40)


def test_a_narrow_row_keeps_the_end_of_its_name():
    """48-px panels: the name is drawn smaller and shortened from the left (``~0012``)."""
    sheet = sample_sheet([("FLIR_00012", _panels(0, 48, 48))])
    first = _row_strips(sheet, 1, 48, 4, 48)[0][0]
    cols = np.flatnonzero(_name_pixels(first).any(axis=0))
    assert cols.size and cols[-1] < 48 - 2




@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "run"
    return train_tiny_recon(out, (96, 160))


def test_training_samples_name_every_row(run):
    sheet = cv2.imread(str(run / "samples" / "epoch_001.png"))[:, :, ::-1]
    strips = _row_strips(sheet, 2, 96, 5, 160)   # A | B | fused | w_A | v_A
    for row in strips:
        assert _name_pixels(row[0]).any()
        assert not any(_name_pixels(s).any() for s in row[1:])
    assert not np.array_equal(strips[0][0], strips[1][0])
    # Each row names its pair: the stems of the report's sections, in the same order.
    page = (run / "report" / "index.html").read_text()
    stems = re.findall(r'<section id="([^"]+)">', page)
    assert len(stems) == 2
    for stem, row in zip(stems, strips):
        assert _name_drawn(row[0], stem), stem
