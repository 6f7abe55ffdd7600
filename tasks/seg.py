"""Semantic segmentation task (TDFusion's ``seg``): the task head, its loss and its metrics.

Network T: SegFormer (MiT-b0 by default) on the 1-channel fused image, logits at 1/4 of
the input resolution; its construction and local weights are in :mod:`.segformer`.

Loss L_t: pixel cross-entropy on the logits upsampled bilinearly to the label size,
with an ignore index and optional class weights. (The reference code resized only when
both height and width differed and had no ignore index; DESIGN §2.3.)

Evaluation: a confusion matrix over all evaluated pixels of the test set, then

* ``IoU_c = TP / (TP + FP + FN)``, ``Acc_c = TP / (TP + FN)`` (per-class recall),
  ``pixel_acc = sum_c TP / evaluated pixels``;
* pixels whose label is ``ignore_index`` are not evaluated (no TP, FP or FN for anyone);
  if ``ignore_index`` is a class id (e.g. 0 to leave out "unlabeled"), that class is
  not reported either;
* a class absent from the ground truth *and* never predicted has IoU and Acc ``None``
  (null in JSON) and is left out of the means; a class absent from the ground truth
  but predicted somewhere has IoU 0 and Acc ``None``;
* ``mIoU`` / ``mAcc`` are the means over the classes whose value is not ``None``
  (the mmsegmentation convention; the "unlabeled" class 0 of MSRS/FMB counts as a
  class, as in the MFNet/SegMiF evaluation, unless it is made the ignore index).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from tdfusion.errors import TDFusionError

from . import register_task
from .base import Evaluator, TaskHead
from .segformer import SEGFORMER_VARIANTS, build_segformer, load_segformer_weights, weights_architecture

__all__ = [
    "SegmentationEvaluator", "SegmentationLoss", "SegmentationTask", "confusion_matrix", "segmentation_loss",
    "segmentation_metrics", "upsample_logits",
]


# -- loss ------------------------------------------------------------------------------
def upsample_logits(logits: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``(B, K, h, w)`` -> ``(B, K, H, W)``, bilinear (``align_corners=False``); unchanged if equal."""
    size = tuple(int(s) for s in size)
    if tuple(logits.shape[-2:]) == size:
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int | None = 255,
                      class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Pixel cross-entropy: logits ``(B, K, h, w)``, target ``(B, H, W)`` int64 -> scalar.

    Logits are upsampled to the target size whatever their size. With class weights the
    mean is weighted (``sum_i w_{y_i} l_i / sum_i w_{y_i}``, as torch does). A batch in
    which every pixel is ignored gives 0 (still connected to the graph) instead of NaN.
    """
    logits = upsample_logits(logits, target.shape[-2:])
    ignore = -100 if ignore_index is None else int(ignore_index)
    if ignore_index is not None and not bool((target != ignore).any()):
        return logits.sum() * 0.0
    weight = None if class_weights is None else class_weights.to(device=logits.device, dtype=logits.dtype)
    return F.cross_entropy(logits, target, weight=weight, ignore_index=ignore)


class SegmentationLoss(nn.Module):
    """Module form of :func:`segmentation_loss`."""

    def __init__(self, ignore_index: int | None = 255, class_weights: Sequence[float] | None = None):
        super().__init__()
        self.ignore_index = ignore_index
        self.register_buffer("class_weights", None if class_weights is None
                             else torch.as_tensor(class_weights, dtype=torch.float32))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return segmentation_loss(logits, target, self.ignore_index, self.class_weights)


# -- metrics ---------------------------------------------------------------------------
def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int | None = 255) -> torch.Tensor:
    """``(K, K)`` int64 counts, rows = ground truth, columns = prediction.

    ``pred`` and ``target`` are class maps of the same shape. Pixels labelled
    ``ignore_index`` are skipped; any other label outside ``[0, K)`` is an error.
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and label {tuple(target.shape)} differ in shape")
    target = target.to(pred.device).long()
    pred = pred.long()
    valid = torch.ones_like(target, dtype=torch.bool) if ignore_index is None else target != ignore_index
    in_range = (target >= 0) & (target < num_classes)
    if bool((valid & ~in_range).any()):
        bad = torch.unique(target[valid & ~in_range])[:5].tolist()
        raise TDFusionError(f"label value(s) {', '.join(map(str, bad))} outside the class range 0..{num_classes - 1}"
                            + (f" (ignore index {ignore_index})" if ignore_index is not None else ""))
    t, p = target[valid], pred[valid]
    if bool(((p < 0) | (p >= num_classes)).any()):
        raise ValueError(f"predicted class ids outside 0..{num_classes - 1}")
    counts = torch.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).cpu()


