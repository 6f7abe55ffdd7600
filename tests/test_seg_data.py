"""Segmentation datasets (MSRS, FMB, generic folders) and ``tdfusion data check``.

Fixture folders are written in ``tmp_path`` laid out exactly like the published
datasets; images go through OpenCV, labels through PIL, and expectations are computed
from the arrays written, not by the loaders under test.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from PIL import Image

from tdfusion.cli import main
from tdfusion.data import build_dataset, eval_view
from tdfusion.data.seg import FMB_CLASSES, MSRS_CLASSES, read_label
from tdfusion.errors import TDFusionError
from tdfusion.synthetic import SEG_CLASSES, make_pair, write_dataset

REPO = Path(__file__).resolve().parents[1]


def _write_pair(base: Path, dirs: tuple[str, str, str], stem: str, mask: np.ndarray, rng: np.random.Generator,
                ext: str = ".png") -> None:
    h, w = mask.shape
    for d in dirs:
        (base / d).mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(base / dirs[0] / f"{stem}{ext}"), rng.integers(0, 256, (h, w), dtype=np.uint8))
    cv2.imwrite(str(base / dirs[1] / f"{stem}{ext}"), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    Image.fromarray(mask.astype(np.uint8), mode="L").save(base / dirs[2] / f"{stem}.png")


def _make_layout(root: Path, split: str, dirs: tuple[str, str, str], n: int, num_classes: int,
                 size=(24, 32), seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    masks = {}
    for i in range(n):
        stem = f"{i:05d}{'DN'[i % 2]}"
        mask = rng.integers(0, num_classes, size)
        _write_pair(root / split, dirs, stem, mask, rng)
        masks[stem] = mask
    return masks


MSRS_DIRS = ("ir", "vi", "Segmentation_labels")
FMB_DIRS = ("Infrared", "Visible", "Label")


# -- layouts that load --------------------------------------------------------------------
@pytest.mark.parametrize("label_dir", ["Segmentation_labels", "Label", "label"])
def test_msrs_layout_and_label_variants(tmp_path, label_dir):
    masks = _make_layout(tmp_path, "train", ("ir", "vi", label_dir), 3, len(MSRS_CLASSES))
    _make_layout(tmp_path, "test", ("ir", "vi", label_dir), 2, len(MSRS_CLASSES), seed=1)
    ds = build_dataset("msrs", str(tmp_path), "train")
    assert ds.target_kind == "mask" and list(ds.classes) == list(MSRS_CLASSES) and len(ds) == 3
    assert ds.stems == sorted(masks)
    for i, stem in enumerate(ds.stems):
        s = ds[i]
        np.testing.assert_array_equal(s.target["mask"], masks[stem])
        ir = cv2.imread(str(tmp_path / "train" / "ir" / f"{stem}.png"), cv2.IMREAD_GRAYSCALE)
        np.testing.assert_allclose(s.a, ir / 255.0, atol=1e-6)
    assert len(build_dataset("msrs", str(tmp_path), "test")) == 2


def test_fmb_layout(tmp_path):
    masks = _make_layout(tmp_path, "test", FMB_DIRS, 2, len(FMB_CLASSES))
    ds = build_dataset("fmb", str(tmp_path), "test")
    assert len(ds.classes) == 15 and ds.classes[0] == "unlabeled"
    for i, stem in enumerate(ds.stems):
        np.testing.assert_array_equal(ds[i].target["mask"], masks[stem])


def test_seg_folder_reads_synthetic_writer_output(tmp_path):
    """``tdfusion synth`` output is a valid generic layout; masks match the generator's."""
    write_dataset(tmp_path, n_train=3, n_test=2, seed=5, size=(40, 56))
    ds = build_dataset("seg_folder", str(tmp_path), "train")
    assert list(ds.classes) == list(SEG_CLASSES)
    for i in range(3):
        expected = make_pair(5, i, (40, 56)).mask
        np.testing.assert_array_equal(ds[i].target["mask"], expected)


