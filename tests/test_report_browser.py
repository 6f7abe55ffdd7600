"""Report pages in a real browser (issue 15, item 6): the system Chromium, driven by
Selenium, loads a 20-image report of real MSRS pairs; every image must load, every link
must resolve, and the page (HTML and the images it shows) must weigh under 3 MB. The same
check run on a deliberately broken copy must fail, so it can fail.

Issue 24: the page's viewer works there with real input events (mouse wheel, drags, clicks):
wheel and drag zoom and pan every panel of a row alike, a reset undoes it, the swipe view
shows the two picked panels on either side of a divider that the slider or a drag moves,
and a training report's small panels open at their native size on a click.

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
from conftest import train_tiny_recon

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


def _browser(profile: Path):
    """Headless Chromium with a fresh profile in ``profile``, nothing fetched from the network."""
    if CHROMIUM is None or DRIVER is None:
        pytest.skip("no Chromium/chromedriver on this machine (Debian: apt-get install chromium chromium-driver)")
    pytest.importorskip("selenium", reason="selenium not installed (pip install -e '.[test]')")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", f"--user-data-dir={profile}",
                "--allow-file-access-from-files", "--window-size=1280,900"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(DRIVER), options=options)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    driver = _browser(tmp_path_factory.mktemp("chromium-profile"))
    try:
        yield driver
    finally:
        driver.quit()


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


def test_report_renders_in_chromium_and_the_check_catches_breakage(report, browser, tmp_path):
    driver = browser
    assert page_problems(driver, report / "index.html") == []
    # The same page with one shown panel and one full-resolution panel gone must be caught.
    broken = tmp_path / "broken"
    shutil.copytree(report, broken)
    next((broken / "thumbs").iterdir()).joinpath("1_B__vi.jpg").unlink()
    next((broken / "full").iterdir()).joinpath("0_A__ir.png").unlink()
    found = page_problems(driver, broken / "index.html")
    assert any(p.startswith("image does not load") for p in found)
    assert any(p.startswith("link to nothing") for p in found)


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


# -- issue 24: the viewer (zoom and pan in sync, swipe, full size) ---------------------------------

IDENTITY = "matrix(1, 0, 0, 1, 0, 0)"


def _row(driver, index: Path, n: int = 0):
    driver.get(index.as_uri())
    rows = driver.find_elements("css selector", ".viewer.ready")
    assert len(rows) > n, "the viewer script did not run"
    row = rows[n]
    driver.execute_script("arguments[0].scrollIntoView()", row)
    return row


def _transforms(driver, row) -> list[str]:
    """The transform each panel of ``row`` is drawn with (the swipe view's two layers included)."""
    return driver.execute_script(
        "return Array.from(arguments[0].querySelectorAll('.stage')).map(s => getComputedStyle(s).transform)", row)


def _scale(matrix: str) -> float:
    return float(matrix.removeprefix("matrix(").split(",")[0])


def test_wheel_and_drag_zoom_and_pan_every_panel_of_the_row(report, browser):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.actions.wheel_input import ScrollOrigin

    row = _row(browser, report / "index.html")
    panels = row.find_elements("css selector", ".panel:not(.swipe) .view")
    assert len(panels) == 6 and len(_transforms(browser, row)) == 8   # 6 panels + the swipe's 2 layers
    assert set(_transforms(browser, row)) == {IDENTITY}

    # The wheel over the third panel zooms in, about the pointer: every panel alike.
    ActionChains(browser).scroll_from_origin(ScrollOrigin.from_element(panels[2], 30, 20), 0, -400).perform()
    zoomed = _transforms(browser, row)
    assert len(set(zoomed)) == 1 and _scale(zoomed[0]) > 1.5, zoomed
    # Zoomed in, the panels show the lossless PNGs instead of the JPEG thumbnails.
    sources = browser.execute_script("return Array.from(arguments[0].querySelectorAll('.stage img'))"
                                     ".map(i => [i.currentSrc, i.naturalWidth])", row)
    assert all(src.endswith(".png") and width == 640 for src, width in sources), sources

    # A drag on another panel pans them all by the same amount; other rows stay as they were.
    ActionChains(browser).click_and_hold(panels[4]).move_by_offset(-60, -40).release().perform()
    panned = _transforms(browser, row)
    assert len(set(panned)) == 1 and panned[0] != zoomed[0], (zoomed, panned)
    assert _scale(panned[0]) == _scale(zoomed[0])
    other = browser.find_elements("css selector", ".viewer")[1]
    assert set(_transforms(browser, other)) == {IDENTITY}

    row.find_element("css selector", "button.zoom-reset").click()
    assert set(_transforms(browser, row)) == {IDENTITY}


def test_swipe_shows_the_two_picked_panels_either_side_of_the_divider(report, browser):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.support.ui import Select

    row = _row(browser, report / "index.html", 1)
    stem = row.find_element("xpath", "./ancestor::section").get_attribute("id")
    Select(row.find_element("css selector", "select.swipe-left")).select_by_visible_text("m2")
    Select(row.find_element("css selector", "select.swipe-right")).select_by_visible_text("B: vi")
    view = row.find_element("css selector", ".swipe-view")

    def state():
        """The overlay's clip and which picture a reader sees 10 px left and right of the divider."""
        return browser.execute_script("""
            const view = arguments[0], over = view.querySelector('.swipe-over');
            const r = view.getBoundingClientRect(), h = view.querySelector('.swipe-handle').getBoundingClientRect();
            const x = h.left + h.width / 2, y = r.top + r.height / 2;
            const at = px => { const el = document.elementFromPoint(px, y);
                               return el.tagName === 'IMG' ? el.getAttribute('src') : el.className; };
            return [getComputedStyle(over).clipPath, (x - r.left) / r.width, at(x - 14), at(x + 14)];""", view)

    clip, where, left, right = state()
    assert clip == "inset(0px 50% 0px 0px)" and abs(where - 0.5) < 0.01
    assert (left, right) == (f"thumbs/{stem}/3_m2.jpg", f"thumbs/{stem}/1_B__vi.jpg")

    # The slider moves the divider (keyboard: the range input's own arrows).
    slider = row.find_element("css selector", "input.swipe-pos")
    browser.execute_script("arguments[0].value = 80; arguments[0].dispatchEvent(new Event('input'))", slider)
    clip, where, left, right = state()
    assert clip == "inset(0px 20% 0px 0px)" and abs(where - 0.8) < 0.01
    assert (left, right) == (f"thumbs/{stem}/3_m2.jpg", f"thumbs/{stem}/1_B__vi.jpg")

    # Dragging the divider with the mouse moves it (and the slider) too.
    handle = row.find_element("css selector", ".swipe-handle")
    width = view.size["width"]
    ActionChains(browser).click_and_hold(handle).move_by_offset(-round(0.6 * width), 0).release().perform()
    clip, where, left, right = state()
    assert abs(where - 0.2) < 0.02, where
    assert clip.startswith("inset(0px 8") and clip != "inset(0px 20% 0px 0px)", clip
    assert abs(float(slider.get_attribute("value")) - 20) < 2
    assert (left, right) == (f"thumbs/{stem}/3_m2.jpg", f"thumbs/{stem}/1_B__vi.jpg")




@pytest.fixture(scope="module")
def training_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "run"
    return train_tiny_recon(out, (48, 64))


def test_training_report_panels_open_at_full_size(training_run, browser):
    assert page_problems(browser, training_run / "report" / "index.html") == []
    row = _row(browser, training_run / "report" / "index.html")

    def sizes(expected):
        # Poll: a click swaps in the full-size PNGs, which load (and lay out) asynchronously.
        import time

        deadline = time.monotonic() + 10
        while True:
            found = browser.execute_script(
                "return Array.from(arguments[0].querySelectorAll('.panel:not(.swipe) img'))"
                ".map(i => [i.clientWidth, i.clientHeight, i.naturalWidth, i.naturalHeight])", row)
            found = {tuple(s[:len(expected)]) for s in found}
            if found == {expected} or time.monotonic() > deadline:
                return found
            time.sleep(0.1)

    assert sizes((43, 32)) == {(43, 32)}           # thumbnails
    row.find_elements("css selector", ".panel:not(.swipe) .view")[2].click()   # a click on the fused panel
    assert sizes((64, 48, 64, 48)) == {(64, 48, 64, 48)}          # every panel of the row, 1:1
    assert row.find_element("css selector", "button.native").get_attribute("aria-pressed") == "true"
    row.find_element("css selector", "button.native").click()
    assert sizes((43, 32)) == {(43, 32)}


def test_the_viewer_script_ships_with_the_package_and_is_inlined(report):
    import re
    import tomllib

    from tdfusion.report_html import SCRIPT, viewer_script

    meta = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert SCRIPT in meta["tool"]["setuptools"]["package-data"]["tdfusion"]
    page = (report / "index.html").read_text()
    assert f"<script>{viewer_script()}</script>" in page
    assert not re.search(r'(src|href)="(https?:)?//', page) and "<script src" not in page and "<link" not in page
