"""Visual reports: PNG contact sheets and one offline HTML page with the metric tables.

A report is a folder::

    index.html            provenance (command, version, checkpoint sha256, date), summary table
                          (metric means per method) + one section per image: its panels in
                          a viewer (synchronised zoom and pan, a swipe between two panels,
                          full size on a click; see :mod:`tdfusion.report_html`)
    thumbs/<stem>/*.jpg   the panels shown, ``height`` px high: JPEG keeps the page light
    full/<stem>/*.png     every panel at full resolution (loaded when zoomed or at full size)
    sheets/<stem>.jpg     contact sheet: A | B | each method (| G's weight maps), labelled, with
                          a colour bar under G's maps (one image to share; linked)
    colour_bar.png        the weight maps' colour bar, when there are maps
    crops/<stem>.png      the same panels cropped to a region of interest (optional)
    metrics.json, .csv    the values shown, in the ``tdfusion metrics`` format
    .tdfusion-report      marker: lets a later run replace this folder, and nothing else

It is built in a temporary folder next to the destination and renamed into place at the
end, so an interrupted run leaves either the previous report or none. The page links
only files inside the folder (its script and styles are inlined; no fonts or scripts from
elsewhere), so it works offline, from a file:// URL, and can be copied around as a whole.

Training code can produce the same kind of report from in-memory images through
:func:`write_report` and :class:`ReportEntry`.
"""
from __future__ import annotations

import contextlib
import html
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence
from urllib.parse import quote

import cv2
import numpy as np

from .errors import TDFusionError
from .io import file_umask, to_integer, write_image
from .metrics.folders import csv_text
from .report_html import (COLOUR_BAR, HOW_TO, STYLE, Shown, href, metric_table, safe_name, viewer_row,
                          viewer_script)

__all__ = ["MARKER", "ReportEntry", "check_destination", "colour_bar", "contact_sheet", "is_weight_map",
           "provenance", "sample_sheet", "to_display", "weight_map_rgb", "write_report"]

MARKER = ".tdfusion-report"
_LABEL_HEIGHT = 26
_GAP = 4
_BAR_HEIGHT = 14
#: The one colour map of G's weight maps, in every sheet and report (perceptually uniform,
#: readable in grey print and by colour-blind readers).
WEIGHT_COLORMAP = cv2.COLORMAP_VIRIDIS
#: JPEG quality of the panels shown on the page and of the sheets (full-resolution panels stay PNG).
_THUMB_QUALITY = 85


def is_weight_map(label: str) -> bool:
    """Panels labelled ``w_A``/``v_A`` (optionally followed by a description) are G's maps."""
    return label.split(" ")[0] in ("w_A", "v_A")


def weight_map_rgb(x: np.ndarray) -> np.ndarray:
    """A weight map in [0, 1] ``(H, W)`` -> uint8 RGB in :data:`WEIGHT_COLORMAP`."""
    u8 = to_integer(np.asarray(x, np.float32), 8)
    return np.ascontiguousarray(cv2.applyColorMap(u8, WEIGHT_COLORMAP)[:, :, ::-1])


def _panel_rgb(label: str, pixels: np.ndarray) -> np.ndarray:
    x = np.asarray(pixels)
    if is_weight_map(label) and x.ndim == 2 and x.dtype != np.uint8:
        return weight_map_rgb(x)
    return to_display(x)


