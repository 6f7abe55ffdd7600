"""Fuzzing the readers: random and corrupted inputs may only ever raise TDFusionError.

Each reader gets random bytes, valid files with random truncations and flipped bytes,
and (checkpoints, configs) well-formed containers with random contents. A reader may
accept an input (then its output must be well-formed) or refuse it with a one-line
TDFusionError; any other exception is a bug: the command line would print a traceback.
Hypothesis runs derandomized (the same examples every run) and keeps no example database.
"""
from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tdfusion.checkpoint import load_fusion_net, module_record  # noqa: E402
from tdfusion.config import apply_overrides, load_config, validate  # noqa: E402
from tdfusion.data.det_labels import parse_yolo_labels  # noqa: E402
from tdfusion.data.seg import check_label_values, read_label  # noqa: E402
from tdfusion.errors import TDFusionError  # noqa: E402
from tdfusion.io import image_size, read_image  # noqa: E402
from tdfusion.nets import create_model  # noqa: E402

FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _valid_images() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (12, 10), dtype=np.uint8)
    out = {}
    for ext, arr in ((".png", grey), (".png", rng.integers(0, 65536, (12, 10), dtype=np.uint16)),
                     (".jpg", rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)), (".bmp", grey),
                     (".tiff", rng.normal(0, 5, (12, 10)).astype(np.float32)),
                     (".png", rng.integers(0, 256, (12, 10, 4), dtype=np.uint8))):
        ok, buf = cv2.imencode(ext, arr)
        assert ok
        out[f"{len(out)}{ext}"] = buf.tobytes()
    return out


VALID_IMAGES = _valid_images()


def _damaged(data: bytes, cut: float, flips: list[tuple[float, int]]) -> bytes:
    raw = bytearray(data[: max(0, int(len(data) * cut))])
    for where, value in flips:
        if raw:
            raw[int(where * (len(raw) - 1))] = value
    return bytes(raw)


damaged_files = st.tuples(st.sampled_from(sorted(VALID_IMAGES)), st.floats(0, 1),
                          st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), max_size=6))


def _one_line_naming(exc: TDFusionError, path: Path) -> None:
    message = str(exc)
    assert "\n" not in message and str(path) in message, message


# -- images ----------------------------------------------------------------------------------
def _check_image(path: Path) -> None:
    try:
        h, w = image_size(path)  # header only where possible
        assert h > 0 and w > 0
    except TDFusionError as exc:
        _one_line_naming(exc, path)
    try:
        image = read_image(path)
    except TDFusionError as exc:
        _one_line_naming(exc, path)
        return
    px = image.pixels
    assert px.dtype == np.float32 and px.ndim in (2, 3) and px.size > 0
    assert np.isfinite(px).all() and px.min() >= 0.0 and px.max() <= 1.0


@FUZZ
@given(data=st.binary(max_size=400))
def test_read_image_random_bytes(tmp_path, data):
    path = tmp_path / "x.png"
    path.write_bytes(data)
    _check_image(path)


@FUZZ
@given(case=damaged_files)
def test_read_image_damaged_files(tmp_path, case):
    name, cut, flips = case
    path = tmp_path / name
    path.write_bytes(_damaged(VALID_IMAGES[name], cut, flips))
    _check_image(path)


# -- segmentation labels --------------------------------------------------------------------------
@FUZZ
@given(case=damaged_files, num_classes=st.integers(1, 20))
def test_read_label_damaged_files(tmp_path, case, num_classes):
    name, cut, flips = case
    path = tmp_path / name
    path.write_bytes(_damaged(VALID_IMAGES[name], cut, flips))
    try:
        mask = read_label(path)
        check_label_values(mask, num_classes, 255, path)
    except TDFusionError as exc:
        _one_line_naming(exc, path)
        return
    assert mask.dtype == np.int64 and mask.ndim == 2
    assert (((mask >= 0) & (mask < num_classes)) | (mask == 255)).all()


# -- detection labels ---------------------------------------------------------------------------
number = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-3, 5),
                   st.sampled_from(["nan", "inf", "-0", "1e400", "0x1", "", "abc", "1,5"]))
label_line = st.lists(number, min_size=0, max_size=7).map(lambda xs: " ".join(str(x) for x in xs))


@FUZZ
@given(lines=st.lists(st.one_of(label_line, st.text(max_size=30)), max_size=6), num_classes=st.integers(1, 5))
def test_parse_yolo_labels_random_lines(tmp_path, lines, num_classes):
    path = tmp_path / "x.txt"
    path.write_bytes("\n".join(lines).encode("utf-8", "surrogatepass"))
    try:
        boxes = parse_yolo_labels(path, num_classes)
    except TDFusionError as exc:
        assert "\n" not in str(exc) and str(path) in str(exc)
        return
    assert boxes.dtype == np.float32 and boxes.ndim == 2 and boxes.shape[1] == 5
    assert np.isfinite(boxes).all()
    assert ((boxes[:, 0] >= 0) & (boxes[:, 0] < num_classes)).all()
    assert ((boxes[:, 1:3] >= 0) & (boxes[:, 1:3] <= 1) & (boxes[:, 3:] > 0) & (boxes[:, 3:] <= 1)).all()


