"""Synthetic infrared/visible scenes (tdfusion.synthetic) and ``tdfusion synth``.

The physical properties the generator promises are measured on its output (class
means and medians over the returned masks), and boxes are checked against the mask
itself: every box must be tight around pixels of its class, and every object pixel
must lie in a box of its class.
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import yaml
from PIL import Image as PILImage

from tdfusion.cli import main
from tdfusion.synthetic import DET_CLASSES, SEG_CLASSES, make_pair, write_dataset

SEG = {name: i for i, name in enumerate(SEG_CLASSES)}
DET_TO_SEG = {DET_CLASSES.index("person"): SEG["person"], DET_CLASSES.index("car"): SEG["car"]}
# Objects with fewer visible pixels than this get no box (documented in docs/fuse.md).
MIN_BOX_PIXELS = 20
N = 40  # scenes per property check


@pytest.fixture(scope="module")
def scenes():
    return [make_pair(0, i) for i in range(N)]


def _luma(rgb):
    return 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]


def test_class_lists():
    assert SEG_CLASSES == ("background", "road", "marking", "person", "car")
    assert DET_CLASSES == ("person", "car")


def test_types_shapes_and_ranges():
    p = make_pair(1, 2, size=(96, 160))
    assert p.ir.shape == (96, 160) and p.ir.dtype == np.float32
    assert p.vis.shape == (96, 160, 3) and p.vis.dtype == np.float32
    assert p.mask.shape == (96, 160) and p.mask.dtype == np.uint8
    for img in (p.ir, p.vis):
        assert img.min() >= 0.0 and img.max() <= 1.0
    assert set(np.unique(p.mask)) <= set(range(len(SEG_CLASSES)))
    assert p.boxes.ndim == 2 and p.boxes.shape[1] == 5


def test_deterministic_by_seed_and_index():
    first = make_pair(7, 3)
    make_pair(7, 2)  # generating other scenes in between must not matter
    again = make_pair(7, 3)
    for name in ("ir", "vis", "mask", "boxes"):
        np.testing.assert_array_equal(getattr(first, name), getattr(again, name))
    assert first.night == again.night


def test_different_seeds_and_indices_differ():
    base = make_pair(0, 0)
    for other in (make_pair(1, 0), make_pair(0, 1)):
        assert not np.array_equal(base.ir, other.ir)
        assert not np.array_equal(base.mask, other.mask)


def test_boxes_are_tight_around_their_class_and_cover_all_objects(scenes):
    n_boxes = 0
    for p in scenes:
        h, w = p.mask.shape
        covered = np.zeros((h, w), bool)
        for det_cls, x1, y1, x2, y2 in p.boxes:
            x1, y1, x2, y2 = (int(v) for v in (x1, y1, x2, y2))
            assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
            inside = p.mask[y1:y2, x1:x2] == DET_TO_SEG[int(det_cls)]
            # Tight: each edge row/column of the box touches a pixel of its class.
            assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
            covered[y1:y2, x1:x2] |= inside
            n_boxes += 1
        objects = p.mask >= SEG["person"]
        assert (objects & ~covered).sum() < MIN_BOX_PIXELS
    assert n_boxes >= N  # at least one person per scene


def _ring(region: np.ndarray, allowed: np.ndarray, width: int = 4) -> np.ndarray:
    """Pixels of ``allowed`` within ``width`` pixels of ``region`` (its local surroundings)."""
    grown = cv2.dilate(region.astype(np.uint8), np.ones((2 * width + 1, 2 * width + 1), np.uint8)).astype(bool)
    return grown & ~region & allowed


def test_people_are_warm_in_infrared(scenes):
    checked = 0
    for p in scenes:
        person, road = p.mask == SEG["person"], p.mask == SEG["road"]
        ring = _ring(person, road)
        if person.sum() >= MIN_BOX_PIXELS and ring.sum() >= 10:
            assert np.median(p.ir[person]) > np.median(p.ir[ring]) + 0.1
            checked += 1
    assert checked >= N // 2


def test_lane_markings_show_in_visible_only(scenes):
    vis_contrasts, ir_contrasts = [], []
    kernel = np.ones((3, 3), np.uint8)
    for p in scenes:
        # Inner marking pixels only: the IR blur mixes the marking border with neighbours;
        # compared with the road right around them (the IR clutter varies across the road).
        marking = cv2.erode((p.mask == SEG["marking"]).astype(np.uint8), kernel).astype(bool)
        ring = _ring(p.mask == SEG["marking"], p.mask == SEG["road"], 3)
        if marking.sum() < 10 or ring.sum() < 10:
            continue
        vis_contrast = abs(np.median(_luma(p.vis)[marking]) - np.median(_luma(p.vis)[ring]))
        ir_contrast = abs(np.median(p.ir[marking]) - np.median(p.ir[ring]))
        if not p.night:  # worn paint in a shadow is faint, but there
            assert vis_contrast > 0.03
        assert ir_contrast < 0.05  # a warm blob may lie next to a marking
        vis_contrasts.append(vis_contrast)
        ir_contrasts.append(ir_contrast)
    assert len(vis_contrasts) >= N // 2
    assert np.median(vis_contrasts) > 5 * np.median(ir_contrasts)


def test_infrared_has_warm_clutter_that_is_not_an_object(scenes):
    """Decoys: in most scenes with a person, some pixels of the road or the background are at
    least as warm as that person's median, so warmth alone does not mean 'person'."""
    with_decoys = with_people = 0
    for p in scenes:
        person = p.mask == SEG["person"]
        if person.sum() < MIN_BOX_PIXELS:
            continue
        with_people += 1
        warm = (p.ir >= np.median(p.ir[person])) & (p.mask < SEG["person"])
        with_decoys += warm.sum() >= 10
    assert with_people >= N // 2 and with_decoys >= with_people // 2


