"""Report pages in a real browser (issue 15, item 6): the system Chromium, driven by
Selenium, loads a 20-image report of real MSRS pairs; every image must load, every link
must resolve, and the page (HTML and the images it shows) must weigh under 3 MB. The same
check run on a deliberately broken copy must fail, so it can fail.

.ci/run installs Chromium and its driver (Debian: chromium, chromium-driver); elsewhere
the test skips, saying why."""
from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
import torch

from tdfusion.checkpoint import module_record, save_checkpoint
from tdfusion.cli import main
from tdfusion.nets import create_model

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
DRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def report(shared_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    torch.manual_seed(0)
    ckpt = root / "run.pt"
    save_checkpoint({"fusion": module_record("fusion", create_model("fusion", dim=4, num_blocks=1, heads=2)),
                     "lossgen": module_record("lossgen", create_model("lossgen", dim=4, num_blocks=1, heads=2,
                                                                      pairs=2))}, ckpt)
    msrs = shared_data / "msrs_det" / "test"
    out = root / "page"
    # Two "methods" (the sources themselves stand in for fused results) and G's two maps.
    assert main(["report", "--a", str(msrs / "ir"), "--b", str(msrs / "vi"), "--fused", str(msrs / "vi"),
                 str(msrs / "ir"), "--names", "m1", "m2", "--checkpoint", str(ckpt), "--no-metrics", "--quiet",
                 "--out", str(out), "--device", "cpu"]) == 0
    return out


def _page_weight(folder: Path) -> int:
    import re

    page = (folder / "index.html").read_text()
    shown = set(re.findall(r'<img src="([^"]+)"', page))
    return len(page.encode()) + sum((folder / unquote(src)).stat().st_size for src in shown)


def test_twenty_image_page_weighs_under_3_mb(report):
    assert len(list((report / "sheets").iterdir())) == 20
    assert _page_weight(report) < 3 * 1024 * 1024


def _browser():
    if CHROMIUM is None or DRIVER is None:
        pytest.skip("no Chromium/chromedriver on this machine (Debian: apt-get install chromium chromium-driver)")
    pytest.importorskip("selenium", reason="selenium not installed (pip install -e '.[test]')")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--allow-file-access-from-files", "--window-size=1280,900"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(DRIVER), options=options)


def page_problems(driver, index: Path) -> list[str]:
    """What a reader would see broken: images that fail to load, links to nothing, no title."""
    driver.get(index.as_uri())
    problems = []
    if not driver.title.strip():
        problems.append("no title")
    broken = driver.execute_script(
        "return Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src)")
    problems += [f"image does not load: {src}" for src in broken]
    for href in driver.execute_script("return Array.from(document.links).map(a => a.href)"):
        url = urlparse(href)
        if url.scheme == "file" and not Path(unquote(url.path)).is_file():
            problems.append(f"link to nothing: {href}")
    if driver.execute_script("return document.images.length") == 0:
        problems.append("no images")
    return problems


def test_report_renders_in_chromium_and_the_check_catches_breakage(report, tmp_path):
    driver = _browser()
    try:
        assert page_problems(driver, report / "index.html") == []
        # The same page with one sheet and one full-resolution panel gone must be caught.
        broken = tmp_path / "broken"
        shutil.copytree(report, broken)
        next((broken / "sheets").iterdir()).unlink()
        next((broken / "full").iterdir()).joinpath("0_A__ir.png").unlink()
        found = page_problems(driver, broken / "index.html")
        assert any(p.startswith("image does not load") for p in found)
        assert any(p.startswith("link to nothing") for p in found)
    finally:
        driver.quit()


def test_links_open_full_resolution_panels_with_the_one_colour_map(report, shared_data):
    import cv2
    import numpy as np

    from tdfusion.api import loss_weight_maps
    from tdfusion.checkpoint import load_checkpoint, load_module
    from tdfusion.io import read_image

    stem = sorted(p.name for p in (report / "full").iterdir())[0]
    panels = report / "full" / stem
    msrs = shared_data / "msrs_det" / "test"
    a, b = read_image(msrs / "ir" / f"{stem}.png"), read_image(msrs / "vi" / f"{stem}.png")
    assert cv2.imread(str(panels / "0_A__ir.png")).shape[:2] == a.size == (480, 640)
    # G's map as report --checkpoint shows it: viridis, as in the training samples.
    lossgen = load_module(load_checkpoint(report.parent / "run.pt"), "lossgen").eval()
    w = loss_weight_maps(lossgen, a.pixels, b.pixels)["w_a"]
    expected = cv2.applyColorMap(np.clip(np.rint(w * 255), 0, 255).astype(np.uint8), cv2.COLORMAP_VIRIDIS)
    np.testing.assert_array_equal(cv2.imread(str(panels / "4_w_A__intensity.png")), expected)
    page = (report / "index.html").read_text()
    assert f'href="full/{stem}/4_w_A__intensity.png"' in page


def test_report_records_its_provenance(report):
    import hashlib

    page = (report / "index.html").read_text()
    sha = hashlib.sha256((report.parent / "run.pt").read_bytes()).hexdigest()
    assert sha in page and "tdfusion report --a " in page and "UTC" in page and ">0.1.0<" in page