def test_seg_folder_descriptor_and_options(tmp_path):
    masks = _make_layout(tmp_path / "data", "val", ("thermal", "rgb", "masks"), 2, 3)
    desc = tmp_path / "my.yaml"
    desc.write_text(yaml.safe_dump({"classes": {0: "bg", 1: "road", 2: "car"},
                                    "dirs": {"a": "thermal", "b": "rgb", "label": "masks"}, "ignore_index": 255}))
    ds = build_dataset("seg_folder", str(tmp_path / "data"), "val", descriptor=str(desc))
    assert ds.classes == ["bg", "road", "car"] and len(ds) == 2
    np.testing.assert_array_equal(ds[0].target["mask"], masks[ds.stems[0]])
    ds = build_dataset("seg_folder", str(tmp_path / "data"), "val", classes=["x", "y", "z"],
                       a_dir="thermal", b_dir="rgb", label_dir="masks")
    assert ds.classes == ["x", "y", "z"]


def test_shipped_descriptors_agree_with_the_code():
    for name, classes in (("msrs", MSRS_CLASSES), ("fmb", FMB_CLASSES)):
        desc = yaml.safe_load((REPO / "datasets" / f"{name}.yaml").read_text())
        assert desc["classes"] == list(classes), name
        assert desc["num_classes"] == len(classes)
    generic = yaml.safe_load((REPO / "datasets" / "seg_folder.yaml").read_text())
    assert set(generic["dirs"]) == {"a", "b", "label"} and generic["classes"]


def test_seg_folder_descriptor_template_is_usable(tmp_path):
    """``datasets/seg_folder.yaml`` works as a descriptor for a folder of its layout."""
    generic = yaml.safe_load((REPO / "datasets" / "seg_folder.yaml").read_text())
    masks = _make_layout(tmp_path, "train", (generic["dirs"]["a"], generic["dirs"]["b"], generic["dirs"]["label"]),
                         2, len(generic["classes"]))
    ds = build_dataset("seg_folder", str(tmp_path), "train", descriptor=str(REPO / "datasets" / "seg_folder.yaml"))
    assert len(ds) == len(masks) and len(ds.classes) == len(generic["classes"])


def test_ignore_value_is_allowed(tmp_path):
    _make_layout(tmp_path, "train", MSRS_DIRS, 1, 9)
    label = next((tmp_path / "train" / "Segmentation_labels").iterdir())
    mask = np.asarray(Image.open(label)).copy()
    mask[:4] = 255
    Image.fromarray(mask, mode="L").save(label)
    sample = build_dataset("msrs", str(tmp_path), "train")[0]
    assert (sample.target["mask"][:4] == 255).all()


def test_palette_and_16bit_labels_read_as_class_ids(tmp_path):
    ids = np.arange(12, dtype=np.uint8).reshape(3, 4)
    pal = Image.fromarray(ids, mode="P")
    pal.putpalette([v for i in range(256) for v in ((i * 37) % 256, (i * 91) % 256, (i * 53) % 256)])
    pal.save(tmp_path / "p.png")
    np.testing.assert_array_equal(read_label(tmp_path / "p.png"), ids)
    cv2.imwrite(str(tmp_path / "u16.png"), ids.astype(np.uint16) * 1000)
    np.testing.assert_array_equal(read_label(tmp_path / "u16.png"), ids.astype(np.int64) * 1000)


