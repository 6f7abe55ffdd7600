"""``tdfusion inspect``: see the mechanism of a trained run.

For a checkpoint (or a run folder) and a set of image pairs, optionally with targets:

* G's mean weight for the first source (infrared), ``w_a`` (and ``v_a`` for ReFusion's
  gradient pair), per class of the targets: does the learned loss weigh the sources by
  region, or globally?
* the share of G's weights within 1e-3 of 0 or 1 (saturated: no gradient passes back);
* G's agreement with a known-good map, "infrared on these classes, visible elsewhere"
  (``ir_classes``; on the synthetic scenes: people and cars, whose best fusion is known);
* F's raw output range (a collapsed F outputs a constant);
* the meta-gradient scale per epoch from the run's log, and the settings that shape G.

Pairs come from the run's own test split (its dataset, as its config names it) or from
folders; targets are class masks or YOLO boxes painted into class maps
(:func:`~tdfusion.data.det_labels.paint_boxes`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from ..errors import TDFusionError
from ..data.det_labels import paint_boxes
from .figures import ClassMeans, RangeStats, meta_gradient_scale, oracle_agreement

__all__ = ["LabelledPair", "PairSet", "inspect_run", "pairs_from_dataset", "pairs_from_folders", "resolve_run"]

#: The synthetic scenes' classes whose best fusion is the infrared image (docs/results.md).
SYNTHETIC_IR_CLASSES = ("person", "car")


@dataclass
class LabelledPair:
    """One pair: sources ``(H, W)`` float32 in [0, 1], and a class map ``(H, W)`` int64
    (None without targets; values outside the class list are not counted)."""

    stem: str
    a: np.ndarray
    b: np.ndarray
    labels: np.ndarray | None = None


@dataclass
class PairSet:
    """Pairs and the names of their label values (``classes[k]`` names value ``k``)."""

    pairs: list[LabelledPair]
    classes: list[str]
    origin: str


def resolve_run(path: str | Path) -> tuple[Path, Path | None]:
    """``(checkpoint, run folder or None)`` for a run folder (its ``last.pt``) or a checkpoint
    file (its folder is the run's when it holds a training log)."""
    p = Path(path)
    if p.is_dir():
        ckpt = p / "last.pt"
        if not ckpt.is_file():
            raise TDFusionError(f"{p}: a folder without last.pt (give a run folder or a checkpoint)")
        return ckpt, p
    if not p.is_file():
        raise TDFusionError(f"{p}: no such run folder or checkpoint")
    return p, (p.parent if (p.parent / "train_log.jsonl").is_file() else None)


def _labels_of(sample, kind: str, n_classes: int) -> np.ndarray | None:
    if kind == "mask":
        return np.asarray(sample.target["mask"], np.int64)
    if kind == "boxes":
        return paint_boxes(sample.target["boxes"], sample.a.shape)
    return None


def pairs_from_dataset(dataset, limit: int | None, origin: str) -> PairSet:
    """The first ``limit`` pairs of a dataset split, with its masks or its boxes painted."""
    kind = getattr(dataset, "target_kind", "none")
    classes = list(getattr(dataset, "classes", []) or [])
    if kind == "boxes":
        classes = ["background (no box)", *classes]
    n = len(dataset) if limit is None else min(limit, len(dataset))
    pairs = []
    for i in range(n):
        s = dataset[i]
        pairs.append(LabelledPair(s.stem, s.a, s.b, _labels_of(s, kind, len(classes))))
    return PairSet(pairs, classes if kind in ("mask", "boxes") else [], origin)


def pairs_from_folders(a: str | Path, b: str | Path, targets: str | Path | None, classes: Sequence[str] | None,
                       limit: int | None) -> PairSet:
    """Pairs matched by file stem in two folders (or two files); ``targets``: a folder of
    ``<stem>.png`` class masks or ``<stem>.txt`` YOLO boxes (painted: value 0 outside the
    boxes, ``class + 1`` inside)."""
    from ..data.base import luminance
    from ..data.det_labels import parse_yolo_labels
    from ..data.seg import read_label
    from ..io import match_pairs

    matched = match_pairs(a, b)
    if limit is not None:
        matched = matched[:limit]
    pairs, boxes_seen, top = [], False, -1
    for stem, pa, pb in matched:
        ya, yb = luminance(pa), luminance(pb)
        if ya.shape != yb.shape:
            raise TDFusionError(f"{pa}: size {ya.shape[::-1]} differs from {pb}'s {yb.shape[::-1]}")
        labels = None
        if targets is not None:
            mask, txt = Path(targets) / f"{stem}.png", Path(targets) / f"{stem}.txt"
            if mask.is_file():
                labels = np.asarray(read_label(mask), np.int64)
                if labels.shape != ya.shape:
                    raise TDFusionError(f"{mask}: size {labels.shape[::-1]} differs from its pair's {ya.shape[::-1]}")
            elif txt.is_file():
                labels = paint_boxes(parse_yolo_labels(txt, len(classes) if classes else 1 << 30), ya.shape)
                boxes_seen = True
            else:
                raise TDFusionError(f"{targets}: no {stem}.png mask or {stem}.txt boxes for pair {stem}")
            top = max(top, int(labels[labels < 255].max(initial=-1)))
        pairs.append(LabelledPair(stem, ya, yb, labels))
    if not pairs:
        raise TDFusionError(f"{a}, {b}: no pairs with matching names")
    if targets is None:
        names: list[str] = []
    elif classes:
        names = (["background (no box)"] if boxes_seen else []) + list(classes)
    else:
        names = (["background (no box)"] if boxes_seen else []) + [f"class {k}" for k in range(top + 1 - boxes_seen)]
    return PairSet(pairs, names, f"{a} + {b}")


@torch.no_grad()
def inspect_run(checkpoint: str | Path, run_dir: Path | None, data: PairSet, ir_classes: Sequence[str] = (),
                device: str | torch.device = "cpu", keep_maps: int = 3) -> dict[str, Any]:
    """The figures of the module doc as a JSON-ready dict; ``"maps"`` (not JSON) holds the
    first ``keep_maps`` pairs' sources, G's ``w_a`` map and F's raw output for a picture."""
    from ..checkpoint import load_fusion_net, trained_lossgen
    from ..inference import fuse_luma
    from ..training.health import BOUND, HealthStats

    unknown = [c for c in ir_classes if c not in data.classes]
    if unknown:
        raise TDFusionError(f"--ir-classes {' '.join(unknown)}: not among the targets' classes "
                            f"({', '.join(data.classes) or 'no targets given'})")
    fusion, ckpt = load_fusion_net(checkpoint, device)
    lossgen = trained_lossgen(ckpt, str(checkpoint))
    lossgen = None if lossgen is None else lossgen.to(device)
    cfg = (ckpt.get("extra") or {}).get("config") or {}
    n_classes = len(data.classes)
    pairs_of_g = 0 if lossgen is None else int(lossgen.pairs)
    per_class = [ClassMeans(n_classes) for _ in range(pairs_of_g)]
    agree = ClassMeans(n_classes)
    health, ranges, means = HealthStats(lossgen), RangeStats(), [[] for _ in range(pairs_of_g)]
    ir_ids = [data.classes.index(c) for c in ir_classes]
    maps = []
    for k, pair in enumerate(data.pairs):
        raw = fuse_luma(fusion, pair.a, pair.b)
        ranges.add(raw)
        w_a = None
        if lossgen is not None:
            weights = lossgen(*(torch.from_numpy(np.ascontiguousarray(x))[None, None].to(device)
                                for x in (pair.a, pair.b)))
            health.add_weights(weights)
            first = weights[0, 0::2].float().cpu().numpy()  # (pairs, H, W): w_a (and v_a)
            for p in range(pairs_of_g):
                means[p].append(float(first[p].mean()))
                if pair.labels is not None and n_classes:
                    per_class[p].add(first[p], pair.labels)
            w_a = first[0]
            if ir_ids and pair.labels is not None:
                hit, valid = oracle_agreement(w_a, pair.labels, ir_ids, n_classes)
                agree.add(hit.astype(np.float64), np.where(valid, pair.labels, -1))
        if k < keep_maps:
            maps.append({"stem": pair.stem, "a": pair.a, "b": pair.b, "w_a": w_a, "fused": raw})
    out: dict[str, Any] = {
        "checkpoint": str(checkpoint), "run": None if run_dir is None else str(run_dir), "pairs": len(data.pairs),
        "origin": data.origin, "classes": data.classes,
        "settings": _settings(cfg),
        "fusion_raw": ranges.figures(),
        "lossgen": None,
        "meta_gradient_scale": None if run_dir is None else meta_gradient_scale(run_dir),
        "maps": maps,
    }
    if lossgen is not None:
        names = ["w_a", "v_a"][:pairs_of_g]
        g: dict[str, Any] = {"pairs": pairs_of_g, "at_bounds": health.figures().get("lossgen_at_bounds"),
                             "bound": BOUND, "mean": {n: float(np.mean(m)) for n, m in zip(names, means)}}
        if n_classes:
            g["per_class"] = {}
            for n, pc in zip(names, per_class):
                for cls, v in pc.means(data.classes).items():
                    g["per_class"].setdefault(cls, {"pixels": v["pixels"]})[n] = v["mean"]
        if ir_ids:
            by_class = agree.means(data.classes)
            total = sum(v["mean"] * v["pixels"] for v in by_class.values()) / max(1, sum(v["pixels"] for v in by_class.values()))
            g["oracle"] = {"ir_classes": list(ir_classes), "agreement": total,
                           "class_mean_agreement": float(np.mean([v["mean"] for v in by_class.values()])),
                           "per_class": {c: v["mean"] for c, v in by_class.items()}}
        out["lossgen"] = g
    return out


def _settings(cfg: dict) -> dict[str, Any]:
    """The run settings that shape G (empty for a checkpoint without a run config)."""
    if not cfg:
        return {}
    loss, meta, optim = cfg.get("loss", {}), cfg.get("meta", {}), cfg.get("optim", {})
    return {"task": cfg.get("task", {}).get("name"), "dataset": cfg.get("dataset", {}).get("name"),
            "loss_form": loss.get("form"), "alpha": loss.get("alpha"), "fixed_weights": loss.get("fixed_weights"),
            "gradient_target": loss.get("gradient_target", "max"), "objective": meta.get("objective", "one_step"),
            "lossgen_update": meta.get("lossgen_update", meta.get("g_update")), "lr_lossgen": optim.get("lr_lossgen"),
            "meta_steps": cfg.get("train", {}).get("meta_steps"), "epochs": cfg.get("train", {}).get("epochs")}


def default_ir_classes(data: PairSet, cfg: dict) -> list[str]:
    """People and cars on the synthetic scenes (their best fusion is known); none elsewhere."""
    if (cfg.get("dataset") or {}).get("name") == "synthetic" and data.classes:
        return [c for c in SYNTHETIC_IR_CLASSES if c in data.classes]
    return []


def iter_rows(report: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """``(what, value)`` rows of the printed table."""
    s = report["settings"]
    if s:
        yield "run", (f"task {s['task']}, {s['loss_form']} loss (alpha {s['alpha']}"
                      f"{'' if s['gradient_target'] == 'max' else ', gradient target ' + s['gradient_target']}), "
                      + ("fixed weights" if s["fixed_weights"] else
                         f"objective {s['objective']}, {s['lossgen_update']} at {s['lr_lossgen']:g}"))
    f = report["fusion_raw"]
    yield "F raw output", f"mean {f['mean']:.3f}, std {f['std']:.3f}, range {f['min']:.3f}-{f['max']:.3f}"
    g = report["lossgen"]
    if g is None:
        yield "G", "none (fixed-weight ablation, or a checkpoint without a trained G)"
    else:
        yield "G mean weights", ", ".join(f"{k} {v:.3f}" for k, v in g["mean"].items())
        yield "G at a bound", f"{g['at_bounds']:.1%} of its weights within {g['bound']:g} of 0 or 1"
        for cls, v in (g.get("per_class") or {}).items():
            yield f"G on {cls}", ", ".join(f"{k} {v[k]:.3f}" for k in ("w_a", "v_a") if k in v) + f" ({v['pixels']} px)"
        if "oracle" in g:
            o = g["oracle"]
            yield "G vs oracle", (f"'infrared on {', '.join(o['ir_classes'])}, visible elsewhere': G agrees on "
                                  f"{o['agreement']:.1%} of the pixels, {o['class_mean_agreement']:.1%} as the mean "
                                  "over classes (" + ", ".join(f"{c} {v:.0%}" for c, v in o["per_class"].items()) + ")")
    scale = report["meta_gradient_scale"]
    if scale:
        yield "meta-gradient scale", ", ".join(f"{e['mean']:.2e}" for e in scale) + " (mean per epoch)"