# -- checkpoints ------------------------------------------------------------------------------------
def _saved(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


VALID_CHECKPOINT = _saved({"format": "tdfusion", "version": 1,
                           "fusion": module_record("fusion", create_model("fusion", dim=8, num_blocks=1, heads=2))})

leaf = st.one_of(st.none(), st.booleans(), st.integers(-5, 100), st.floats(allow_nan=False, width=32),
                 st.text(max_size=8), st.sampled_from(["fusion", "lossgen", "tdfusion", "dim", "state_dict"]),
                 st.builds(lambda n: torch.zeros(n), st.integers(0, 4)))
structure = st.recursive(leaf, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                        st.dictionaries(st.one_of(st.text(max_size=6), leaf),
                                                                        inner, max_size=4)), max_leaves=12)
record = st.fixed_dictionaries({}, optional={"arch": st.one_of(st.just("fusion"), leaf),
                                             "config": st.one_of(st.just({"dim": 8, "num_blocks": 1}), structure),
                                             "state_dict": structure})


def _check_checkpoint(path: Path) -> None:
    try:
        net, _ = load_fusion_net(path)
    except TDFusionError as exc:
        assert "\n" not in str(exc) and str(path) in str(exc), str(exc)
        return
    assert isinstance(net, torch.nn.Module)


@FUZZ
@given(data=st.binary(max_size=300))
def test_checkpoint_random_bytes(tmp_path, data):
    path = tmp_path / "x.pt"
    path.write_bytes(data)
    _check_checkpoint(path)


@FUZZ
@given(cut=st.floats(0, 1), flips=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), max_size=4))
def test_checkpoint_damaged(tmp_path, cut, flips):
    path = tmp_path / "x.pt"
    path.write_bytes(_damaged(VALID_CHECKPOINT, cut, flips))
    _check_checkpoint(path)


@FUZZ
@given(fusion=st.one_of(record, structure), version=st.one_of(st.just(1), leaf), extra=structure)
def test_checkpoint_with_random_contents(tmp_path, fusion, version, extra):
    path = tmp_path / "x.pt"
    torch.save({"format": "tdfusion", "version": version, "fusion": fusion, "extra": extra}, path)
    _check_checkpoint(path)


# -- configs ---------------------------------------------------------------------------------------
SCHEMA = load_config(None)
KEYS = ["train.epochs", "train.seed", "train.deterministic", "optim.lr_fusion", "data.batch_size",
        "data.task_size", "loss.form", "run.keep", "train.epoch", "fusion.dim", "task.name", "_base_", "recipe"]


def _check_config(path: Path, overrides: list[str] = ()) -> None:
    try:
        cfg = apply_overrides(load_config(path), overrides, SCHEMA)
        validate(cfg, SCHEMA)
    except TDFusionError as exc:
        assert "\n" not in str(exc), str(exc)


@FUZZ
@given(text=st.text(max_size=120))
def test_config_random_text(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    _check_config(path)


@FUZZ
@given(entries=st.dictionaries(st.sampled_from(KEYS), structure, max_size=5),
       overrides=st.lists(st.tuples(st.sampled_from(KEYS), st.text(max_size=10)), max_size=3))
def test_config_random_values(tmp_path, entries, overrides):
    nested: dict = {}
    for key, value in entries.items():
        node = nested
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {}) if isinstance(node.get(part, {}), dict) else {}
        node[last] = value
    path = tmp_path / "c.yaml"
    try:
        path.write_text(yaml.safe_dump(_plain(nested)))
    except yaml.YAMLError:
        return
    _check_config(path, [f"{k}={v}" for k, v in overrides])


def _plain(obj):
    """YAML-dumpable copy (tensors become lists, keys strings)."""
    if isinstance(obj, dict):
        return {str(k) if not isinstance(k, (str, int, float, bool, type(None))) else k: _plain(v)
                for k, v in obj.items()}
    if isinstance(obj, list):
        return [_plain(v) for v in obj]
    if torch.is_tensor(obj):
        return obj.tolist()
    return obj


# -- configs all the way to a built trainer ------------------------------------------------------
def _schema_keys(node: dict, prefix: str = "") -> list[str]:
    keys = []
    for k, v in node.items():
        if isinstance(v, dict) and v:
            keys += _schema_keys(v, f"{prefix}{k}.")
        elif f"{prefix}{k}" not in ("run.out", "dataset.root", "recipe", "task.weights"):
            keys.append(f"{prefix}{k}")
    return keys


TRAINER_KEYS = sorted(_schema_keys(SCHEMA))
TINY = ["train.device=cpu", "fusion.dim=8", "fusion.num_blocks=1", "lossgen.dim=8", "lossgen.num_blocks=1",
        "task.dim=8", "task.num_blocks=1", "data.crop_size=16", "dataset.options.size=[32,32]",
        "dataset.options.length=2", "run.samples=0"]
override_value = st.one_of(st.sampled_from(["-1", "0", "1", "2.5", "null", "abc", "[1]", "[8, 8]", "{a: 1}", "true",
                                            "1e-3", "nan", "refusion", "cosine", "maxnorm_sgd", "reference"]),
                           st.text(max_size=6))


@settings(max_examples=40, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(changes=st.lists(st.tuples(st.sampled_from(TRAINER_KEYS), override_value), min_size=1, max_size=2))
def test_trainer_accepts_or_refuses_random_settings(tmp_path, changes):
    from tdfusion.training.trainer import MetaTrainer

    torch.set_num_threads(1)
    overrides = TINY + [f"{key}={value}" for key, value in changes]
    try:
        cfg = apply_overrides(load_config(Path(__file__).resolve().parents[1] / "configs" / "synthetic_recon.yaml"),
                              overrides, SCHEMA)
        validate(cfg, SCHEMA)
        MetaTrainer(cfg, tmp_path / "run")
    except TDFusionError as exc:
        assert "\n" not in str(exc), str(exc)
