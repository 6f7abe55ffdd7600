"""Visual reports: PNG contact sheets and one offline HTML page with the metric tables.

A report is a folder::

    index.html            summary table (metric means per method) + one section per image
    sheets/<stem>.png     contact sheet: A | B | each method (| G's weight maps), labelled
    crops/<stem>.png      the same panels cropped to a region of interest (optional)
    metrics.json, .csv    the values shown, in the ``tdfusion metrics`` format
    .tdfusion-report      marker: lets a later run replace this folder, and nothing else

It is built in a temporary folder next to the destination and renamed into place at the
end, so an interrupted run leaves either the previous report or none. The page links
only files inside the folder (no scripts, fonts or styles from elsewhere), so it works
offline and can be copied around as a whole.

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
from .io import file_umask, write_image
from .metrics.evaluate import METRIC_NAMES
from .metrics.folders import csv_text

__all__ = ["MARKER", "ReportEntry", "check_destination", "contact_sheet", "to_display", "write_report"]

MARKER = ".tdfusion-report"
_LABEL_HEIGHT = 26
_GAP = 4


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
        out = np.clip(np.rint(x.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)
    if out.ndim == 2:
        out = np.repeat(out[:, :, None], 3, axis=2)
    return np.ascontiguousarray(out)


def _labelled(tile: np.ndarray, label: str) -> np.ndarray:
    """Put a black strip with ``label`` above a uint8 RGB tile (OpenCV's built-in Hershey
    font: nothing to load or download)."""
    h, w = tile.shape[:2]
    strip = np.zeros((_LABEL_HEIGHT, w, 3), np.uint8)
    font, scale, thick = cv2.FONT_HERSHEY_SIMPLEX, 0.55, 1
    text = label
    # Shorten long labels until they fit the tile width.
    while text and cv2.getTextSize(text, font, scale, thick)[0][0] > w - 8:
        text = text[:-2] + "~" if len(text) > 2 else ""
    cv2.putText(strip, text, (4, _LABEL_HEIGHT - 8), font, scale, (255, 255, 255), thick, cv2.LINE_AA)
    return np.concatenate([strip, tile], axis=0)


def contact_sheet(panels: Sequence[tuple[str, np.ndarray]], height: int = 320, columns: int = 4,
                  crop: tuple[int, int, int, int] | None = None, mark: tuple[int, int, int, int] | None = None
                  ) -> np.ndarray:
    """Labelled grid of panels, each resized to ``height`` pixels (aspect kept).

    Args:
        panels: ``[(label, pixels)]``, pixels as accepted by :func:`to_display`, same size.
        height: panel height in the sheet.
        columns: panels per row; more panels wrap onto further rows.
        crop: ``(x, y, w, h)`` in image pixels: show only this region of every panel.
        mark: ``(x, y, w, h)``: draw this rectangle on every panel (where a crop comes from).
    Returns:
        uint8 RGB ``(rows * (height + label), cols * width + gaps, 3)``; gaps are white.
    """
    if not panels:
        raise ValueError("no panels")
    tiles = []
    for label, pixels in panels:
        img = to_display(pixels)
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
        tiles.append(_labelled(img, label))
    tile_h = max(t.shape[0] for t in tiles)
    tile_w = max(t.shape[1] for t in tiles)
    cols = max(1, min(columns, len(tiles)))
    rows = -(-len(tiles) // cols)
    sheet = np.full((rows * tile_h + (rows - 1) * _GAP, cols * tile_w + (cols - 1) * _GAP, 3), 255, np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        y0, x0 = r * (tile_h + _GAP), c * (tile_w + _GAP)
        sheet[y0:y0 + tile.shape[0], x0:x0 + tile.shape[1]] = tile
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


def _fmt(v: float | None) -> str:
    return "" if v is None else f"{v:.4f}"


def _metric_table(rows: Mapping[str, Mapping[str, float]], caption: str | None = None,
                  count: Mapping[str, int] | None = None) -> str:
    """HTML table: methods as rows, metrics as columns, best (highest) per column bold."""
    from .results import best_at_precision

    names = [n for n in METRIC_NAMES if any(n in v for v in rows.values())]
    methods = list(rows)
    best = {n: best_at_precision([rows[m].get(n) for m in methods]) for n in names}
    head = "<tr><th>method</th>" + ("<th>images</th>" if count else "") + \
           "".join(f"<th>{html.escape(n)}</th>" for n in names) + "</tr>"
    body = []
    for row, (method, values) in enumerate(rows.items()):
        cells = []
        for n in names:
            v = values.get(n)
            is_best = row in best[n]
            cells.append(f'<td class="best">{_fmt(v)}</td>' if is_best else f"<td>{_fmt(v)}</td>")
        images = f"<td>{count[method]}</td>" if count else ""
        body.append(f"<tr><th>{html.escape(method)}</th>{images}{''.join(cells)}</tr>")
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return f'<table class="metrics">{cap}<thead>{head}</thead><tbody>{"".join(body)}</tbody></table>'


_CSS = """
body{font-family:sans-serif;margin:1.5em;color:#222}
table.metrics{border-collapse:collapse;margin:.5em 0 1em}
table.metrics td,table.metrics th{border:1px solid #bbb;padding:.2em .6em;text-align:right}
table.metrics th:first-child{text-align:left}
td.best{font-weight:bold;background:#dff3d8}
caption{text-align:left;font-weight:bold;padding:.3em 0}
section{margin-bottom:2.5em}
img{max-width:100%;height:auto;border:1px solid #ccc}
.note{color:#666;font-size:.9em}
"""


def _href(*parts: str) -> str:
    return "/".join(quote(p) for p in parts)


def write_report(out: str | os.PathLike, entries: Iterable[ReportEntry], *,
                 summary: Mapping | None = None, title: str = "tdfusion report",
                 notes: Sequence[str] = (), height: int = 320, columns: int = 4,
                 crop: tuple[int, int, int, int] | None = None) -> Path:
    """Write a report folder atomically (see the module docstring for its layout).

    Args:
        out: destination folder; replaced if it is a previous report, refused if it is
            any other non-empty folder.
        entries: the images, one :class:`ReportEntry` each (consumed lazily).
        summary: results in the ``tdfusion metrics`` shape
            ``{method: {"mean": {...}, "per_image": {...}}}``, shown on top and saved
            as metrics.json / metrics.csv.
        notes: lines of plain text shown under the title (e.g. the conventions used).
        height, columns: panel height and panels per row in the contact sheets.
        crop: ``(x, y, w, h)``: also write zoomed crops of that region.
    """
    import json

    out = check_destination(out).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        sections = []
        for entry in entries:
            sheet = contact_sheet(entry.panels, height, columns, mark=crop)
            write_image(tmp / "sheets" / f"{entry.stem}.png", sheet)
            parts = [f'<section id="{html.escape(entry.stem, quote=True)}"><h2>{html.escape(entry.stem)}</h2>',
                     f'<a href="{_href("sheets", entry.stem + ".png")}">'
                     f'<img src="{_href("sheets", entry.stem + ".png")}" alt="{html.escape(entry.stem)} panels"></a>']
            if crop is not None:
                h, w = np.asarray(entry.panels[0][1]).shape[:2]
                x, y, cw, ch = crop
                if x >= w or y >= h:
                    raise TDFusionError(f"--crop {x},{y},{cw},{ch}: outside the {w}x{h} image {entry.stem}")
                zoom = contact_sheet(entry.panels, height, columns, crop=crop)
                write_image(tmp / "crops" / f"{entry.stem}.png", zoom)
                parts.append(f'<p class="note">crop x={x} y={y} w={cw} h={ch}</p>'
                             f'<img src="{_href("crops", entry.stem + ".png")}" alt="{html.escape(entry.stem)} crops">')
            if entry.metrics:
                parts.append(_metric_table(entry.metrics))
            parts.append("</section>")
            sections.append("".join(parts))

        head = [f"<h1>{html.escape(title)}</h1>"]
        head += [f'<p class="note">{html.escape(n)}</p>' for n in notes]
        if summary:
            head.append(_metric_table({m: b["mean"] for m, b in summary.items()}, "mean over images",
                                      {m: len(b["per_image"]) for m, b in summary.items()}))
            head.append('<p class="note">values: <a href="metrics.json">metrics.json</a>, '
                        '<a href="metrics.csv">metrics.csv</a></p>')
            (tmp / "metrics.json").write_text(json.dumps({"methods": summary}, indent=2) + "\n")
            (tmp / "metrics.csv").write_text(csv_text(summary))
        page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>\n"
                + "\n".join(head) + "\n" + "\n".join(sections) + "\n</body></html>\n")
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
