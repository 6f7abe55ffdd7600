"""The HTML of a report page (see :mod:`tdfusion.report`): its style sheet, the metric
tables and one row of panels per image for the viewer script, :file:`report_viewer.js`
(shipped with the package and inlined, so that the page needs nothing from elsewhere).

The viewer (issue 24), per row: the mouse wheel zooms and a drag pans every panel of the
row alike (a button resets); a swipe view shows two panels picked in two menus either side
of a divider, moved with a slider or by dragging it; a click on a panel (or a button) shows
the row at native resolution. Thumbnails are light JPEGs; the lossless PNGs are loaded only
when a row is zoomed or shown at full size.
"""
from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Mapping, Sequence
from urllib.parse import quote

from .metrics.evaluate import METRIC_NAMES

__all__ = ["COLOUR_BAR", "HOW_TO", "STYLE", "Shown", "href", "metric_table", "safe_name", "viewer_row",
           "viewer_script"]


def _fmt(v: float | None) -> str:
    return "" if v is None else f"{v:.4f}"


def metric_table(rows: Mapping[str, Mapping[str, float]], caption: str | None = None,
                 count: Mapping[str, int] | None = None) -> str:
    """HTML table: methods as rows, metrics as columns, best (highest) per column bold."""
    from .evaluation.results import best_at_precision

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


STYLE = """
body{font-family:sans-serif;margin:1.5em;color:#222}
table.metrics{border-collapse:collapse;margin:.5em 0 1em}
table.metrics td,table.metrics th{border:1px solid #bbb;padding:.2em .6em;text-align:right}
table.metrics th:first-child{text-align:left}
td.best{font-weight:bold;background:#dff3d8}
caption{text-align:left;font-weight:bold;padding:.3em 0}
section{margin-bottom:2.5em}
img{max-width:100%;height:auto;border:1px solid #ccc}
.note{color:#666;font-size:.9em}
table.provenance{border-collapse:collapse;font-size:.85em;margin-bottom:1em}
table.provenance th{text-align:left;padding:.1em .8em .1em 0;color:#555}
table.provenance code{word-break:break-all}
.viewer{margin:.4em 0}
.viewer .tools{display:none;flex-wrap:wrap;align-items:center;gap:.4em .8em;font-size:.85em;margin:.3em 0}
.viewer.ready .tools{display:flex}
.viewer .panels{display:flex;flex-wrap:wrap;gap:4px;align-items:flex-start}
.viewer.native .panels{overflow-x:auto}
.panel{margin:0}
.panel figcaption{background:#111;color:#fff;font-size:.85em;padding:.15em .4em;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
.viewer:not(.ready) .panel.swipe{display:none}
.panel.swipe figcaption{background:#2a4d8f}
.view{position:relative;overflow:hidden;max-width:100%;background:#000;cursor:zoom-in;touch-action:none;user-select:none;-webkit-user-select:none}
.viewer.zoomed .view{cursor:grab}
.viewer.native .view{max-width:none;cursor:zoom-out}
.viewer.native.zoomed .view{cursor:grab}
.stage{position:absolute;left:0;top:0;width:100%;height:100%;transform-origin:0 0}
.stage img{display:block;width:100%;height:100%;max-width:none;border:0}
.stage.px img{image-rendering:pixelated}
.stage .mark{position:absolute;box-sizing:border-box;border:2px solid #ff2828}
.swipe-over{position:absolute;left:0;top:0;width:100%;height:100%}
.swipe-view{cursor:ew-resize}
.swipe-handle{position:absolute;top:0;bottom:0;width:18px;margin-left:-9px;cursor:ew-resize;z-index:1}
.swipe-handle::before{content:"";position:absolute;left:8px;top:0;bottom:0;width:2px;background:#fff;box-shadow:0 0 3px #000}
img.bar{display:block;margin-top:.3em;border:0}
.viewer button[aria-pressed=true]{background:#cde}
"""

#: The page's script (:file:`report_viewer.js`, shipped with the package), inlined.
SCRIPT = "report_viewer.js"
COLOUR_BAR = "colour_bar.png"
HOW_TO = ("panels: turn the mouse wheel to zoom and drag to pan (all panels of a row follow), click a "
          "panel for full size (native resolution); the first panel of a row swipes between the two "
          "panels picked above it")