def colour_bar(width: int) -> np.ndarray:
    """uint8 RGB strip explaining the weight maps' colours: 0 (all weight on B) to 1 (all on A)."""
    width = max(width, 240)
    ramp = weight_map_rgb(np.tile(np.linspace(0.0, 1.0, width, dtype=np.float32), (_BAR_HEIGHT, 1)))
    text = np.full((_LABEL_HEIGHT, width, 3), 255, np.uint8)
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, 0.45
    cv2.putText(text, "0: all weight on B", (2, 17), font, scale, (0, 0, 0), 1, cv2.LINE_AA)
    right = "1: all weight on A"
    tw = cv2.getTextSize(right, font, scale, 1)[0][0]
    cv2.putText(text, right, (width - tw - 2, 17), font, scale, (0, 0, 0), 1, cv2.LINE_AA)
    mid = "G's weight for A"
    mw = cv2.getTextSize(mid, font, scale, 1)[0][0]
    if width > 3 * mw:
        cv2.putText(text, mid, ((width - mw) // 2, 17), font, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([ramp, text], axis=0)


def _with_colour_bar(sheet: np.ndarray) -> np.ndarray:
    bar = colour_bar(min(sheet.shape[1], 480))
    pad = np.full((bar.shape[0] + _GAP, sheet.shape[1], 3), 255, np.uint8)
    pad[_GAP:, :min(bar.shape[1], sheet.shape[1])] = bar[:, :sheet.shape[1]]
    return np.concatenate([sheet, pad], axis=0)


def sample_sheet(rows: Sequence[tuple[str, Sequence[tuple[str, np.ndarray]]]]) -> np.ndarray:
    """Training samples as one image: a labelled row per pair at native size, and a colour
    bar when the rows hold G's maps. ``rows``: ``[(stem, [(label, pixels)])]``; each row's
    stem follows its first label (``A  00012``, in :data:`NAME_COLOUR`)."""
    sheets = [contact_sheet(panels, height=np.asarray(panels[0][1]).shape[0], columns=len(panels),
                            colour_bar=False, name=stem) for stem, panels in rows]
    width = max(s.shape[1] for s in sheets)
    padded = [np.pad(s, ((0, _GAP), (0, width - s.shape[1]), (0, 0)), constant_values=255) for s in sheets]
    sheet = np.concatenate(padded, axis=0)[:-_GAP]
    if any(is_weight_map(label) for _, panels in rows for label, _ in panels):
        sheet = _with_colour_bar(sheet)
    return np.ascontiguousarray(sheet)


def provenance(checkpoint: str | os.PathLike | None = None, command: Sequence[str] | None = None) -> dict[str, str]:
    """What a report was made from: the command line, the tdfusion version, the date (UTC)
    and, given a checkpoint file, its path and sha256."""
    import datetime
    import shlex
    import sys

    from . import __version__

    from . import cli

    argv = list(command or cli.CURRENT_COMMAND or sys.argv)
    info = {"command": shlex.join(argv), "tdfusion": __version__,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")}
    if checkpoint is not None and Path(checkpoint).is_file():
        from .hub import file_sha256

        info["checkpoint"] = str(checkpoint)
        info["checkpoint sha256"] = file_sha256(checkpoint)
    return info


@dataclass
class ReportEntry:
    """One row of a report.

    ``panels``: ``[(label, pixels)]`` with pixels float in [0, 1] (``(H, W)`` grey or
    ``(H, W, 3)`` RGB) or uint8, all the same height and width, shown left to right.
    ``metrics``: ``{method: {metric: value}}`` for this image (may be empty).
    """

    stem: str
    panels: list[tuple[str, np.ndarray]]
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)


def to_display(pixels: np.ndarray) -> np.ndarray:
    """Float [0, 1] or integer pixels -> uint8 RGB ``(H, W, 3)``."""
    x = np.asarray(pixels)
    if x.dtype == np.uint8:
        out = x
    elif x.dtype == np.uint16:
        out = np.rint(x.astype(np.float32) / 257.0).astype(np.uint8)
    else:
        out = to_integer(x.astype(np.float32), 8)
    if out.ndim == 2:
        out = np.repeat(out[:, :, None], 3, axis=2)
    return np.ascontiguousarray(out)


#: Colour of a row's pair name in the label strip (the panel labels are white).
NAME_COLOUR = (255, 200, 40)


def _labelled(tile: np.ndarray, label: str, name: str | None = None) -> np.ndarray:
    """Put a black strip with ``label`` above a uint8 RGB tile (OpenCV's built-in Hershey
    font: nothing to load or download). ``name`` (a pair's stem) follows the label in
    :data:`NAME_COLOUR`, smaller and then shortened from the left (``~0012``) if the tile is
    narrow: numbered stems differ at their end."""
    h, w = tile.shape[:2]
    strip = np.zeros((_LABEL_HEIGHT, w, 3), np.uint8)
    font, scale, thick = cv2.FONT_HERSHEY_SIMPLEX, 0.55, 1
    text = label
    # Shorten long labels until they fit the tile width.
    while text and cv2.getTextSize(text, font, scale, thick)[0][0] > w - 8:
        text = text[:-2] + "~" if len(text) > 2 else ""
    cv2.putText(strip, text, (4, _LABEL_HEIGHT - 8), font, scale, (255, 255, 255), thick, cv2.LINE_AA)
    if name:
        x = 4 + (cv2.getTextSize(text, font, scale, thick)[0][0] + 8 if text else 0)
        room = w - 4 - x
        size = scale
        while size > 0.36 and cv2.getTextSize(name, font, size, thick)[0][0] > room:
            size -= 0.05
        while name and cv2.getTextSize(name, font, size, thick)[0][0] > room:
            name = "~" + name[2:] if len(name) > 2 else ""
        if name:
            cv2.putText(strip, name, (x, _LABEL_HEIGHT - 8), font, size, NAME_COLOUR, thick, cv2.LINE_AA)
    return np.concatenate([strip, tile], axis=0)


def contact_sheet(panels: Sequence[tuple[str, np.ndarray]], height: int = 320, columns: int = 4,
                  crop: tuple[int, int, int, int] | None = None, mark: tuple[int, int, int, int] | None = None,
                  colour_bar: bool = True, name: str | None = None) -> np.ndarray:
    """Labelled grid of panels, each resized to ``height`` pixels (aspect kept).

    G's weight maps (labels ``w_A``/``v_A``, float ``(H, W)``) are drawn in
    :data:`WEIGHT_COLORMAP`, with a colour bar under the grid unless ``colour_bar`` is false.

    Args:
        panels: ``[(label, pixels)]``, pixels as accepted by :func:`to_display`, same size.
        height: panel height in the sheet.
        columns: panels per row; more panels wrap onto further rows.
        crop: ``(x, y, w, h)`` in image pixels: show only this region of every panel.
        mark: ``(x, y, w, h)``: draw this rectangle on every panel (where a crop comes from).
        name: written after the first panel's label (a training sample row's pair stem).
    Returns:
        uint8 RGB ``(rows * (height + label), cols * width + gaps, 3)``; gaps are white.
    """
    if not panels:
        raise ValueError("no panels")
    tiles = []
    for label, pixels in panels:
        img = _panel_rgb(label, pixels)
        if crop is not None:
            x, y, w, h = crop
            img = img[y:y + h, x:x + w]
        scale = height / img.shape[0]
        width = max(1, round(img.shape[1] * scale))
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_NEAREST if crop is not None else cv2.INTER_CUBIC
        img = cv2.resize(img, (width, height), interpolation=interp)
        if mark is not None:
            x, y, w, h = (round(v * scale) for v in mark)
            cv2.rectangle(img, (x, y), (x + w - 1, y + h - 1), (255, 40, 40), 2)
        tiles.append(_labelled(img, label, name if not tiles else None))
    tile_h = max(t.shape[0] for t in tiles)
    tile_w = max(t.shape[1] for t in tiles)
    cols = max(1, min(columns, len(tiles)))
    rows = -(-len(tiles) // cols)
    sheet = np.full((rows * tile_h + (rows - 1) * _GAP, cols * tile_w + (cols - 1) * _GAP, 3), 255, np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        y0, x0 = r * (tile_h + _GAP), c * (tile_w + _GAP)
        sheet[y0:y0 + tile.shape[0], x0:x0 + tile.shape[1]] = tile
    if colour_bar and any(is_weight_map(label) for label, _ in panels):
        sheet = _with_colour_bar(sheet)
    return sheet


def check_destination(out: str | os.PathLike) -> Path:
    """Refuse to replace a non-empty folder that is not a previous report (or a file)."""
    out = Path(out)
    if out.exists():
        if not out.is_dir():
            raise TDFusionError(f"{out}: exists and is not a folder")
        if any(out.iterdir()) and not (out / MARKER).is_file():
            raise TDFusionError(f"{out}: folder exists and is not a tdfusion report; "
                                f"choose another --out or empty it")
    return out


def _thumbnail(rgb: np.ndarray, height: int) -> np.ndarray:
    """A panel for the page: ``height`` px high, never enlarged (the browser scales up)."""
    h, w = rgb.shape[:2]
    if h <= height:
        return rgb
    return cv2.resize(rgb, (max(1, round(w * height / h)), height), interpolation=cv2.INTER_AREA)


def write_report(out: str | os.PathLike, entries: Iterable[ReportEntry], *,
                 summary: Mapping | None = None, title: str = "tdfusion report",
                 notes: Sequence[str] = (), height: int = 320, columns: int = 4,
                 crop: tuple[int, int, int, int] | None = None, provenance: Mapping[str, str] | None = None) -> Path:
    """Write a report folder atomically (see the module docstring for its layout).

    Args:
        out: destination folder; replaced if it is a previous report, refused if it is
            any other non-empty folder.
        entries: the images, one :class:`ReportEntry` each (consumed lazily).
        summary: results in the ``tdfusion metrics`` shape
            ``{method: {"mean": {...}, "per_image": {...}}}``, shown on top and saved
            as metrics.json / metrics.csv.
        notes: lines of plain text shown under the title (e.g. the conventions used).
        height: panel height on the page (JPEG thumbnails; a click shows the native size) and
            in the contact sheets.
        columns: panels per row in the contact sheets.
        crop: ``(x, y, w, h)``: also write zoomed crops of that region.
        provenance: ``{what: value}`` shown at the top (see :func:`provenance`).
    """
    import json

    out = check_destination(out).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        sections = []
        for entry in entries:
            if crop is not None:
                h, w = np.asarray(entry.panels[0][1]).shape[:2]
                x, y, cw, ch = crop
                if x >= w or y >= h:
                    raise TDFusionError(f"--crop {x},{y},{cw},{ch}: outside the {w}x{h} image {entry.stem}")
            sheet = contact_sheet(entry.panels, height, columns, mark=crop)
            write_image(tmp / "sheets" / f"{entry.stem}.jpg", sheet,
                        params=(cv2.IMWRITE_JPEG_QUALITY, _THUMB_QUALITY))
            links, shown = [], []
            for i, (label, pixels) in enumerate(entry.panels):
                name = f"{i}_{safe_name(label)}"
                rgb = _panel_rgb(label, pixels)
                write_image(tmp / "full" / entry.stem / f"{name}.png", rgb)
                write_image(tmp / "thumbs" / entry.stem / f"{name}.jpg", _thumbnail(rgb, height),
                            params=(cv2.IMWRITE_JPEG_QUALITY, _THUMB_QUALITY))
                full = href("full", entry.stem, f"{name}.png")
                links.append(f'<a href="{full}">{html.escape(label)}</a>')
                shown.append(Shown(label, href("thumbs", entry.stem, f"{name}.jpg"), full,
                                   rgb.shape[1], rgb.shape[0]))
            maps = any(is_weight_map(label) for label, _ in entry.panels)
            if maps and not (tmp / COLOUR_BAR).exists():
                write_image(tmp / COLOUR_BAR, colour_bar(480))
            parts = [f'<section id="{html.escape(entry.stem, quote=True)}"><h2>{html.escape(entry.stem)}</h2>',
                     viewer_row(entry.stem, shown, height, crop, maps),
                     f'<p class="note">full resolution: {" · ".join(links)} · contact sheet: '
                     f'<a href="{href("sheets", entry.stem + ".jpg")}">{html.escape(entry.stem)}.jpg</a></p>']
            if crop is not None:
                zoom = contact_sheet(entry.panels, height, columns, crop=crop)
                write_image(tmp / "crops" / f"{entry.stem}.png", zoom)
                parts.append(f'<p class="note">crop x={x} y={y} w={cw} h={ch}</p>'
                             f'<img src="{href("crops", entry.stem + ".png")}" alt="{html.escape(entry.stem)} crops">')
            if entry.metrics:
                parts.append(metric_table(entry.metrics))
            parts.append("</section>")
            sections.append("".join(parts))

        head = [f"<h1>{html.escape(title)}</h1>"]
        if provenance:
            rows = "".join(f"<tr><th>{html.escape(k)}</th><td><code>{html.escape(str(v))}</code></td></tr>"
                           for k, v in provenance.items())
            head.append(f'<table class="provenance"><tbody>{rows}</tbody></table>')
        head += [f'<p class="note">{html.escape(n)}</p>' for n in notes]
        if summary:
            head.append(metric_table({m: b["mean"] for m, b in summary.items()}, "mean over images",
                                     {m: len(b["per_image"]) for m, b in summary.items()}))
            head.append('<p class="note">values: <a href="metrics.json">metrics.json</a>, '
                        '<a href="metrics.csv">metrics.csv</a></p>')
            (tmp / "metrics.json").write_text(json.dumps({"methods": summary}, indent=2) + "\n")
            (tmp / "metrics.csv").write_text(csv_text(summary))
        if sections:
            head.append(f'<p class="note">{html.escape(HOW_TO)}</p>')
        page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>\n"
                + "\n".join(head) + "\n" + "\n".join(sections)
                + f"\n<script>{viewer_script()}</script>\n</body></html>\n")
        (tmp / "index.html").write_text(page, encoding="utf-8")
        (tmp / MARKER).write_text("written by tdfusion report; this folder may be replaced by the next run\n")
        _swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _swap_into_place(tmp: Path, out: Path) -> None:
    """Rename ``tmp`` to ``out``; an existing (checked) ``out`` is moved aside first."""
    # mkdtemp creates a private (0700) folder; a report is meant to be shared. Everything
    # inside it was created with ordinary modes (atomic_write included).
    os.chmod(tmp, 0o777 & ~file_umask())
    if not out.exists():
        os.replace(tmp, out)
        return
    check_destination(out)  # it may have changed while we were working
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
    os.rmdir(old)
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old, out)
        raise
    with contextlib.suppress(OSError):
        shutil.rmtree(old)