def test_some_people_are_camouflaged_in_the_visible_image(scenes):
    """By day about half of the people wear clothes of the road's brightness: only the
    infrared image separates them from the road."""
    camouflaged = day_people = 0
    for p in scenes:
        if p.night:
            continue
        person, road = p.mask == SEG["person"], p.mask == SEG["road"]
        n, labels = cv2.connectedComponents(person.astype(np.uint8))
        for k in range(1, n):
            one = labels == k
            ring = _ring(one, road)
            if one.sum() < MIN_BOX_PIXELS or ring.sum() < 10:
                continue
            day_people += 1
            vis_contrast = abs(np.median(_luma(p.vis)[one]) - np.median(_luma(p.vis)[ring]))
            ir_contrast = np.median(p.ir[one]) - np.median(p.ir[ring])
            camouflaged += vis_contrast < 0.06 and ir_contrast > 0.1
    # about half by design; clothes of a random colour match the road by chance in about a
    # fifth of the rest (measured: 30 of 52 with camouflage, 12 of 52 without)
    assert day_people >= 10 and camouflaged >= 0.4 * day_people


def test_night_visible_is_darker_than_day(scenes):
    day = [_luma(p.vis).mean() for p in scenes if not p.night]
    night = [_luma(p.vis).mean() for p in scenes if p.night]
    assert day and night
    assert max(night) < min(day)
    # The infrared image does not care about daylight.
    ir_day = np.mean([p.ir.mean() for p in scenes if not p.night])
    ir_night = np.mean([p.ir.mean() for p in scenes if p.night])
    assert abs(ir_day - ir_night) < 0.1


def test_night_probability_extremes():
    assert not any(make_pair(0, i, night_prob=0.0).night for i in range(8))
    assert all(make_pair(0, i, night_prob=1.0).night for i in range(8))