def viewer_script() -> str:
    """The text of :data:`SCRIPT`, to inline in the page."""
    from importlib.resources import files

    text = files("tdfusion").joinpath(SCRIPT).read_text(encoding="utf-8")
    if "</" in text:  # would end the inline <script> early
        raise RuntimeError(f"{SCRIPT}: '</' cannot be inlined")
    return text


@dataclass
class Shown:
    """One panel as the page shows it."""

    label: str
    thumb: str   # href of the JPEG shown
    full: str    # href of the lossless panel, loaded when zoomed or at full size
    width: int   # native size
    height: int


def viewer_row(stem: str, panels: Sequence[Shown], height: int, crop: tuple[int, int, int, int] | None,
               maps: bool) -> str:
    """One row of panels for report_viewer.js: a swipe view of two picked panels, then every
    panel, each ``height`` px high (``data-w`` x ``data-h``: native size), with the tools."""
    esc = html.escape
    w0, h0 = panels[0].width, panels[0].height
    dw = max(1, round(w0 * height / h0))
    size = f'style="width:{dw}px;aspect-ratio:{w0}/{h0}"'
    mark = ""
    if crop is not None:
        x, y, cw, ch = crop
        cw, ch = min(cw, w0 - x), min(ch, h0 - y)
        mark = (f'<div class="mark" style="left:{100 * x / w0:.3f}%;top:{100 * y / h0:.3f}%;'
                f'width:{100 * cw / w0:.3f}%;height:{100 * ch / h0:.3f}%"></div>')

    def img(p: Shown, cls: str = "") -> str:
        klass = f' class="{cls}"' if cls else ""
        return (f'<img src="{p.thumb}"{klass} data-full="{p.full}" data-w="{p.width}" data-h="{p.height}" '
                f'width="{dw}" height="{height}" alt="{esc(stem)}: {esc(p.label)}" draggable="false">')

    def options(selected: int) -> str:
        return "".join(f'<option value="{i}"{" selected" if i == selected else ""}>{esc(p.label)}</option>'
                       for i, p in enumerate(panels))

    figures = []
    tools = ['<button type="button" class="zoom-reset">reset zoom</button>',
             '<button type="button" class="native" aria-pressed="false">full size</button>']
    if len(panels) > 1:
        left, right = (2 if len(panels) > 2 else 1), 0   # the first method (or B) against A
        tools.insert(0, f'<label>swipe <select class="swipe-left" aria-label="left of the divider">'
                        f'{options(left)}</select></label>'
                        f'<select class="swipe-right" aria-label="right of the divider">{options(right)}</select>'
                        '<input type="range" class="swipe-pos" min="0" max="100" step="0.1" value="50" '
                        'aria-label="divider position (% from the left)">')
        figures.append(
            f'<figure class="panel swipe"><figcaption>swipe: <span class="swipe-label">'
            f'{esc(panels[left].label)} | {esc(panels[right].label)}</span></figcaption>'
            f'<div class="view swipe-view" {size}><div class="stage">{img(panels[right], "swipe-under")}{mark}</div>'
            f'<div class="swipe-over" style="clip-path:inset(0 50% 0 0)"><div class="stage">'
            f'{img(panels[left], "swipe-top")}{mark}</div></div>'
            '<div class="swipe-handle" style="left:50%"></div></div></figure>')
    figures += [f'<figure class="panel"><figcaption title="{esc(p.label)}">{esc(p.label)}</figcaption>'
                f'<div class="view" {size}><div class="stage">{img(p)}{mark}</div></div></figure>'
                for p in panels]
    bar = (f'<img src="{COLOUR_BAR}" class="bar" alt="colour bar: G\'s weight for A, 0 (all on B) to 1 (all on A)">'
           if maps else "")
    return (f'<div class="viewer"><div class="tools">{"".join(tools)}</div>'
            f'<div class="panels">{"".join(figures)}</div>{bar}</div>')


def href(*parts: str) -> str:
    return "/".join(quote(p) for p in parts)


def safe_name(label: str) -> str:
    """A panel label as a file name: letters, digits, ``-`` and ``_`` only."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in label).strip("_") or "panel"
