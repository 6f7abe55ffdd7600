"""Object detection task (TDFusion, CVPR 2025): YOLOv8 trained from scratch on fused images.

The network is ultralytics' YOLOv8 (``n`` by default; ``s``/``m``/``l``/``x`` by the
``variant`` option); its construction, local weights, padding to the stride, loss
targets and NMS are in :mod:`.yolo`. This module holds the task head, the COCO mAP
(:func:`coco_map`, pycocotools) and the evaluator. The loss is ultralytics' own
``v8DetectionLoss`` (CIoU box loss, BCE class loss, distribution focal loss, with the
gains ``box``/``cls``/``dfl``, ultralytics' defaults 7.5/0.5/1.5).

Decisions (see ``docs/detection.md``):

* **Scalar loss.** ultralytics returns the three gain-weighted components multiplied by
  the batch size (what its trainer back-propagates). :meth:`DetectionTask.loss` returns
  their sum divided by the batch size (``loss_reduction="mean"``, the default), so L_t
  does not grow with the batch (the engine doubles batches with swapped sources);
  ``loss_reduction="sum"`` gives ultralytics' figure.
* **Input size.** The fused image is padded to sides divisible by 32 and the boxes
  re-normalised to the padded canvas (:func:`~tdfusion.tasks.yolo.pad_to_stride`).
* **BatchNorm under functional calls.** The loss runs the network in whatever mode it
  is in (the engine trains in train mode: batch statistics, as ultralytics training does).
  In train mode BatchNorm updates, in place, the running statistics it is handed. When
  the loss is evaluated with parameters other than the module's own (a one-step-updated
  copy), the module's buffers are replaced by copies first, so such an evaluation never
  changes the module; with the module's own parameters (an ordinary step) the running
  statistics move as in any training step. The DFL projection (a conv with
  ``requires_grad=False``) is a parameter the engine leaves alone.
"""
from __future__ import annotations

import contextlib
import io
from types import SimpleNamespace
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from tdfusion.errors import TDFusionError

from . import register_task
from .base import Evaluator, TaskHead
# Imported before anything from ultralytics (the loss below): importing .yolo sets
# ultralytics' offline settings.
from .yolo import build_yolov8, decode_predictions, load_yolov8_weights, pad_to_stride, yolo_targets

__all__ = ["DetectionEvaluator", "DetectionTask", "coco_map"]


# -- COCO mAP -----------------------------------------------------------------------------------------

