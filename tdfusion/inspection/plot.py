"""The picture of ``tdfusion inspect``: G's weight for the infrared image per class, and a
few pairs with G's weight map and F's output."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["inspection_figure"]


def inspection_figure(report: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write the PNG (atomically) and return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    maps = report["maps"]
    g = report["lossgen"] or {}
    per_class = g.get("per_class") or {}
    rows = max(1, len(maps))
    fig = plt.figure(figsize=(13, 2.6 * rows + 0.4))
    grid = fig.add_gridspec(rows, 5, width_ratios=[1.4, 1, 1, 1, 1])
    bars = fig.add_subplot(grid[:, 0])
    if per_class:
        names = list(per_class)
        keys = [k for k in ("w_a", "v_a") if any(k in v for v in per_class.values())]
        x = np.arange(len(names))
        width = 0.8 / len(keys)
        for i, k in enumerate(keys):
            bars.barh(x + i * width, [per_class[n].get(k, np.nan) for n in names], height=width,
                      label={"w_a": "intensity weight w_a", "v_a": "gradient weight v_a"}[k])
        bars.set_yticks(x + width * (len(keys) - 1) / 2, names, fontsize=8)
        bars.axvline(0.5, color="grey", lw=0.8, ls="--")
        bars.set_xlim(0, 1)
        bars.set_xlabel("G's weight for the first source (1 = all infrared)", fontsize=8)
        bars.legend(fontsize=7, loc="lower right")
    else:
        bars.text(0.5, 0.5, "no G" if not g else "no targets:\nno per-class figures", ha="center", va="center")
        bars.set_axis_off()
    for r, m in enumerate(maps):
        panels = [("first source (A)", m["a"], "gray"), ("second source (B)", m["b"], "gray"),
                  ("G: w_a", m["w_a"], "viridis"), ("F raw output", m["fused"], "gray")]
        for c, (title, img, cmap) in enumerate(panels):
            ax = fig.add_subplot(grid[r, c + 1])
            ax.set_axis_off()
            if img is None:
                ax.text(0.5, 0.5, "no G", ha="center", va="center")
                continue
            shown = ax.imshow(img, cmap=cmap, vmin=0, vmax=1)
            ax.set_title(f"{m['stem']}: {title}" if c == 0 else title, fontsize=8)
            if cmap == "viridis":
                fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02)
    fig.suptitle(f"tdfusion inspect {report['checkpoint']}", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path