def _parse_yolo(path, h, w):
    rows = []
    for line in path.read_text().splitlines():
        cls, cx, cy, bw, bh = line.split()
        cx, cy, bw, bh = float(cx) * w, float(cy) * h, float(bw) * w, float(bh) * h
        rows.append((int(cls), cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2))
    return np.asarray(rows, np.float64).reshape(-1, 5)


def test_write_dataset_layout_and_labels(tmp_path):
    h, w = 64, 96
    root = write_dataset(tmp_path / "synth", n_train=4, n_test=3, seed=5, size=(h, w))
    assert root == tmp_path / "synth"
    meta = yaml.safe_load((root / "data.yaml").read_text())
    assert meta["nc"] == len(DET_CLASSES) and meta["names"] == dict(enumerate(DET_CLASSES))
    assert meta["seg_classes"] == list(SEG_CLASSES) and meta["size"] == [h, w]

    for split, n in (("train", 4), ("test", 3)):
        stems = sorted(p.stem for p in (root / split / "ir").iterdir())
        assert len(stems) == n
        for sub, ext in (("vi", ".png"), ("label", ".png"), ("labels", ".txt")):
            assert sorted(p.stem for p in (root / split / sub).iterdir()) == stems
            assert all(p.suffix == ext for p in (root / split / sub).iterdir())
        for stem in stems:
            with PILImage.open(root / split / "ir" / f"{stem}.png") as im:
                assert im.mode == "L" and im.size == (w, h)
            with PILImage.open(root / split / "vi" / f"{stem}.png") as im:
                assert im.mode == "RGB" and im.size == (w, h)
            mask = np.asarray(PILImage.open(root / split / "label" / f"{stem}.png"))
            boxes = _parse_yolo(root / split / "labels" / f"{stem}.txt", h, w)
            assert stem[-1] in "DN"
            covered = np.zeros((h, w), bool)
            for cls, x1, y1, x2, y2 in boxes:
                x1, y1, x2, y2 = (int(round(v)) for v in (x1, y1, x2, y2))
                inside = mask[y1:y2, x1:x2] == DET_TO_SEG[int(cls)]
                assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
                covered[y1:y2, x1:x2] |= inside
            assert ((mask >= SEG["person"]) & ~covered).sum() < MIN_BOX_PIXELS

    # The train scenes and the test scenes come from different streams.
    train0 = np.asarray(PILImage.open(next((root / "train" / "ir").iterdir())))
    test0 = np.asarray(PILImage.open(next((root / "test" / "ir").iterdir())))
    assert not np.array_equal(train0, test0)


def test_written_train_scene_matches_make_pair(tmp_path):
    root = write_dataset(tmp_path, n_train=1, n_test=0, seed=9, size=(48, 64))
    pair = make_pair(9, 0, (48, 64))
    stem = f"00000{'N' if pair.night else 'D'}"
    ir = np.asarray(PILImage.open(root / "train" / "ir" / f"{stem}.png"))
    assert np.abs(ir / 255.0 - pair.ir).max() <= 0.5 / 255 + 1e-6
    np.testing.assert_array_equal(np.asarray(PILImage.open(root / "train" / "label" / f"{stem}.png")), pair.mask)
    boxes = _parse_yolo(root / "train" / "labels" / f"{stem}.txt", 48, 64)
    np.testing.assert_allclose(boxes, pair.boxes, atol=1e-3)


def test_synth_command(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["synth", "--out", str(out), "--train", "2", "--test", "1", "--size", "32", "48",
                 "--seed", "3", "--night", "1"]) == 0
    assert len(list((out / "train" / "vi").iterdir())) == 2
    assert len(list((out / "test" / "ir").iterdir())) == 1
    assert all(p.stem.endswith("N") for p in (out / "train" / "ir").iterdir())
    with PILImage.open(next((out / "test" / "vi").iterdir())) as im:
        assert im.size == (48, 32)
    assert "2 train + 1 test" in capsys.readouterr().out