def coco_map(gt: Sequence[Mapping[str, Any]], detections: Sequence[Mapping[str, Any]],
             class_names: Sequence[str], max_det: int = 100) -> dict[str, Any]:
    """COCO box mAP with pycocotools.

    Args:
        gt: per image ``{"boxes": (n, 4) xyxy pixels, "classes": (n,), "image_size": (H, W)}``.
        detections: per image (same order) ``{"boxes", "scores", "classes"}``.
        max_det: detections per image that count (COCO's ``maxDets``).

    Returns:
        ``mAP50``, ``mAP75``, ``mAP50_95`` (fractions, mean over classes that have ground
        truth; ``None`` without any), ``per_class`` ``{name: {AP50, AP75, AP50_95,
        instances}}`` (APs ``None`` for a class without ground truth), ``images``,
        ``instances``, ``detections``.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if len(gt) != len(detections):
        raise ValueError(f"{len(gt)} ground-truth images but {len(detections)} detection lists")
    k = len(class_names)
    images, gt_anns, dt_anns = [], [], []
    instances = np.zeros(k, np.int64)

    def xywh(b: np.ndarray) -> list[float]:
        return [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]

    for img_id, (g, d) in enumerate(zip(gt, detections), 1):
        h, w = g["image_size"]
        images.append({"id": img_id, "height": int(h), "width": int(w)})
        for box, c in zip(np.asarray(g["boxes"], np.float64).reshape(-1, 4), np.asarray(g["classes"]).reshape(-1)):
            c = int(c)
            instances[c] += 1
            bb = xywh(box)
            gt_anns.append({"id": len(gt_anns) + 1, "image_id": img_id, "category_id": c + 1, "bbox": bb,
                            "area": bb[2] * bb[3], "iscrowd": 0})
        boxes = np.asarray(d["boxes"], np.float64).reshape(-1, 4)
        for box, s, c in zip(boxes, np.asarray(d["scores"]).reshape(-1), np.asarray(d["classes"]).reshape(-1)):
            if not 0 <= int(c) < k:
                raise ValueError(f"detection class {int(c)} outside 0..{k - 1}")
            bb = xywh(box)
            dt_anns.append({"id": len(dt_anns) + 1, "image_id": img_id, "category_id": int(c) + 1, "bbox": bb,
                            "area": bb[2] * bb[3], "score": float(s)})
    categories = [{"id": i + 1, "name": str(n)} for i, n in enumerate(class_names)]

    def coco(anns: list[dict]) -> COCO:
        c = COCO()
        c.dataset = {"images": images, "categories": categories, "annotations": anns}
        with contextlib.redirect_stdout(io.StringIO()):
            c.createIndex()
        return c

    per_class: dict[str, dict[str, Any]] = {str(n): {"AP50": None, "AP75": None, "AP50_95": None,
                                                     "instances": int(instances[i])}
                                            for i, n in enumerate(class_names)}
    result: dict[str, Any] = {"mAP50": None, "mAP75": None, "mAP50_95": None, "per_class": per_class,
                              "images": len(images), "instances": int(instances.sum()), "detections": len(dt_anns)}
    if not images or not gt_anns:
        return result
    # COCOeval rather than a hand-written AP: it is the reference implementation of this
    # protocol (101-point interpolated precision, greedy matching by score, 10 IoU thresholds).
    ev = COCOeval(coco(gt_anns), coco(dt_anns), "bbox")
    ev.params.catIds = [c["id"] for c in categories]
    ev.params.areaRng, ev.params.areaRngLbl = [[0.0, 1e10]], ["all"]
    ev.params.maxDets = [int(max_det)]
    with contextlib.redirect_stdout(io.StringIO()):
        ev.evaluate()
        ev.accumulate()
    precision = ev.eval["precision"][:, :, :, 0, 0]  # (IoU thresholds, recall points, classes)
    iou_thrs = ev.params.iouThrs
    t50, t75 = int(np.argmin(abs(iou_thrs - 0.5))), int(np.argmin(abs(iou_thrs - 0.75)))
    aps = {"AP50": [], "AP75": [], "AP50_95": []}
    for i, name in enumerate(class_names):
        if instances[i] == 0:  # no ground truth: AP undefined, left out of the means
            continue
        p = precision[:, :, i]
        values = {"AP50": float(p[t50].mean()), "AP75": float(p[t75].mean()), "AP50_95": float(p.mean())}
        per_class[str(name)].update(values)
        for key, v in values.items():
            aps[key].append(v)
    result.update(mAP50=float(np.mean(aps["AP50"])), mAP75=float(np.mean(aps["AP75"])),
                  mAP50_95=float(np.mean(aps["AP50_95"])))
    return result


# -- evaluation ---------------------------------------------------------------------------------------

class DetectionEvaluator(Evaluator):
    """Collects ground truth and detections per image; :meth:`compute` runs :func:`coco_map`.

    ``update(predictions, batch)``: ``predictions`` from :meth:`DetectionTask.predict`
    (one dict per image); ``batch["boxes"]`` ``(N, 6)`` rows ``(image, class, cx, cy, w, h)``
    normalised. Both are evaluated in the original image's pixels when the batch carries
    ``sizes`` (evaluation views do), otherwise in the fused image's.
    """

    def __init__(self, class_names: Sequence[str], max_det: int = 300):
        self.class_names = list(class_names)
        self.max_det = max_det
        self.gt: list[dict[str, Any]] = []
        self.detections: list[dict[str, Any]] = []
        self.stems: list[str] = []

    def update(self, predictions: Sequence[Mapping[str, Any]], batch: Mapping[str, Any]) -> None:
        n = len(predictions)
        stems = list(batch.get("stems") or [str(len(self.stems) + i) for i in range(n)])
        if len(stems) != n:
            raise ValueError(f"{n} predictions for a batch of {len(stems)} images")
        rows = batch["boxes"].detach().cpu().double().reshape(-1, 6).numpy()
        sizes = batch.get("sizes")
        for i, pred in enumerate(predictions):
            ph, pw = pred["image_size"]
            h, w = (int(v) for v in sizes[i]) if sizes is not None else (ph, pw)
            r = rows[rows[:, 0] == i]
            cx, cy, bw, bh = r[:, 2] * w, r[:, 3] * h, r[:, 4] * w, r[:, 5] * h
            gt_boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1)
            det = np.asarray(pred["boxes"], np.float64).reshape(-1, 4) * np.array([w / pw, h / ph] * 2)
            self.gt.append({"boxes": gt_boxes, "classes": r[:, 1].astype(np.int64), "image_size": (h, w)})
            self.detections.append({"boxes": det, "scores": np.asarray(pred["scores"], np.float64),
                                    "classes": np.asarray(pred["classes"], np.int64)})
            self.stems.append(stems[i])

    def compute(self) -> dict[str, Any]:
        return coco_map(self.gt, self.detections, self.class_names, self.max_det)


# -- the task head -----------------------------------------------------------------------------------

@register_task
class DetectionTask(TaskHead):
    """``det``: YOLOv8 on the fused image, ultralytics' YOLOv8 loss, COCO mAP."""

    name = "det"
    target_kind = "boxes"
    honours_trust_weights = True
    defaults = {
        "num_classes": None,       # filled from the dataset
        "class_names": None,       # filled from the dataset
        "variant": "n",            # YOLOv8 scale: n (paper) | s | m | l | x
        "weights": None,           # local .pt (state_dict or ultralytics checkpoint); null: from scratch
        "box": 7.5, "cls": 0.5, "dfl": 1.5,   # ultralytics' loss gains
        "loss_reduction": "mean",  # mean: per image | sum: ultralytics' (x batch size)
        "conf": 0.001,             # NMS: ultralytics' validation settings
        "iou": 0.7,
        "max_det": 300,
        "multi_label": True,
    }

    def __init__(self, config: Mapping[str, Any] | None = None):
        super().__init__(config)
        c = self.config
        names, k = c["class_names"], c["num_classes"]
        if names is not None and k is not None and len(names) != k:
            raise ValueError(f"class_names lists {len(names)} classes but num_classes is {k}")
        if k is None and names is not None:
            c["num_classes"] = len(names)
        if c["loss_reduction"] not in ("mean", "sum"):
            raise ValueError(f"loss_reduction must be 'mean' or 'sum', not {c['loss_reduction']!r}")
        self._criterion = None
        self._criterion_key = None

    @property
    def num_classes(self) -> int:
        k = self.config["num_classes"]
        if k is None:
            raise TDFusionError("det task: the number of classes is unknown (set task.num_classes or use a "
                                "dataset with classes)")
        return int(k)

    @property
    def class_names(self) -> list[str]:
        names = self.config["class_names"]
        return list(names) if names is not None else [f"class_{i}" for i in range(self.num_classes)]

    # -- network ------------------------------------------------------------------------
    def build_network(self) -> nn.Module:
        net = build_yolov8(self.num_classes, self.config["variant"])
        if self.config["weights"]:
            load_yolov8_weights(net, str(self.config["weights"]), bool(self.config["trust_weights"]))
        return net

    def adapt_input(self, fused: torch.Tensor) -> torch.Tensor:
        """``(B, 1, H, W)`` in [0, 1] -> ``(B, 1, H', W')`` padded to multiples of 32."""
        return pad_to_stride(fused, 32)

    # -- learning -----------------------------------------------------------------------
    def criterion(self, net: nn.Module):
        """ultralytics' ``v8DetectionLoss`` for ``net`` (rebuilt when the net or its device changes)."""
        device = next(net.parameters()).device
        key = (id(net), device)
        if self._criterion is None or self._criterion_key != key:
            from ultralytics.utils.loss import v8DetectionLoss

            c = self.config
            net.args = SimpleNamespace(box=float(c["box"]), cls=float(c["cls"]), dfl=float(c["dfl"]))
            self._criterion, self._criterion_key = v8DetectionLoss(net), key
        return self._criterion

    def _call_params(self, net: nn.Module, params: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``params`` with the module's own buffers copied when the parameters are not its own."""
        params = dict(params)
        own = dict(net.named_parameters())
        substituted = any(k in params and params[k] is not p for k, p in own.items())
        if substituted:
            for k, b in net.named_buffers():
                if k not in params or params[k] is b:
                    params[k] = b.clone()
        return params

    def loss_components(self, net: nn.Module, params: Mapping[str, torch.Tensor], fused: torch.Tensor,
                        batch: Mapping[str, Any]) -> torch.Tensor:
        """``(3,)`` gain-weighted (box, cls, dfl) losses, per image (not x batch size)."""
        x = self.adapt_input(fused)
        preds = functional_call(net, self._call_params(net, params), (x,))
        # At least float32 under a half-precision autocast: the loss writes them into float32
        # buffers, and bfloat16 would move a 640-pixel coordinate by up to 2 pixels.
        dtype = torch.promote_types(x.dtype, torch.float32)
        targets = yolo_targets(batch["boxes"].to(x.device, dtype), fused.shape[-2:], x.shape[-2:])
        scaled, _ = self.criterion(net)(preds, targets)
        return scaled / x.shape[0]

    def loss(self, net: nn.Module, params: Mapping[str, torch.Tensor], fused: torch.Tensor,
             batch: Mapping[str, Any]) -> torch.Tensor:
        """YOLOv8 loss (box + cls + DFL) of ``net`` under ``params``; differentiable in both."""
        total = self.loss_components(net, params, fused, batch).sum()
        return total * fused.shape[0] if self.config["loss_reduction"] == "sum" else total

    # -- evaluation ---------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, net: nn.Module, fused: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """Detections per image after NMS (``conf``/``iou``/``max_det`` from the config),
        boxes in the fused image's pixels; see :func:`decode_predictions`."""
        was_training = net.training
        net.eval()
        try:
            out = net(self.adapt_input(fused))
        finally:
            net.train(was_training)
        raw = out[0] if isinstance(out, (tuple, list)) else out
        c = self.config
        return decode_predictions(raw, fused.shape[-2:], c["conf"], c["iou"], c["max_det"], c["multi_label"])

    def fitness(self, metrics: Mapping[str, Any]) -> float | None:
        """ultralytics' fitness, by which it keeps best.pt: 0.1 mAP50 + 0.9 mAP50-95."""
        m50, m5095 = metrics.get("mAP50"), metrics.get("mAP50_95")
        return None if m50 is None or m5095 is None else 0.1 * float(m50) + 0.9 * float(m5095)

    def evaluator(self) -> DetectionEvaluator:
        return DetectionEvaluator(self.class_names, self.config["max_det"])
