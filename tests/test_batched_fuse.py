"""Batched fusing (issue 25, item 1): same-size pairs share one network call, and a pair's
output does not depend on the batch. The batched path is forced on the CPU (`--batch N`):
batch 8 equals batch 1 bit for bit, for folders, the Python API over lists, and compare's
fused images (for the shipped architecture: see the ``net`` fixture); a memory bound
shrinks the batch; against the banded executor (the CPU default) the outputs differ only
by float rounding."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from tdfusion.api import Fuser
from tdfusion.checkpoint import module_record, save_checkpoint
from tdfusion.cli import main
from tdfusion.inference import fuse_image_groups
from tdfusion.io import read_image
from tdfusion.nets import create_model
from tdfusion.nets.band_plan import resident_bytes, workspace_bytes_per_row

pytestmark = pytest.mark.usefixtures("one_thread")

SIZES = {"p1": (40, 56), "p2": (40, 56), "p3": (32, 48), "p4": (40, 56), "p5": (32, 48), "p6": (40, 56),
         "p7": (40, 56), "p8": (40, 56), "p9": (40, 56), "p10": (32, 48), "p11": (40, 56)}


@pytest.fixture(scope="module")
def net():
    # The shipped architecture (ReFusion's sizes): the claim is about the network users run.
    # A 4-channel toy network is not batch-invariant on the CPU: oneDNN rounds its 4->1
    # output convolution differently for 1 and 8 images (1e-7).
    torch.manual_seed(0)
    return create_model("fusion").eval()


@pytest.fixture(scope="module")
def ckpt(net, tmp_path_factory):
    path = tmp_path_factory.mktemp("batched") / "net.pt"
    save_checkpoint({"fusion": module_record("fusion", net)}, path)
    return path


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Two sizes interleaved; B in colour for some pairs, 16-bit A for one."""
    root = tmp_path_factory.mktemp("pairs")
    rng = np.random.default_rng(0)
    for side in ("a", "b"):
        (root / side).mkdir()
    for k, (stem, (h, w)) in enumerate(SIZES.items()):
        a = rng.integers(0, 65536 if stem == "p4" else 256, (h, w), dtype=np.uint16 if stem == "p4" else np.uint8)
        b = rng.integers(0, 256, (h, w, 3) if k % 2 else (h, w), dtype=np.uint8)
        cv2.imwrite(str(root / "a" / f"{stem}.png"), a)
        cv2.imwrite(str(root / "b" / f"{stem}.png"), b)
    return root / "a", root / "b"


def _fuse(ckpt, a, b, out, *extra):
    return main(["fuse", "--checkpoint", str(ckpt), "--a", str(a), "--b", str(b), "--out", str(out),
                 "--device", "cpu", "--raw", *extra])


def _outputs(folder):
    return {p.name: (cv2.imread(str(p), cv2.IMREAD_UNCHANGED) if p.suffix == ".png" else np.load(p))
            for p in sorted(folder.iterdir())}


def test_fuse_batch_8_equals_batch_1_bit_for_bit(ckpt, folders, tmp_path):
    a, b = folders
    results = {}
    for batch in ("1", "8", "3"):
        assert _fuse(ckpt, a, b, tmp_path / batch, "--batch", batch) == 0
        results[batch] = _outputs(tmp_path / batch)
    assert len(results["1"]) == 2 * len(SIZES)
    for batch in ("8", "3"):
        assert results[batch].keys() == results["1"].keys()
        for name, image in results["1"].items():
            assert image.dtype == results[batch][name].dtype and np.array_equal(image, results[batch][name]), name
    # the 16-bit pair stays 16-bit, the colour pairs stay colour
    assert results["8"]["p4.png"].dtype == np.uint16 and results["8"]["p2.png"].ndim == 3


def test_the_banded_default_differs_from_the_batched_path_by_rounding_only(ckpt, folders, tmp_path):
    a, b = folders
    assert _fuse(ckpt, a, b, tmp_path / "banded") == 0
    assert _fuse(ckpt, a, b, tmp_path / "batched", "--batch", "8") == 0
    banded, batched = _outputs(tmp_path / "banded"), _outputs(tmp_path / "batched")
    for name in banded:
        if name.endswith(".npy"):
            assert np.abs(banded[name] - batched[name]).max() < 1e-5, name
        else:
            assert np.abs(banded[name].astype(int) - batched[name].astype(int)).max() <= 1, name