def segmentation_metrics(confusion: torch.Tensor | np.ndarray, class_names: Sequence[str] | None = None,
                         ignore_index: int | None = 255) -> dict[str, Any]:
    """mIoU, mAcc, pixel accuracy and per-class IoU/Acc from a confusion matrix (module doc)."""
    conf = np.asarray(confusion.cpu() if torch.is_tensor(confusion) else confusion, dtype=np.float64)
    k = conf.shape[0]
    names = list(class_names) if class_names is not None else [f"class_{i}" for i in range(k)]
    tp = np.diag(conf)
    gt, predicted = conf.sum(1), conf.sum(0)
    union = gt + predicted - tp
    per_class: dict[str, dict[str, float | None]] = {}
    ious, accs = [], []
    for c in range(k):
        if c == ignore_index:
            continue
        iou = float(tp[c] / union[c]) if union[c] > 0 else None
        acc = float(tp[c] / gt[c]) if gt[c] > 0 else None
        per_class[names[c]] = {"IoU": iou, "Acc": acc}
        ious += [iou] if iou is not None else []
        accs += [acc] if acc is not None else []
    total = conf.sum()
    return {
        "mIoU": float(np.mean(ious)) if ious else None,
        "mAcc": float(np.mean(accs)) if accs else None,
        "pixel_acc": float(tp.sum() / total) if total > 0 else None,
        "per_class": per_class,
    }


class SegmentationEvaluator(Evaluator):
    """Accumulates a confusion matrix over batches; :meth:`compute` gives :func:`segmentation_metrics`.

    ``update(predictions, batch)`` against ``batch["mask"]`` ``(B, H, W)`` at the labels'
    native size, with ``predictions`` either

    * class scores ``(B, K, h, w)`` (floating point; what :meth:`SegmentationTask.predict`
      returns): upsampled bilinearly to ``(H, W)``, then the arg-max, as SegFormer and
      mmsegmentation evaluate (a class map computed at the task input size and enlarged
      would put every boundary on the coarser grid), or
    * class maps ``(B, h, w)`` (integer): resized to ``(H, W)`` by nearest neighbour.
    """

    def __init__(self, num_classes: int, class_names: Sequence[str] | None = None, ignore_index: int | None = 255):
        self.num_classes = int(num_classes)
        self.class_names = list(class_names) if class_names is not None else None
        self.ignore_index = ignore_index
        self.reset()

    def reset(self) -> None:
        self.confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.long)

    def update(self, predictions: torch.Tensor, batch: Mapping[str, Any]) -> None:
        target = batch["mask"]
        if target.dim() == 2:  # a single image
            target = target[None]
        size = tuple(target.shape[-2:])
        if predictions.is_floating_point():
            scores = predictions if predictions.dim() == 4 else predictions[None]
            predictions = upsample_logits(scores.float(), size).argmax(dim=1)
        else:
            if predictions.dim() == 2:
                predictions = predictions[None]
            if tuple(predictions.shape[-2:]) != size:
                predictions = F.interpolate(predictions[:, None].float(), size=size, mode="nearest")[:, 0].long()
        self.confusion += confusion_matrix(predictions.to(target.device), target, self.num_classes,
                                           self.ignore_index)

    def compute(self) -> dict[str, Any]:
        return segmentation_metrics(self.confusion, self.class_names, self.ignore_index)


