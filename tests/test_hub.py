"""Published models by name (issue 15, item 2): served from a local HTTP server on
127.0.0.1 (``TDFUSION_MIRROR``), downloaded into ``TDFUSION_HOME``, verified, cached."""
from __future__ import annotations

import functools
import hashlib
import http.server
import shutil
import socket
import sys
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from tdfusion import hub
from tdfusion.cli import main


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep the test output clean
        pass

    def do_GET(self):
        self.server.requests.append(self.path)
        super().do_GET()


@pytest.fixture
def server(shared_data, tmp_path, monkeypatch):
    """A server with the real ReFusion_IVIF.pth, a corrupt ReFusion_MIF.pth and, as an
    unverifiable TDFusion file, a copy of ReFusion_MFIF.pth named TDFusion_MSRS.pth."""
    root = tmp_path / "served"
    root.mkdir()
    models = shared_data / "refusion" / "models"
    shutil.copy(models / "ReFusion_IVIF.pth", root)
    data = bytearray((models / "ReFusion_MIF.pth").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (root / "ReFusion_MIF.pth").write_bytes(bytes(data))
    shutil.copy(models / "ReFusion_MFIF.pth", root / "TDFusion_MSRS.pth")
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(root)))
    httpd.requests = []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("TDFUSION_MIRROR", f"http://127.0.0.1:{httpd.server_address[1]}")
    monkeypatch.setenv("TDFUSION_HOME", str(tmp_path / "home"))
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _pair(shared_data, tmp_path):
    cases = shared_data / "refusion" / "test_cases" / "IVIF"
    for side, folder in (("a", "infrared"), ("b", "visible")):
        img = cv2.imread(str(cases / folder / "00710N.png"), cv2.IMREAD_UNCHANGED)[200:264, 300:380]
        cv2.imwrite(str(tmp_path / f"{side}.png"), img)
    return tmp_path / "a.png", tmp_path / "b.png"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_table_checksums_match_the_published_byte_copies(shared_data):
    for task in ("IVIF", "MIF", "MFIF", "MEIF"):
        path = shared_data / "refusion" / "models" / f"ReFusion_{task}.pth"
        assert hub.MODELS[f"refusion-{task.lower()}"].sha256 == _sha(path)
    assert all(hub.MODELS[f"tdfusion-{d}"].sha256 is None for d in ("msrs", "fmb", "m3fd", "llvip"))


def test_fuse_by_name_downloads_verifies_and_caches(server, shared_data, tmp_path, capsys):
    a, b = _pair(shared_data, tmp_path)
    for out in ("first.png", "second.png"):
        assert main(["fuse", "--checkpoint", "refusion-ivif", "--a", str(a), "--b", str(b),
                     "--out", str(tmp_path / out), "--device", "cpu"]) == 0
    cached = tmp_path / "home" / "models" / "ReFusion_IVIF.pth"
    assert _sha(cached) == _sha(shared_data / "refusion" / "models" / "ReFusion_IVIF.pth")
    assert server.requests == ["/ReFusion_IVIF.pth"]  # the second run used the cache
    # The downloaded model is the published one: same output as fusing with the local file.
    assert main(["fuse", "--checkpoint", str(shared_data / "refusion" / "models" / "ReFusion_IVIF.pth"),
                 "--a", str(a), "--b", str(b), "--out", str(tmp_path / "local.png"), "--device", "cpu"]) == 0
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "first.png")), cv2.imread(str(tmp_path / "local.png")))


def test_corrupt_download_is_rejected_and_not_cached(server, shared_data, tmp_path, capsys):
    a, b = _pair(shared_data, tmp_path)
    code = main(["fuse", "--checkpoint", "refusion-mif", "--a", str(a), "--b", str(b),
                 "--out", str(tmp_path / "out.png"), "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "sha256" in err[0] and "discarded" in err[0]
    models = tmp_path / "home" / "models"
    assert list(models.iterdir()) == []  # neither the file nor a temporary
    assert not (tmp_path / "out.png").exists()


def test_damaged_cache_is_downloaded_again(server, shared_data, tmp_path):
    cached = tmp_path / "home" / "models" / "ReFusion_IVIF.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"damaged")
    path = hub.resolve_checkpoint("refusion-ivif", quiet=True)
    assert path == cached and _sha(cached) == hub.MODELS["refusion-ivif"].sha256


def test_unknown_checksum_is_said_not_invented(server, capsys):
    path = hub.resolve_checkpoint("tdfusion-msrs")
    out = capsys.readouterr().out
    assert path.is_file() and "sha256 unknown" in out and "not verified" in out


def test_offline_is_one_clear_error(tmp_path, monkeypatch, shared_data, capsys):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("TDFUSION_MIRROR", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("TDFUSION_HOME", str(tmp_path / "home"))
    a, b = _pair(shared_data, tmp_path)
    code = main(["fuse", "--checkpoint", "refusion-ivif", "--a", str(a), "--b", str(b),
                 "--out", str(tmp_path / "o.png"), "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "cannot download refusion-ivif" in err[0] and "ReFusion_IVIF.pth" in err[0]
    assert not (tmp_path / "home" / "models" / "ReFusion_IVIF.pth").exists()


def test_mirror_may_be_a_folder_and_paths_still_win(shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv("TDFUSION_MIRROR", str(shared_data / "refusion" / "models"))
    monkeypatch.setenv("TDFUSION_HOME", str(tmp_path / "home"))
    assert hub.resolve_checkpoint("refusion-meif", quiet=True).parent == tmp_path / "home" / "models"
    monkeypatch.chdir(tmp_path)
    Path("refusion-ivif").write_bytes(b"a local file of that name")
    assert hub.resolve_checkpoint("refusion-ivif") == Path("refusion-ivif")


def test_default_cache_is_the_user_cache_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("TDFUSION_HOME", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    if not sys.platform.startswith("linux"):
        pytest.skip("XDG_CACHE_HOME is the user cache folder on Linux only")
    assert hub.cache_dir() == tmp_path / "xdg" / "tdfusion" / "models"