def test_real_msrs_images_at_full_size(shared_data, tmp_path):
    """The real 640x480 MSRS pairs laid out as MSRS, with made-up masks from the infrared image."""
    src = shared_data / "msrs_det" / "test"
    stems = sorted(p.stem for p in (src / "ir").glob("*.png"))[:2]
    for stem in stems:
        for d in ("ir", "vi"):
            (tmp_path / "test" / d).mkdir(parents=True, exist_ok=True)
            shutil.copy(src / d / f"{stem}.png", tmp_path / "test" / d / f"{stem}.png")
        ir = cv2.imread(str(src / "ir" / f"{stem}.png"), cv2.IMREAD_GRAYSCALE)
        (tmp_path / "test" / "Segmentation_labels").mkdir(exist_ok=True)
        Image.fromarray((ir // 29).astype(np.uint8), mode="L").save(tmp_path / "test" / "Segmentation_labels" / f"{stem}.png")
    ds = build_dataset("msrs", str(tmp_path), "test")
    assert ds.stems == stems
    for i, stem in enumerate(stems):
        s = ds[i]
        ir = cv2.imread(str(src / "ir" / f"{stem}.png"), cv2.IMREAD_GRAYSCALE)
        assert s.a.shape == s.b.shape == s.target["mask"].shape == (480, 640)
        np.testing.assert_array_equal(s.target["mask"], ir // 29)
        # The paper's MSRS task size: images resized for the network, labels kept at 640x480.
        view = eval_view(s, (240, 320))
        assert view["a"].shape == (1, 240, 320)
        np.testing.assert_array_equal(view["mask"].numpy(), ir // 29)


# -- validation errors ----------------------------------------------------------------------
def _msrs(tmp_path, n=2, classes=9):
    return _make_layout(tmp_path, "train", MSRS_DIRS, n, classes)


def test_missing_label_names_the_image(tmp_path):
    masks = _msrs(tmp_path)
    stem = sorted(masks)[1]
    (tmp_path / "train" / "Segmentation_labels" / f"{stem}.png").unlink()
    with pytest.raises(TDFusionError, match=rf"ir/{stem}\.png: no label named {stem}\.\*"):
        build_dataset("msrs", str(tmp_path), "train")


def test_missing_partner_names_the_image(tmp_path):
    masks = _msrs(tmp_path)
    stem = sorted(masks)[0]
    (tmp_path / "train" / "vi" / f"{stem}.png").unlink()
    with pytest.raises(TDFusionError, match=rf"ir/{stem}\.png: no partner"):
        build_dataset("msrs", str(tmp_path), "train")


def test_label_without_pair(tmp_path):
    _msrs(tmp_path)
    Image.fromarray(np.zeros((24, 32), np.uint8)).save(tmp_path / "train" / "Segmentation_labels" / "99999D.png")
    with pytest.raises(TDFusionError, match=r"99999D\.png: label without an image pair"):
        build_dataset("msrs", str(tmp_path), "train")


@pytest.mark.parametrize("which", ["vi", "Segmentation_labels"])
def test_size_mismatch_names_the_file(tmp_path, which):
    masks = _msrs(tmp_path)
    stem = sorted(masks)[1]
    path = tmp_path / "train" / which / f"{stem}.png"
    Image.fromarray(np.zeros((24, 30), np.uint8)).save(path)
    with pytest.raises(TDFusionError, match=rf"{which}/{stem}\.png: size 30x24 differs from .*ir/{stem}\.png \(32x24\)"):
        build_dataset("msrs", str(tmp_path), "train")


@pytest.mark.parametrize("layout,dirs,k", [("msrs", MSRS_DIRS, 9), ("fmb", FMB_DIRS, 15)])
def test_out_of_range_label_value(tmp_path, layout, dirs, k):
    masks = _make_layout(tmp_path, "train", dirs, 2, k)
    stem = sorted(masks)[0]
    path = tmp_path / "train" / dirs[2] / f"{stem}.png"
    mask = masks[stem].astype(np.uint8)
    mask[3, 5] = k          # one past the last class
    mask[0, 0] = 200
    Image.fromarray(mask, mode="L").save(path)
    ds = build_dataset(layout, str(tmp_path), "train")
    with pytest.raises(TDFusionError, match=rf"{dirs[2]}/{stem}\.png: label value\(s\) {k}, 200 outside the class "
                                            rf"range 0\.\.{k - 1} or 255"):
        ds[ds.stems.index(stem)]


def test_out_of_range_in_generic_layout(tmp_path):
    write_dataset(tmp_path, n_train=2, n_test=0, size=(32, 32))
    label = sorted((tmp_path / "train" / "label").iterdir())[1]
    mask = np.asarray(Image.open(label)).copy()
    mask[0, 0] = 7
    Image.fromarray(mask, mode="L").save(label)
    ds = build_dataset("seg_folder", str(tmp_path), "train")
    ds[0]
    with pytest.raises(TDFusionError, match=rf"{label.name}: label value\(s\) 7 outside the class range 0\.\.4"):
        ds[1]


def test_colour_label_rejected(tmp_path):
    masks = _msrs(tmp_path, n=1)
    stem = next(iter(masks))
    rgb = np.zeros((24, 32, 3), np.uint8)
    rgb[..., 0] = 64
    Image.fromarray(rgb, mode="RGB").save(tmp_path / "train" / "Segmentation_labels" / f"{stem}.png")
    ds = build_dataset("msrs", str(tmp_path), "train")
    with pytest.raises(TDFusionError, match=r"colour label image"):
        ds[0]


def test_layout_errors(tmp_path):
    with pytest.raises(TDFusionError, match="needs --data-root"):
        build_dataset("fmb", None, "train")
    _msrs(tmp_path)
    with pytest.raises(TDFusionError, match=r"test: no such split folder .* has: train"):
        build_dataset("msrs", str(tmp_path), "test")
    shutil.rmtree(tmp_path / "train" / "Segmentation_labels")
    with pytest.raises(TDFusionError, match=r"no label folder \(looked for Segmentation_labels/, Label/, label/\)"):
        build_dataset("msrs", str(tmp_path), "train")
    with pytest.raises(TDFusionError, match="seg_folder needs class names"):
        build_dataset("seg_folder", str(tmp_path), "train")


# -- tdfusion data check --------------------------------------------------------------------
def _histogram_from_files(label_dir: Path, k: int) -> np.ndarray:
    counts = np.zeros(k, np.int64)
    for p in sorted(label_dir.iterdir()):
        m = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        for c in range(k):
            counts[c] += int((m == c).sum())
    return counts


def test_data_check_prints_pairs_sizes_and_histogram(tmp_path, capsys):
    _make_layout(tmp_path, "test", FMB_DIRS, 3, 15)
    rc = main(["data", "check", "--dataset", "fmb", "--data-root", str(tmp_path), "--split", "test"])
    out = capsys.readouterr().out
    assert rc == 0
    assert re.search(r"pairs\s*│\s*3\b", out)
    assert "32x24 x3" in out
    counts = _histogram_from_files(tmp_path / "test" / "Label", 15)
    for c, name in enumerate(FMB_CLASSES):
        assert re.search(rf"│\s*{c} │ {re.escape(name)}\s*│\s*{counts[c]} │", out), name
    assert "no problems" in out


def test_data_check_reports_bad_labels_and_exits_2(tmp_path, capsys):
    masks = _msrs(tmp_path, n=3)
    bad = sorted(masks)[2]
    path = tmp_path / "train" / "Segmentation_labels" / f"{bad}.png"
    mask = masks[bad].astype(np.uint8)
    mask[1, 1] = 12
    Image.fromarray(mask, mode="L").save(path)
    rc = main(["data", "check", "--dataset", "msrs", "--data-root", str(tmp_path)])
    captured = capsys.readouterr()
    assert rc == 2
    lines = [ln for ln in captured.err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and f"{bad}.png: label value(s) 12 outside" in lines[0]
    assert re.search(r"readable\s*│\s*2\b", captured.out)


def test_data_check_layout_error_exits_2(tmp_path, capsys):
    rc = main(["data", "check", "--dataset", "msrs", "--data-root", str(tmp_path / "nowhere")])
    assert rc == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'nowhere'}: no such folder"
    rc = main(["data", "check", "--dataset", "msrs", "--data-root", str(tmp_path), "--option", "colour=red"])
    assert rc == 2 and "has no option 'colour'" in capsys.readouterr().err
    rc = main(["data", "check", "--dataset", "nosuch"])
    assert rc == 2 and "unknown dataset 'nosuch'" in capsys.readouterr().err


def test_data_check_counts_boxes_for_detection_datasets(shared_data, capsys):
    """Generic over target_kind: box counts equal those documented in shared/data/README.md."""
    rc = main(["data", "check", "--dataset", "msrs_det", "--data-root", str(shared_data / "msrs_det"),
               "--split", "test"])
    out = capsys.readouterr().out
    assert rc == 0
    for c, name, n in ((0, "person", 61), (1, "bicycle", 11), (2, "car", 24)):
        assert re.search(rf"│\s*{c} │ {name}\s*│\s*{n} │", out), name


def test_data_list_names_the_segmentation_datasets(capsys):
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("msrs", "fmb", "seg_folder"):
        assert re.search(rf"│ {name}\s", out)