# -- the task --------------------------------------------------------------------------
@register_task
class SegmentationTask(TaskHead):
    """SegFormer semantic segmentation on the fused image.

    Options (``task:`` section of a run config):
        num_classes: number of classes K (the engine fills it from the dataset).
        class_names: names for the per-class report (filled from the dataset).
        variant: ``b0`` (default) .. ``b5``.
        segformer: extra ``SegformerConfig`` keys (e.g. ``{drop_path_rate: 0.0}``).
        attention: ``sdpa`` (default) or ``eager``; ``eager`` is needed only if something
            differentiates twice through T (the engine's outer update does not: T's inner
            step is first order).
        weights: local weights (``--task-weights``): a ``save_pretrained`` folder, whose
            config.json then also fixes the architecture, or a state_dict file.
        trust_weights: let a weights file be fully unpickled (``--trust-weights``): a
            pickled model or a checkpoint holding other Python objects. Unpickling can run
            any code the file carries: only for files you trust.
        ignore_index: label value excluded from loss and metrics (default 255).
        class_weights: K per-class cross-entropy weights, or null.
        input_mean, input_std: the network sees ``(fused - mean) / std`` (default 0, 1:
            the fused image in [0, 1], as the reference feeds it).
    """

    name = "seg"
    target_kind = "mask"
    honours_trust_weights = True
    defaults = {
        "num_classes": None,
        "class_names": None,
        "variant": "b0",
        "segformer": {},
        "attention": "sdpa",
        "weights": None,
        "ignore_index": 255,
        "class_weights": None,
        "input_mean": 0.0,
        "input_std": 1.0,
    }

    def __init__(self, config: Mapping[str, Any] | None = None):
        super().__init__(config)
        cfg = self.config
        names = cfg["class_names"]
        if names is not None:
            names = [str(n) for n in names]
            if len(set(names)) != len(names):
                raise ValueError("class_names must be unique")
            if cfg["num_classes"] is None:
                cfg["num_classes"] = len(names)
            elif len(names) != int(cfg["num_classes"]):
                raise ValueError(f"{len(names)} class_names for num_classes={cfg['num_classes']}")
            cfg["class_names"] = names
        if cfg["num_classes"] is not None and int(cfg["num_classes"]) < 2:
            raise ValueError(f"num_classes must be at least 2 (got {cfg['num_classes']})")
        if cfg["variant"] not in SEGFORMER_VARIANTS:
            raise ValueError(f"unknown variant {cfg['variant']!r}; choose from {', '.join(SEGFORMER_VARIANTS)}")
        if cfg["attention"] not in ("sdpa", "eager"):
            raise ValueError(f"unknown attention {cfg['attention']!r} (sdpa, eager)")
        if not isinstance(cfg["segformer"], Mapping):
            raise ValueError("segformer must be a mapping of SegformerConfig keys")
        weights = cfg["class_weights"]
        if weights is not None:
            if cfg["num_classes"] is not None and len(weights) != int(cfg["num_classes"]):
                raise ValueError(f"class_weights has {len(weights)} values for {cfg['num_classes']} classes")
            if any(float(w) < 0 for w in weights):
                raise ValueError("class_weights must be non-negative")
        if float(cfg["input_std"]) <= 0:
            raise ValueError("input_std must be positive")
        self._class_weights = None if weights is None else torch.tensor([float(w) for w in weights])

    @property
    def num_classes(self) -> int:
        k = self.config["num_classes"]
        if k is None:
            raise TDFusionError("task 'seg': num_classes is not set (take it from a dataset with classes, "
                                "or set task.num_classes)")
        return int(k)

    # -- network ----------------------------------------------------------------------
    def build_network(self) -> nn.Module:
        cfg = self.config
        overrides = dict(cfg["segformer"])
        weights = cfg["weights"]
        if weights is not None:
            overrides = {**weights_architecture(weights), **overrides}
        net = build_segformer(self.num_classes, cfg["variant"], cfg["class_names"], cfg["attention"], **overrides)
        if weights is not None:
            load_segformer_weights(net, weights, bool(cfg["trust_weights"]))
        return net

    def adapt_input(self, fused: torch.Tensor) -> torch.Tensor:
        mean, std = float(self.config["input_mean"]), float(self.config["input_std"])
        if mean == 0.0 and std == 1.0:
            return fused
        return (fused - mean) / std

    def forward(self, net: nn.Module, params: Mapping[str, torch.Tensor], fused: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, K, H/4, W/4)`` of ``net`` under ``params`` for fused ``(B, 1, H, W)``."""
        return functional_call(net, dict(params), (self.adapt_input(fused),)).logits

    # -- learning ---------------------------------------------------------------------
    def loss(self, net: nn.Module, params: Mapping[str, torch.Tensor], fused: torch.Tensor,
             batch: Mapping[str, Any]) -> torch.Tensor:
        logits = self.forward(net, params, fused)
        return segmentation_loss(logits, batch["mask"].to(logits.device), self.config["ignore_index"],
                                 self._class_weights)

    # -- evaluation -------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, net: nn.Module, fused: torch.Tensor) -> torch.Tensor:
        """Class scores ``(B, K, H/4, W/4)`` for fused ``(B, 1, H, W)``, what :meth:`evaluator` consumes
        (it upsamples them to each label's size). The mode of ``net`` is the caller's."""
        return net(self.adapt_input(fused)).logits

    @torch.no_grad()
    def classify(self, net: nn.Module, fused: torch.Tensor, size: Sequence[int] | None = None) -> torch.Tensor:
        """``(B, H, W)`` int64 class ids at ``size`` (default: the fused image's size)."""
        size = tuple(fused.shape[-2:]) if size is None else tuple(size)
        return upsample_logits(self.predict(net, fused), size).argmax(dim=1)

    def fitness(self, metrics: Mapping[str, Any]) -> float | None:
        """mIoU, the segmentation papers' headline metric."""
        value = metrics.get("mIoU")
        return None if value is None else float(value)

    def evaluator(self) -> SegmentationEvaluator:
        return SegmentationEvaluator(self.num_classes, self.config["class_names"], self.config["ignore_index"])
