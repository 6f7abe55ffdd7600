"""One-line errors that say what is wrong: a misspelt model name, a mirror without the file,
a cut or text ``.pth``, and ``--trust-weights`` where it would do nothing.

No network: the mirror is a local HTTP server on 127.0.0.1 (as in tests/test_hub.py), and
no test needs the shared data folder.
"""
from __future__ import annotations

import functools
import http.server
import threading

import cv2
import numpy as np
import pytest
import torch

from tdfusion import hub
from tdfusion.checkpoint import load_checkpoint, module_record, save_checkpoint
from tdfusion.cli import main
from tdfusion.errors import TDFusionError
from tdfusion.nets import create_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _pair(tmp_path):
    rng = np.random.default_rng(0)
    for side in ("a", "b"):
        cv2.imwrite(str(tmp_path / f"{side}.png"), rng.integers(0, 256, (24, 32), dtype=np.uint8))
    return tmp_path / "a.png", tmp_path / "b.png"


def _fuse(capsys, checkpoint, tmp_path):
    a, b = _pair(tmp_path)
    code = main(["fuse", "--checkpoint", str(checkpoint), "--a", str(a), "--b", str(b),
                 "--out", str(tmp_path / "out.png"), "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert not (tmp_path / "out.png").exists()
    return code, err


# -- a misspelt published model name ------------------------------------------------------------------------------

def test_misspelt_model_name_suggests_the_published_one(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TDFUSION_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    code, err = _fuse(capsys, "refusion-ivf", tmp_path)
    assert code == 2 and len(err) == 1
    assert err[0].startswith("error: refusion-ivf: ") and "did you mean 'refusion-ivif'?" in err[0]
    assert not (tmp_path / "home").exists()  # nothing was downloaded


def test_closest_model_only_for_names_not_paths():
    assert hub.closest_model("refusion-ivf") == "refusion-ivif"
    assert hub.closest_model("ReFusion_IVIF") == "refusion-ivif"
    assert hub.closest_model("tdfusion-msr") == "tdfusion-msrs"
    assert hub.closest_model("runs/demo/last.pt") is None
    assert hub.closest_model("something-else") is None
    with pytest.raises(TDFusionError, match=r"no such checkpoint file \(nor a published model name"):
        load_checkpoint("runs/nothing/last.pt")


# -- a mirror that answers 404 ------------------------------------------------------------------------------------

class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def empty_mirror(tmp_path, monkeypatch):
    """A local HTTP mirror that holds no model: every file is a 404."""
    root = tmp_path / "served"
    root.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}"
    monkeypatch.setenv("TDFUSION_MIRROR", url)
    monkeypatch.setenv("TDFUSION_HOME", str(tmp_path / "home"))
    yield url
    httpd.shutdown()
    httpd.server_close()


def test_mirror_404_names_the_mirror_and_the_file(empty_mirror, tmp_path, capsys):
    code, err = _fuse(capsys, "refusion-ivif", tmp_path)
    assert code == 2 and len(err) == 1
    line = err[0]
    assert line.startswith(f"error: {empty_mirror}/ReFusion_IVIF.pth: ")
    assert f"TDFUSION_MIRROR={empty_mirror}" in line and "does not have ReFusion_IVIF.pth" in line
    assert "HTTP 404" in line and "connection" not in line
    models = tmp_path / "home" / "models"
    assert not models.exists() or list(models.iterdir()) == []  # no file, no temporary


def test_mirror_folder_without_the_file(tmp_path, monkeypatch):
    (tmp_path / "mirror").mkdir()
    monkeypatch.setenv("TDFUSION_MIRROR", str(tmp_path / "mirror"))
    monkeypatch.setenv("TDFUSION_HOME", str(tmp_path / "home"))
    with pytest.raises(TDFusionError) as info:
        hub.resolve_checkpoint("refusion-mif", quiet=True)
    msg = str(info.value)
    assert msg.startswith(f"{tmp_path / 'mirror' / 'ReFusion_MIF.pth'}: the mirror folder") and "has no ReFusion_MIF.pth" in msg
    assert "connection" not in msg and "\n" not in msg


# -- a cut or a text .pth -----------------------------------------------------------------------------------------

@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "model.pth"
    save_checkpoint({"fusion": module_record("fusion", create_model("fusion", dim=4, num_blocks=1, heads=2))}, path)
    return path


def test_truncated_checkpoint_is_one_short_sentence(saved, tmp_path, capsys):
    cut = tmp_path / "cut.pth"
    cut.write_bytes(saved.read_bytes()[: saved.stat().st_size // 2])
    with pytest.raises(TDFusionError) as info:
        load_checkpoint(cut)
    assert str(info.value) == f"{cut}: not a readable checkpoint (corrupt or truncated file)"
    code, err = _fuse(capsys, cut, tmp_path)
    assert code == 2 and err == [f"error: {cut}: not a readable checkpoint (corrupt or truncated file)"]
    assert "miniz" not in err[0]


def test_text_file_named_pth_is_said_to_be_text(tmp_path, capsys):
    for name, text in (("notes.pth", "hello world\n"), ("readme.pth", "these are not weights\n" * 20)):
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(TDFusionError) as info:
            load_checkpoint(path)
        assert str(info.value) == f"{path}: not a readable checkpoint (a text file, not a PyTorch file)"
    lfs = tmp_path / "lfs.pth"
    lfs.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 250000\n")
    with pytest.raises(TDFusionError, match="a Git LFS pointer, not the file itself"):
        load_checkpoint(lfs)
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(TDFusionError, match=r"\(an empty file\)$"):
        load_checkpoint(empty)


def test_short_reasons_reach_task_weights_too(saved, tmp_path):
    from tdfusion.tasks import create_task

    cut = tmp_path / "seg_cut.pt"
    cut.write_bytes(saved.read_bytes()[:200])
    with pytest.raises(TDFusionError) as info:
        create_task("seg", {"num_classes": 3, "weights": str(cut)}).build_network()
    assert str(info.value) == f"{cut}: not a readable weights file (corrupt or truncated file)"


# -- --trust-weights: honoured by every task that reads weights, refused where it does nothing ---------------------

def _tiny_seg():
    from tdfusion.tasks import create_task

    return {"num_classes": 3, "segformer": {"hidden_sizes": [8, 8, 8, 8], "decoder_hidden_size": 8}}, create_task


def test_seg_pickled_weights_need_the_opt_in_and_then_load(tmp_path):
    cfg, create_task = _tiny_seg()
    source = create_task("seg", cfg).build_network()
    with torch.no_grad():
        for p in source.parameters():
            p.add_(0.25)
    path = tmp_path / "segformer_full.pt"
    torch.save({"model": source, "epoch": 3}, path)  # the pickled model object, not a state_dict
    with pytest.raises(TDFusionError) as info:
        create_task("seg", {**cfg, "weights": str(path)}).build_network()
    msg = str(info.value)
    assert msg.startswith(f"{path}: not a readable weights file: it holds pickled Python objects")
    assert "--trust-weights" in msg and "\n" not in msg
    net = create_task("seg", {**cfg, "weights": str(path), "trust_weights": True}).build_network()
    for (name, a), b in zip(source.state_dict().items(), net.state_dict().values()):
        assert torch.equal(a, b), name


def test_recon_pickled_weights_need_the_opt_in_and_then_load(tmp_path):
    from tdfusion.tasks import create_task

    cfg = {"dim": 4, "num_blocks": 1, "heads": 2}
    source = create_task("recon", cfg).build_network()
    with torch.no_grad():
        for p in source.parameters():
            p.add_(0.5)
    path = tmp_path / "recon_full.pt"
    torch.save(source, path)
    with pytest.raises(TDFusionError, match="--trust-weights"):
        create_task("recon", {**cfg, "weights": str(path)}).build_network()
    net = create_task("recon", {**cfg, "weights": str(path), "trust_weights": True}).build_network()
    for (name, a), b in zip(source.state_dict().items(), net.state_dict().values()):
        assert torch.equal(a, b), name


def test_trust_weights_without_task_weights_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    tiny = ["train.epochs=1", "train.meta_steps=1", "train.fusion_steps=1", "data.crop_size=32", "run.samples=0",
            "data.task_size=[64,64]", "dataset.options.length=2", "dataset.options.size=[64,64]", "run.eval_every=0"]
    code = main(["train", "--task", "seg", "--dataset", "synthetic", "--trust-weights", "--out", str(out),
                 "--device", "cpu", *tiny])  # tiny: were the option ignored, the run would be short
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "--trust-weights" in err[0] and "does nothing without a task weights file" in err[0]
    assert "det, seg and recon" in err[0]
    assert not out.exists()


def test_a_task_that_ignores_trust_weights_refuses_it():
    from tdfusion.tasks import TaskHead

    class Plain(TaskHead):  # a third-party task whose build_network reads no pickled weights
        name = "plain"

    assert Plain({}).config["trust_weights"] is False
    with pytest.raises(ValueError, match="does nothing here.*det, seg and recon"):
        Plain({"trust_weights": True})
