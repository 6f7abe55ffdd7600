"""Detection datasets, label validation and the VOC -> YOLO converter.

Expected values are worked out by hand in the comments (not produced by the code under
test); the real MSRS subset is checked against the box counts published in the shared
data README.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from tdfusion.cli import main
from tdfusion.data import Sample, build_dataset, collate, eval_view, train_view
from tdfusion.data.det import LLVIP_CLASSES, M3FD_CLASSES, MSRS_DET_CLASSES
from tdfusion.data.det_labels import parse_voc_xml, parse_yolo_labels, read_split_list
from tdfusion.errors import TDFusionError

REPO = Path(__file__).resolve().parents[1]


def write_png(path: Path, h: int, w: int, value: int = 100, colour: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.full((h, w, 3) if colour else (h, w), value, np.uint8)
    if colour:
        img[..., 0] = 10  # not grey
    assert cv2.imwrite(str(path), img)


def voc_xml(objects: list[tuple[str, float, float, float, float]], w: int | None = 200, h: int | None = 100,
            extra: str = "") -> str:
    size = f"<size><width>{w}</width><height>{h}</height><depth>3</depth></size>" if w is not None else ""
    objs = "".join(
        f"<object><name>{n}</name><difficult>0</difficult>"
        f"<bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
        for n, x1, y1, x2, y2 in objects)
    return f"<annotation><filename>x.jpg</filename>{size}{objs}{extra}</annotation>"


# -- YOLO label parsing ------------------------------------------------------------------------

def test_yolo_labels_parse_and_clip_within_tolerance(tmp_path):
    f = tmp_path / "a.txt"
    # second box: x from 0.9 - 0.105 = 0.795 to 1.005 (inside the 0.01 tolerance) -> clipped to 1.0,
    # so cx = (0.795 + 1) / 2 = 0.8975 and w = 0.205.
    f.write_text("0 0.5 0.25 0.2 0.1\n\n2 0.9 0.5 0.21 0.4\n")
    boxes = parse_yolo_labels(f, num_classes=3)
    np.testing.assert_allclose(boxes, [[0, 0.5, 0.25, 0.2, 0.1], [2, 0.8975, 0.5, 0.205, 0.4]], atol=1e-6)
    assert boxes.dtype == np.float32


def test_empty_label_file_means_no_objects(tmp_path):
    f = tmp_path / "empty.txt"
    f.write_text("")
    assert parse_yolo_labels(f, 3).shape == (0, 5)


@pytest.mark.parametrize("line, message", [
    ("0 0.5 0.5 0.2", "expected 5 fields"),
    ("0 0.5 0.5 0.2 0.1 0.9", "expected 5 fields"),
    ("0 0.5 abc 0.2 0.1", "not a number"),
    ("3 0.5 0.5 0.2 0.1", "class id 3 is not an integer in 0..2"),
    ("-1 0.5 0.5 0.2 0.1", "class id -1"),
    ("1.5 0.5 0.5 0.2 0.1", "class id 1.5"),
    ("0 0.95 0.5 0.2 0.1", "extends beyond the image"),   # x up to 1.05
    ("0 0.5 -0.1 0.2 0.1", "extends beyond the image"),   # y from -0.15
    ("0 0.5 0.5 0 0.1", "empty box"),
    ("0 nan 0.5 0.2 0.1", "finite"),
])
def test_yolo_label_errors_name_file_and_line(tmp_path, line, message):
    f = tmp_path / "bad.txt"
    f.write_text(f"0 0.5 0.5 0.2 0.2\n{line}\n")
    with pytest.raises(TDFusionError) as err:
        parse_yolo_labels(f, 3)
    text = str(err.value)
    assert text.startswith(f"{f}:2: ") and message in text and "\n" not in text


# -- VOC XML ---------------------------------------------------------------------------------------

def test_voc_normalises_x_by_width_and_y_by_height(tmp_path):
    # Image 200 wide, 100 high. Box x 20..60, y 10..50:
    # cx = 40/200 = 0.2, cy = 30/100 = 0.3, w = 40/200 = 0.2, h = 40/100 = 0.4.
    # (Swapping the divisors, as the reference loader did, would give cx 0.4, cy 0.15.)
    f = tmp_path / "a.xml"
    f.write_text(voc_xml([("Car", 20, 10, 60, 50), ("person", 100, 0, 200, 100)]))
    boxes, hw = parse_voc_xml(f, ["person", "car"])
    assert hw == (100, 200)
    np.testing.assert_allclose(boxes, [[1, 0.2, 0.3, 0.2, 0.4], [0, 0.75, 0.5, 0.5, 1.0]], atol=1e-7)


def test_voc_without_size_reads_the_image(tmp_path):
    f = tmp_path / "a.xml"
    f.write_text(voc_xml([("person", 0, 0, 30, 60)], w=None))
    # From a 120 (H) x 60 (W) image: cx = 15/60 = 0.25, cy = 30/120 = 0.25, w = 0.5, h = 0.5.
    boxes, hw = parse_voc_xml(f, ["person"], image_hw=lambda: (120, 60))
    assert hw == (120, 60)
    np.testing.assert_allclose(boxes, [[0, 0.25, 0.25, 0.5, 0.5]], atol=1e-7)
    with pytest.raises(TDFusionError, match="no image <size>"):
        parse_voc_xml(f, ["person"])


@pytest.mark.parametrize("objects, message", [
    ([("dog", 1, 1, 5, 5)], "unknown class 'dog'"),
    ([("person", 150, 10, 210, 20)], "extends beyond the image"),   # x2 = 210 > 200 * 1.01
    ([("person", 50, 10, 40, 20)], "empty box"),
])
def test_voc_errors(tmp_path, objects, message):
    f = tmp_path / "bad.xml"
    f.write_text(voc_xml(objects))
    with pytest.raises(TDFusionError, match=message) as err:
        parse_voc_xml(f, ["person"])
    assert str(err.value).startswith(str(f)) and "object 1" in str(err.value)


def test_voc_not_xml(tmp_path):
    f = tmp_path / "bad.xml"
    f.write_text("<annotation><object>")
    with pytest.raises(TDFusionError, match="not valid XML"):
        parse_voc_xml(f, ["person"])


# -- the converter command --------------------------------------------------------------------------

def test_cli_voc2yolo_writes_yolo_labels(tmp_path, capsys):
    ann = tmp_path / "Annotation"
    ann.mkdir()
    (ann / "00001.xml").write_text(voc_xml([("People", 20, 10, 60, 50), ("Truck", 0, 0, 200, 100)]))
    (ann / "00002.xml").write_text(voc_xml([]))   # an image without objects
    # No <size>: the size is read from the image, 50 (H) x 80 (W).
    (ann / "00003.xml").write_text(voc_xml([("Lamp", 8, 5, 16, 45)], w=None))
    write_png(tmp_path / "Vis" / "00003.png", 50, 80)
    out = tmp_path / "labels"
    rc = main(["convert", "voc2yolo", "--annotations", str(ann), "--out", str(out), "--preset", "m3fd",
               "--images", str(tmp_path / "Vis")])
    assert rc == 0
    # People = 0, Lamp = 3, Truck = 5 (TarDAL's order). 00003: cx 12/80 = 0.15, cy 25/50 = 0.5,
    # w 8/80 = 0.1, h 40/50 = 0.8.
    assert (out / "00001.txt").read_text() == ("0 0.200000 0.300000 0.200000 0.400000\n"
                                               "5 0.500000 0.500000 1.000000 1.000000\n")
    assert (out / "00002.txt").read_text() == ""
    assert (out / "00003.txt").read_text() == "3 0.150000 0.500000 0.100000 0.800000\n"
    assert "3 label files" in capsys.readouterr().out


def test_cli_voc2yolo_bad_file_writes_nothing(tmp_path, capsys):
    ann = tmp_path / "Annotations"
    ann.mkdir()
    (ann / "a.xml").write_text(voc_xml([("person", 1, 1, 5, 5)]))
    (ann / "b.xml").write_text(voc_xml([("cat", 1, 1, 5, 5)]))
    out = tmp_path / "labels"
    rc = main(["convert", "voc2yolo", "--annotations", str(ann), "--out", str(out), "--classes", "person"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and "b.xml" in err and "'cat'" in err
    assert not out.exists()


# -- split lists ----------------------------------------------------------------------------------------

def test_split_list_forms(tmp_path):
    f = tmp_path / "train.txt"
    # stem, file name, the reference annotation-list form, a Windows path; comments and blanks skipped
    f.write_text("00001\n00002.png\n# comment\n\n00003.png 1,2,30,40,0 5,6,7,8,1\ndata\\M3FD\\vi\\00004.png\n")
    assert read_split_list(f) == ["00001", "00002", "00003", "00004"]
    f.write_text("00001\n00001.png\n")
    with pytest.raises(TDFusionError, match=r"train.txt:2: '00001' is listed twice"):
        read_split_list(f)


# -- YOLO layout -----------------------------------------------------------------------------------------

def make_yolo_root(root: Path, names=("person", "car")) -> Path:
    (root).mkdir(parents=True, exist_ok=True)
    (root / "data.yaml").write_text(yaml.safe_dump({"nc": len(names), "names": dict(enumerate(names))}))
    for split, stems in (("train", ["a", "b", "c"]), ("test", ["d"])):
        for s in stems:
            write_png(root / split / "ir" / f"{s}.png", 48, 64, 120)
            write_png(root / split / "vi" / f"{s}.png", 48, 64, 60, colour=True)
            (root / split / "labels").mkdir(parents=True, exist_ok=True)
            (root / split / "labels" / f"{s}.txt").write_text("1 0.5 0.5 0.25 0.5\n" if s != "b" else "")
    return root


def test_yolo_dataset_builds_and_loads(tmp_path):
    root = make_yolo_root(tmp_path / "ds")
    ds = build_dataset("yolo", str(root), "train")
    assert ds.target_kind == "boxes" and ds.classes == ["person", "car"] and len(ds) == 3
    s = ds[0]
    assert s.a.shape == s.b.shape == (48, 64)
    np.testing.assert_allclose(s.target["boxes"], [[1, 0.5, 0.5, 0.25, 0.5]])
    assert ds[1].target["boxes"].shape == (0, 5)     # the empty label file
    assert ds.instances_per_class() == [0, 2]


def test_yolo_dataset_errors(tmp_path):
    root = make_yolo_root(tmp_path / "ds")
    (root / "train" / "labels" / "c.txt").write_text("0 0.5 0.5 0.2 0.2\n0 0.5 0.5 0.2\n")
    with pytest.raises(TDFusionError, match=r"c\.txt:2: expected 5 fields"):
        build_dataset("yolo", str(root), "train")
    (root / "train" / "labels" / "c.txt").write_text("2 0.5 0.5 0.2 0.2\n")
    with pytest.raises(TDFusionError, match=r"c\.txt:1: class id 2 is not an integer in 0..1"):
        build_dataset("yolo", str(root), "train")
    (root / "train" / "labels" / "c.txt").unlink()
    with pytest.raises(TDFusionError, match=r"c\.png: no label file .*c\.txt"):
        build_dataset("yolo", str(root), "train")
    assert len(build_dataset("yolo", str(root), "train", missing_labels="empty")) == 3
    (root / "train" / "labels" / "c.txt").write_text("")
    (root / "train" / "labels" / "z.txt").write_text("")
    with pytest.raises(TDFusionError, match=r"z\.txt: label file without an image pair"):
        build_dataset("yolo", str(root), "train")
    (root / "train" / "labels" / "z.txt").unlink()
    (root / "train" / "vi" / "a.png").unlink()
    with pytest.raises(TDFusionError, match=r"a\.png: no partner named a\.\*"):
        build_dataset("yolo", str(root), "train")


def test_yolo_dataset_bad_data_yaml(tmp_path):
    root = make_yolo_root(tmp_path / "ds")
    (root / "data.yaml").write_text("nc: 3\nnames: [person, car]\n")
    with pytest.raises(TDFusionError, match="nc is 3 but 'names' lists 2"):
        build_dataset("yolo", str(root), "train")
    (root / "data.yaml").unlink()
    with pytest.raises(TDFusionError, match="data.yaml: no such file"):
        build_dataset("yolo", str(root), "train")
    assert build_dataset("yolo", str(root), "train", names=["p", "c"]).classes == ["p", "c"]


def test_synthetic_dataset_written_by_synth_reads_as_yolo(tmp_path):
    # `tdfusion synth` writes the YOLO layout; its boxes must equal the in-memory synthetic set's.
    assert main(["synth", "--out", str(tmp_path / "s"), "--train", "3", "--test", "1", "--size", "64", "96"]) == 0
    on_disk = build_dataset("yolo", str(tmp_path / "s"), "train")
    in_memory = build_dataset("synthetic", None, "train", length=3, size=(64, 96), target="boxes")
    assert on_disk.classes == in_memory.classes
    for i in range(3):
        np.testing.assert_allclose(on_disk[i].target["boxes"], in_memory[i].target["boxes"], atol=2e-6)


# -- M3FD and LLVIP as published ----------------------------------------------------------------------------

def make_m3fd(root: Path) -> Path:
    for stem, objs in (("00000", [("People", 100, 200, 140, 300)]), ("00001", []), ("00002", [("Bus", 0, 0, 512, 384)])):
        write_png(root / "Ir" / f"{stem}.png", 96, 128)
        write_png(root / "Vis" / f"{stem}.png", 96, 128, colour=True)
        (root / "Annotation").mkdir(parents=True, exist_ok=True)
        # The annotations describe the 1024x768 originals; the test images are smaller copies.
        (root / "Annotation" / f"{stem}.xml").write_text(voc_xml(objs, 1024, 768))
    (root / "meta").mkdir(exist_ok=True)
    (root / "meta" / "train.txt").write_text("00000.png\n00002.png\n")
    (root / "meta" / "test.txt").write_text("00001\n")
    return root


def test_m3fd_published_layout(tmp_path):
    root = make_m3fd(tmp_path / "M3FD")
    ds = build_dataset("m3fd", str(root), "train")
    assert ds.classes == list(M3FD_CLASSES) and ds.stems == ["00000", "00002"]
    assert ds.default_task_size == (192, 256)
    # People x 100..140 of 1024, y 200..300 of 768: cx 120/1024, cy 250/768, w 40/1024, h 100/768.
    np.testing.assert_allclose(ds[0].target["boxes"], [[0, 0.1171875, 0.32552083, 0.0390625, 0.13020833]],
                               atol=1e-6)
    np.testing.assert_allclose(ds[1].target["boxes"], [[2, 0.25, 0.25, 0.5, 0.5]], atol=1e-6)
    assert build_dataset("m3fd", str(root), "test")[0].target["boxes"].shape == (0, 5)


def test_m3fd_split_problems(tmp_path):
    root = make_m3fd(tmp_path / "M3FD")
    (root / "meta" / "train.txt").unlink()
    with pytest.raises(TDFusionError, match="M3FD has no official split"):
        build_dataset("m3fd", str(root), "train")
    lst = tmp_path / "mine.txt"
    lst.write_text("00000\n00009\n")
    with pytest.raises(TDFusionError, match=r"mine\.txt: '00009' has no image 00009\.\*"):
        build_dataset("m3fd", str(root), "train", split_list=str(lst))
    (root / "Vis" / "00000.png").unlink()
    lst.write_text("00000\n")
    with pytest.raises(TDFusionError, match=r"00000\.png: no partner named 00000\.\*"):
        build_dataset("m3fd", str(root), "train", split_list=str(lst))


def test_llvip_published_layout_every_nth(tmp_path):
    root = tmp_path / "LLVIP"
    stems = [f"0100{i:02d}" for i in range(1, 8)]
    for s in stems:
        write_png(root / "infrared" / "train" / f"{s}.jpg", 64, 80)
        write_png(root / "visible" / "train" / f"{s}.jpg", 64, 80, colour=True)
        (root / "Annotations").mkdir(parents=True, exist_ok=True)
        (root / "Annotations" / f"{s}.xml").write_text(voc_xml([("person", 640, 512, 1280, 1024)], 1280, 1024))
    ds = build_dataset("llvip", str(root), "train", every=3)
    assert ds.stems == [stems[0], stems[3], stems[6]] and ds.classes == list(LLVIP_CLASSES)
    np.testing.assert_allclose(ds[0].target["boxes"], [[0, 0.75, 0.75, 0.5, 0.5]])
    assert len(build_dataset("llvip", str(root), "train", every=1)) == 7
    (root / "Annotations" / f"{stems[3]}.xml").unlink()
    with pytest.raises(TDFusionError, match=rf"{stems[3]}\.jpg: no annotation"):
        build_dataset("llvip", str(root), "train", every=3)


# -- views keep boxes on their objects -----------------------------------------------------------------------

def test_resize_and_flip_keep_boxes_on_the_object():
    # A bright 10x20 (h x w) rectangle at rows 6..16, columns 50..70 of a 40x80 image.
    img = np.zeros((40, 80), np.float32)
    img[6:16, 50:70] = 1.0
    box = np.array([[0, 60 / 80, 11 / 40, 20 / 80, 10 / 40]], np.float32)
    sample = Sample(img, img.copy(), "x", {"boxes": box})

    class Flip:  # a generator stand-in that always flips and takes the first crop
        def random(self):
            return 0.0

        def integers(self, lo, hi):
            return lo

    view = train_view(sample, Flip(), crop_size=32, task_size=(20, 32))
    for item in (view, eval_view(sample, (20, 32))):
        batch = collate([item])
        a = batch["a"][0, 0].numpy()
        _, cls, cx, cy, w, h = batch["boxes"][0].tolist()
        rows, cols = np.nonzero(a > 0.5)
        hh, ww = a.shape
        assert abs((cols.min() + cols.max() + 1) / 2 / ww - cx) < 1.5 / ww
        assert abs((rows.min() + rows.max() + 1) / 2 / hh - cy) < 1.5 / hh
    assert view["boxes"][0, 1] == pytest.approx(1 - 60 / 80)     # flipped


# -- real data -----------------------------------------------------------------------------------------------

def test_msrs_det_real_counts(shared_data):
    # Box counts from shared/data/README.md §1 (fusion-annotated labels).
    root = shared_data / "msrs_det"
    train = build_dataset("msrs_det", str(root), "train")
    test = build_dataset("msrs_det", str(root), "test")
    assert (len(train), len(test)) == (40, 20)
    assert train.instances_per_class() == [91, 20, 52]
    assert test.instances_per_class() == [61, 11, 24]
    assert train.classes == list(MSRS_DET_CLASSES) and train.default_task_size == (240, 320)
    assert train.stems == sorted(read_split_list(root / "train.txt"))
    s = train[0]
    assert s.a.shape == s.b.shape == (480, 640)
    # the infrared-annotated label set is a different, also valid, set
    assert sum(build_dataset("msrs_det", str(root), "test", labels="labels_ir").instances_per_class()) > 0


def test_llvip_det_real_sample(shared_data):
    ds = build_dataset("yolo", str(shared_data / "llvip_det"), "train")
    assert ds.classes == ["person"] and ds.instances_per_class() == [3]   # README §2: 3 persons in 010005
    assert ds[0].a.shape == (1024, 1280)


def test_dataset_descriptors_match_the_code():
    from tdfusion.data import available_datasets

    expected = {"m3fd": M3FD_CLASSES, "llvip": LLVIP_CLASSES, "msrs_det": MSRS_DET_CLASSES}
    sizes = {"m3fd": [192, 256], "llvip": [256, 320], "msrs_det": [240, 320]}
    for name, classes in expected.items():
        desc = yaml.safe_load((REPO / "datasets" / f"{name}.yaml").read_text())
        assert desc["name"] == name and name in available_datasets() and desc["target_kind"] == "boxes"
        assert desc["classes"] == list(classes)
        assert desc["task_size"] == sizes[name]


def test_cli_yolo2mask_paints_boxes_at_each_images_size(tmp_path, capsys):
    """Class masks from YOLO boxes: 0 outside, class + 1 inside (pixel centres inside the box);
    an image without a label file gets an all-background mask."""
    from tdfusion.data.seg import read_label

    images, labels, out = tmp_path / "ir", tmp_path / "labels", tmp_path / "masks"
    for stem, (h, w) in (("a", (20, 40)), ("b", (10, 10))):
        images.mkdir(exist_ok=True)
        cv2.imwrite(str(images / f"{stem}.png"), np.zeros((h, w), np.uint8))
    labels.mkdir()
    # class 2, x 10..30 of 40 (cx 0.5 w 0.5), y 5..15 of 20 (cy 0.5 h 0.5)
    (labels / "a.txt").write_text("2 0.5 0.5 0.5 0.5\n")
    assert main(["convert", "yolo2mask", "--labels", str(labels), "--images", str(images), "--out", str(out),
                 "--preset", "msrs_det"]) == 0
    a, b = read_label(out / "a.png"), read_label(out / "b.png")
    expected = np.zeros((20, 40), np.int64)
    expected[5:15, 10:30] = 3
    assert np.array_equal(a, expected) and b.shape == (10, 10) and not b.any()
    assert "2 masks written" in capsys.readouterr().out


def test_cli_yolo2mask_bad_label_writes_nothing(tmp_path, capsys):
    images, labels, out = tmp_path / "ir", tmp_path / "labels", tmp_path / "masks"
    images.mkdir()
    labels.mkdir()
    for stem in ("a", "b"):
        cv2.imwrite(str(images / f"{stem}.png"), np.zeros((8, 8), np.uint8))
    (labels / "a.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    (labels / "b.txt").write_text("7 0.5 0.5 0.5 0.5\n")  # msrs_det has 3 classes
    assert main(["convert", "yolo2mask", "--labels", str(labels), "--images", str(images), "--out", str(out),
                 "--preset", "msrs_det"]) == 2
    err = capsys.readouterr().err
    assert "b.txt" in err and not out.exists()
