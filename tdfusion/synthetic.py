"""Synthetic infrared/visible road scenes with segmentation masks and boxes.

The embedded dataset for demos and tests: cheap (a 256x256 pair takes about a
millisecond), deterministic (sample ``i`` of seed ``s`` depends only on ``(s, i)``),
and built so that each modality carries information the other lacks:

* warm objects (people, the engines and tyres of running cars) are brighter than the
  road in infrared, by a varying margin; at night they are nearly invisible in the
  visible image, and by day half of the people wear clothes of the road's brightness
  (camouflage: only infrared tells them from the road);
* texture (building windows, road grain) and lane markings (fresh or worn) exist only in
  the visible image; markings have the road's temperature, so they vanish in infrared;
* each modality also carries structure the tasks do not care about, which a fusion that
  keeps everything passes on: in infrared, sun-warmed patches and warm blobs on the road
  and walls (as warm as a person, shaped otherwise); in the visible image, large soft
  shadows by day and pools of street light at night;
* night scenes make the visible image dark and noisy; infrared is unaffected.

So no single source shows every class, and a fusion that weighs each source by region
(infrared on warm objects, visible on markings and texture) keeps more of what the
tasks need than an even blend, which halves each source's contrast and adds the other
source's clutter.

Classes (segmentation mask values, :data:`SEG_CLASSES`): 0 background (sky and
buildings), 1 road, 2 lane marking, 3 person, 4 car. Detection classes
(:data:`DET_CLASSES`): 0 person, 1 car; boxes cover each object's visible pixels.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import yaml

from .io import atomic_write, write_image

__all__ = ["SEG_CLASSES", "DET_CLASSES", "SyntheticPair", "make_pair", "write_dataset"]

SEG_CLASSES = ("background", "road", "marking", "person", "car")
DET_CLASSES = ("person", "car")
_SEG_TO_DET = {3: 0, 4: 1}


@dataclass
class SyntheticPair:
    """One scene.

    Attributes:
        ir: ``(H, W)`` float32 in [0, 1].
        vis: ``(H, W, 3)`` RGB float32 in [0, 1].
        mask: ``(H, W)`` uint8 class ids (:data:`SEG_CLASSES`).
        boxes: ``(N, 5)`` float32 rows ``(det_class, x1, y1, x2, y2)`` in pixels,
            ``x2``/``y2`` exclusive.
        night: whether the visible image is a night shot.
    """

    ir: np.ndarray
    vis: np.ndarray
    mask: np.ndarray
    boxes: np.ndarray
    night: bool
    extra: dict = field(default_factory=dict)


def _fill(canvas: np.ndarray, shape_mask: np.ndarray, value) -> None:
    canvas[shape_mask] = value


def _smooth_field(rng: np.random.Generator, size: tuple[int, int], sigma: float) -> np.ndarray:
    """A smooth random field in [0, 1] ``(H, W)`` float32 with blobs about ``sigma`` pixels wide."""
    field = cv2.GaussianBlur(rng.standard_normal(size).astype(np.float32), (0, 0), sigma)
    lo, hi = float(field.min()), float(field.max())
    return (field - lo) / (hi - lo) if hi > lo else np.zeros(size, np.float32)


def make_pair(seed: int, index: int, size: tuple[int, int] = (256, 256),
              night_prob: float = 0.5) -> SyntheticPair:
    """Generate scene ``index`` of the stream ``seed``; ``size`` is ``(H, W)``."""
    rng = np.random.default_rng([seed, index])
    h, w = size
    night = bool(rng.random() < night_prob)
    horizon = int(h * rng.uniform(0.35, 0.5))

    mask = np.zeros((h, w), np.uint8)
    instance = np.zeros((h, w), np.int32)
    ir = np.empty((h, w), np.float32)
    vis = np.empty((h, w, 3), np.float32)

    # Sky: cold in IR; blue gradient by day, near black at night.
    rows = np.linspace(0.0, 1.0, horizon, dtype=np.float32)[:, None]
    ir[:horizon] = 0.12 + 0.06 * rows
    sky = np.array([0.55, 0.7, 0.9], np.float32) if not night else np.array([0.05, 0.06, 0.1], np.float32)
    vis[:horizon] = sky * (0.8 + 0.2 * rows[..., None])

    # Buildings on the horizon: lukewarm blocks; windows are visible-only texture.
    x = 0
    while x < w:
        bw = int(rng.integers(w // 10, w // 4))
        top = int(horizon - rng.integers(h // 10, max(h // 10 + 1, horizon - 4)))
        ir[top:horizon, x:x + bw] = rng.uniform(0.28, 0.4)
        vis[top:horizon, x:x + bw] = rng.uniform(0.3, 0.6, 3).astype(np.float32)
        win = rng.uniform(0.75, 1.0) if not night else rng.uniform(0.2, 0.5)
        yy, xx = np.mgrid[top:horizon, x:min(x + bw, w)]
        windows = ((yy - top) % 8 < 4) & ((xx - x) % 7 < 3) & (yy - top > 2)
        block = vis[top:horizon, x:x + bw]
        block[windows] = win
        x += bw + int(rng.integers(0, w // 12))

    # Road: warm asphalt in IR, grainy grey in visible.
    road_ir = rng.uniform(0.38, 0.5) if not night else rng.uniform(0.3, 0.4)
    ir[horizon:] = road_ir
    grain = rng.normal(0.0, 0.04, (h - horizon, w)).astype(np.float32)
    road_vis = rng.uniform(0.35, 0.5)
    vis[horizon:] = (road_vis + grain)[..., None]
    mask[horizon:] = 1

    # Lane markings: dashed stripes converging to a vanishing point; visible only.
    vx = w * rng.uniform(0.35, 0.65)
    for lane_x in rng.uniform(-0.2, 1.2, int(rng.integers(2, 4))) * w:
        stripe = np.zeros((h, w), np.uint8)
        for t0 in np.arange(0.08, 1.0, 0.16):
            t1 = t0 + 0.08
            y0, y1 = horizon + t0 * (h - horizon), horizon + t1 * (h - horizon)
            x0, x1 = vx + (lane_x - vx) * t0, vx + (lane_x - vx) * t1
            half0, half1 = max(1.0, 0.012 * w * t0 + 0.5), max(1.0, 0.012 * w * t1 + 0.5)
            poly = np.array([[x0 - half0, y0], [x0 + half0, y0], [x1 + half1, y1], [x1 - half1, y1]])
            cv2.fillConvexPoly(stripe, np.round(poly).astype(np.int32), 1)
        m = stripe.astype(bool)
        _fill(vis, m, np.array([0.95, 0.95, 0.9], np.float32) * rng.uniform(0.6, 1.0))  # fresh or worn paint
        ir[m] = road_ir + 0.01
        mask[m] = 2

    # Objects, far (small, near the horizon) to near, so near objects occlude far ones.
    n_people, n_cars = int(rng.integers(1, 5)), int(rng.integers(0, 3))
    objects = [(3, rng.uniform(0.05, 0.95)) for _ in range(n_people)] + \
              [(4, rng.uniform(0.05, 0.95)) for _ in range(n_cars)]
    depths = np.sort(rng.uniform(0.15, 1.0, len(objects)))
    for inst, ((cls, fx), depth) in enumerate(zip(objects, depths), start=1):
        base_y = int(horizon + depth * (h - horizon - 2))
        cx = int(fx * w)
        shape = np.zeros((h, w), np.uint8)
        if cls == 3:
            ph = max(8, int(0.45 * h * depth))
            pw = max(3, ph // 4)
            cv2.ellipse(shape, (cx, base_y - ph // 2), (pw // 2 + 1, ph * 2 // 5), 0, 0, 360, 1, -1)
            cv2.circle(shape, (cx, base_y - ph + ph // 10), max(2, ph // 10), 1, -1)
            m = shape.astype(bool)
            ir[m] = road_ir + rng.uniform(0.25, 0.5)
            if rng.random() < 0.5:  # camouflage: clothes of the road's brightness
                cloth = np.clip(road_vis + rng.normal(0.0, 0.03, 3), 0, 1).astype(np.float32)
            else:
                cloth = rng.uniform(0.1, 0.7, 3).astype(np.float32)
            vis[m] = cloth
        else:
            ch = max(6, int(0.28 * h * depth))
            cw = int(ch * rng.uniform(1.6, 2.2))
            x0, y0 = cx - cw // 2, base_y - ch
            cv2.rectangle(shape, (x0, y0 + ch // 3), (x0 + cw, base_y - ch // 8), 1, -1)
            cv2.rectangle(shape, (x0 + cw // 5, y0), (x0 + cw * 4 // 5, y0 + ch // 3), 1, -1)
            wheels = np.zeros_like(shape)
            for wx in (x0 + cw // 5, x0 + cw * 4 // 5):
                cv2.circle(wheels, (wx, base_y - ch // 8), max(2, ch // 6), 1, -1)
            shape |= wheels
            m = shape.astype(bool)
            body = rng.uniform(0.1, 0.9, 3).astype(np.float32)
            vis[m] = body
            ir[m] = rng.uniform(0.45, 0.6)
            hood = np.zeros_like(shape)
            front = x0 if rng.random() < 0.5 else x0 + cw * 3 // 4
            cv2.rectangle(hood, (front, y0 + ch // 3), (front + cw // 4, base_y - ch // 8), 1, -1)
            if rng.random() < 0.6:  # running: warm engine and tyres; parked cars have the road's temperature
                ir[(hood & shape).astype(bool)] = rng.uniform(0.7, 0.85)
                ir[wheels.astype(bool)] = rng.uniform(0.65, 0.8)
            else:
                ir[m] = road_ir + rng.uniform(-0.03, 0.05)
            vis[wheels.astype(bool)] = 0.05
            win = np.zeros_like(shape)
            cv2.rectangle(win, (x0 + cw // 4, y0 + 2), (x0 + cw * 3 // 4, y0 + ch // 3 - 1), 1, -1)
            vis[(win & shape).astype(bool)] = 0.15 if night else 0.6
        mask[m] = cls
        instance[m] = inst

    # Task-irrelevant structure, off the objects: warm patches and blobs in infrared,
    # shadows (day) or street-light pools (night) in the visible image.
    free = mask < 3
    warm = _smooth_field(rng, (h, w), w / 10.0) * rng.uniform(0.08, 0.18)
    for _ in range(int(rng.integers(1, 4))):  # warm blobs (manholes, bins, heated walls): round, not person-shaped
        blob = np.zeros((h, w), np.float32)
        r = max(3, int(rng.uniform(0.03, 0.08) * w))
        cv2.ellipse(blob, (int(rng.integers(0, w)), int(rng.integers(horizon // 2, h))),
                    (r, max(2, int(r * rng.uniform(0.4, 0.8)))), 0, 0, 360, 1.0, -1)
        warm += cv2.GaussianBlur(blob, (0, 0), max(1.0, r / 3)) * rng.uniform(0.25, 0.45)
    ir[free] += warm[free]
    light = _smooth_field(rng, (h, w), w / 8.0)
    if night:  # pools of street light, brighter than anything else in the night scene
        vis += (np.clip(light - 0.4, 0, None) * rng.uniform(1.5, 3.0))[..., None]
    else:  # soft shadows of trees and buildings
        vis *= (1.0 - rng.uniform(0.3, 0.55) * np.clip(light - 0.3, 0, 1) / 0.7)[..., None]

    # Sensor models: IR is blurry with little noise; visible is sharp, and dark and
    # noisy at night.
    ir = cv2.GaussianBlur(ir, (0, 0), 1.0) + rng.normal(0.0, 0.01, (h, w)).astype(np.float32)
    if night:
        vis = vis * rng.uniform(0.15, 0.3) + rng.normal(0.0, rng.uniform(0.04, 0.07), (h, w, 1)).astype(np.float32)
    else:
        vis = vis + rng.normal(0.0, 0.01, (h, w, 1)).astype(np.float32)

    boxes = []
    for inst, (cls, _) in enumerate(objects, start=1):
        ys, xs = np.nonzero(instance == inst)
        if ys.size >= 20:
            boxes.append((_SEG_TO_DET[cls], xs.min(), ys.min(), xs.max() + 1, ys.max() + 1))
    return SyntheticPair(
        ir=np.clip(ir, 0.0, 1.0).astype(np.float32),
        vis=np.clip(vis, 0.0, 1.0).astype(np.float32),
        mask=mask,
        boxes=np.asarray(boxes, np.float32).reshape(-1, 5),
        night=night,
    )


def _yolo_lines(boxes: np.ndarray, h: int, w: int) -> str:
    lines = []
    for cls, x1, y1, x2, y2 in boxes:
        lines.append(f"{int(cls)} {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} "
                     f"{(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f}")
    return "\n".join(lines) + ("\n" if lines else "")


def write_dataset(root: str | os.PathLike, n_train: int = 200, n_test: int = 50, seed: int = 0,
                  size: tuple[int, int] = (256, 256), night_prob: float = 0.5) -> Path:
    """Write ``root/{train,test}/{ir,vi,label,labels}`` and ``root/data.yaml``.

    ``ir`` 8-bit grey PNG, ``vi`` RGB PNG, ``label`` class-id PNG masks, ``labels``
    YOLO txt (``class cx cy w h``, normalised). Test scenes use a different stream
    than training scenes, so the two never overlap.
    """
    root = Path(root)
    h, w = size
    for split, n, stream in (("train", n_train, seed), ("test", n_test, seed + 1_000_003)):
        for sub in ("ir", "vi", "label", "labels"):
            (root / split / sub).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            pair = make_pair(stream, i, size, night_prob)
            stem = f"{i:05d}{'N' if pair.night else 'D'}"
            write_image(root / split / "ir" / f"{stem}.png", np.rint(pair.ir * 255).astype(np.uint8))
            write_image(root / split / "vi" / f"{stem}.png", np.rint(pair.vis * 255).astype(np.uint8))
            write_image(root / split / "label" / f"{stem}.png", pair.mask)
            with atomic_write(root / split / "labels" / f"{stem}.txt", "w") as fh:
                fh.write(_yolo_lines(pair.boxes, h, w))
    meta = {
        "name": "synthetic",
        "seed": seed,
        "size": [h, w],
        "seg_classes": list(SEG_CLASSES),
        "names": {i: n for i, n in enumerate(DET_CLASSES)},
        "nc": len(DET_CLASSES),
        "train": "train",
        "test": "test",
    }
    with atomic_write(root / "data.yaml", "w") as fh:
        yaml.safe_dump(meta, fh, sort_keys=False)
    return root