def test_a_memory_bound_shrinks_the_batch_and_keeps_the_outputs(net, folders):
    a, b = folders
    pairs = [(read_image(a / f"{s}.png"), read_image(b / f"{s}.png")) for s in SIZES]
    h, w = SIZES["p1"]
    per_pair = resident_bytes(net, h, w) + workspace_bytes_per_row(net, w) * (h + 4)
    groups = list(fuse_image_groups(net, pairs, 8, max_memory=3 * per_pair))
    large = [len(idx) for idx, _ in groups if pairs[idx[0]][0].size == (h, w)]
    assert max(large) == 3 and sum(large) == sum(1 for s in SIZES.values() if s == (h, w))
    unbounded = {i: r for idx, rs in fuse_image_groups(net, pairs, 8) for i, r in zip(idx, rs)}
    for idx, results in groups:
        for i, (raw, out) in zip(idx, results):
            assert np.array_equal(raw, unbounded[i][0]) and np.array_equal(out, unbounded[i][1])
    # not even one pair fits: the banded executor takes it (bands of rows within the bound)
    tiny = list(fuse_image_groups(net, pairs[:2], 8, max_memory=per_pair // 2))
    assert [len(idx) for idx, _ in tiny] == [1, 1]


def test_fuser_over_lists_equals_one_call_per_pair(ckpt, folders):
    a, b = folders
    srcs = [(cv2.imread(str(a / f"{s}.png"), cv2.IMREAD_UNCHANGED), cv2.imread(str(b / f"{s}.png"))) for s in SIZES]
    batched = Fuser.from_pretrained(ckpt, device="cpu", batch=8)
    one_by_one = Fuser.from_pretrained(ckpt, device="cpu", batch=1)
    many = batched([x for x, _ in srcs], [y for _, y in srcs])
    assert len(many) == len(srcs)
    for (x, y), out in zip(srcs, many):
        single = one_by_one([x], [y])[0]
        assert out.dtype == single.dtype and np.array_equal(out, single)
    # the default on a CPU (banded, one pair at a time) gives each pair's own call
    default = Fuser.from_pretrained(ckpt, device="cpu")
    assert all(np.array_equal(o, default(x, y)) for (x, y), o in zip(srcs[:3], default([s[0] for s in srcs[:3]],
                                                                                         [s[1] for s in srcs[:3]])))


def test_compare_fuses_a_checkpoint_as_fuse_batch_does(ckpt, tmp_path):
    """compare --batch 8 writes, for each pair, the image `tdfusion fuse --batch 8` writes."""
    tiny = ["downstream.batch_size=2", "task.segformer={hidden_sizes: [8, 16, 16, 16], depths: [1, 1, 1, 1], "
            "num_attention_heads: [1, 1, 1, 1], decoder_hidden_size: 16}"]
    work = tmp_path / "work"
    assert main(["synth", "--out", str(tmp_path / "data"), "--train", "3", "--test", "3", "--size", "40", "56"]) == 0
    assert main(["compare", "--task", "seg", "--dataset", "seg_folder", "--data-root", str(tmp_path / "data"),
                 "--checkpoint", str(ckpt), "--batch", "8", "--preset", "fast", "--epochs", "1", "--no-baselines",
                 "--work-dir", str(work), "--device", "cpu", *tiny]) == 0
    for split in ("train", "test"):
        out = tmp_path / f"fused_{split}"
        assert main(["fuse", "--checkpoint", str(ckpt), "--a", str(tmp_path / "data" / split / "ir"),
                     "--b", str(tmp_path / "data" / split / "vi"), "--out", str(out), "--device", "cpu",
                     "--batch", "8"]) == 0
        made = sorted((work / "fused" / split / "fuse_output").glob("*.png"))
        assert len(made) == 3
        for path in made:
            assert np.array_equal(cv2.imread(str(path), cv2.IMREAD_UNCHANGED),
                                  cv2.imread(str(out / path.name), cv2.IMREAD_UNCHANGED)), path.name
