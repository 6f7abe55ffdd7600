"""Progress reporting: a rich bar on a terminal, plain timestamped lines elsewhere.

Piped to a file or a job log, a rich bar draws nothing until it finishes, and a 4-minute
training phase would be 4 minutes of silence; there :func:`progress_bar` prints one plain
line when the work starts, then one at least every :data:`LOG_INTERVAL` seconds and one
at the end, each with full ``H:MM:SS`` times, e.g.::

    epoch 1/40 learning G: 120/200 (60%) elapsed 0:02:31 remaining 0:01:41  loss_f 0.0123
"""
from __future__ import annotations

import contextlib
import time
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import (BarColumn, DownloadColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn, TransferSpeedColumn)
from rich.table import Column

__all__ = ["LOG_INTERVAL", "clock", "progress_bar"]

#: Seconds between two plain progress lines when output is not a terminal.
LOG_INTERVAL = 30.0


def clock(seconds: float | None) -> str:
    """``H:MM:SS`` (``-:--:--`` when unknown)."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "-:--:--"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _status(fields: dict) -> str:
    return "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in fields.items())


@contextlib.contextmanager
def progress_bar(total: int, description: str, enabled: bool = True, unit: str = "items",
                 console: Console | None = None) -> Iterator[Callable[..., None]]:
    """Yield ``advance(n=1, **fields)``; ``fields`` update text shown after the bar.

    ``unit="bytes"`` shows sizes and a transfer rate instead of a count. ``console``: where
    to draw (default: standard output); whether it is a terminal picks bar or lines.
    """
    if not enabled:
        yield lambda n=1, **fields: None
        return
    console = console or Console()
    if not console.is_terminal:
        with _log_lines(total, description, console) as advance:
            yield advance
        return
    # Fixed, unwrappable time columns: at 80 columns rich otherwise shrinks every column
    # to fit and the times read "0:00:…". The status text is the part allowed to shrink.
    times = [TimeElapsedColumn(table_column=Column(no_wrap=True, min_width=7)),
             TimeRemainingColumn(table_column=Column(no_wrap=True, min_width=7))]
    count = ([DownloadColumn(table_column=Column(no_wrap=True)), TransferSpeedColumn()] if unit == "bytes"
             else [MofNCompleteColumn(table_column=Column(no_wrap=True))])
    columns = [TextColumn("{task.description}", table_column=Column(no_wrap=True)),
               BarColumn(bar_width=None, table_column=Column(ratio=1, min_width=6)), *count, *times,
               TextColumn("{task.fields[status]}", table_column=Column(no_wrap=True, overflow="ellipsis", ratio=2))]
    with Progress(*columns, console=console, transient=False, expand=True) as progress:
        task = progress.add_task(description, total=total, status="")

        def advance(n: int = 1, **fields) -> None:
            progress.update(task, advance=n, **({"status": _status(fields)} if fields else {}))

        yield advance


@contextlib.contextmanager
def _log_lines(total: int, description: str, console: Console) -> Iterator[Callable[..., None]]:
    start = time.monotonic()
    state = {"done": 0, "status": "", "last": start}

    def line() -> None:
        done, elapsed = state["done"], time.monotonic() - start
        remaining = elapsed * (total - done) / done if done and total else None
        pct = f" ({100 * done / total:.0f}%)" if total else ""
        text = f"{description}: {done}/{total}{pct} elapsed {clock(elapsed)} remaining {clock(remaining)}"
        if state["status"]:
            text += "  " + state["status"]
        # print(), not the console: a job log wants every line whole, never re-wrapped.
        print(text, file=console.file, flush=True)
        state["last"] = time.monotonic()

    def advance(n: int = 1, **fields) -> None:
        state["done"] += n
        if fields:
            state["status"] = _status(fields)
        if time.monotonic() - state["last"] >= LOG_INTERVAL:
            line()

    line()
    yield advance
    line()
