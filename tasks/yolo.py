"""YOLOv8 for the ``det`` task: the network, its local weights, and the conversions
between the task's tensors and the network's (padding, loss targets, NMS).

The network is ultralytics' YOLOv8 (``n`` by default; ``s``/``m``/``l``/``x``), built from
the model YAML that ships with ultralytics for one input channel and the dataset's
classes: nothing is downloaded.

**Input size.** YOLOv8 needs sides divisible by its largest stride (32); MSRS's 240x320
is not. :func:`pad_to_stride` pads the fused image at the bottom/right with ultralytics'
letterbox grey (114/255); :func:`yolo_targets` re-normalises the boxes to the padded
canvas, so pixel coordinates are unchanged; :func:`decode_predictions` clips the
detections back to the unpadded image.

The task head that uses them, with the loss and the COCO evaluation, is
:class:`~tdfusion.tasks.det.DetectionTask` (see ``docs/detection.md``).
"""
from __future__ import annotations

import os
import warnings
from typing import Sequence

# ultralytics decides at import whether it is online and may otherwise fetch fonts or
# assets; a user's explicit setting wins.
os.environ.setdefault("YOLO_OFFLINE", "1")
# Never pip-install at run time (ultralytics otherwise installs missing optional packages).
os.environ.setdefault("YOLO_AUTOINSTALL", "False")
os.environ.setdefault("YOLO_VERBOSE", "False")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from tdfusion.checkpoint import TRUST_HINT  # noqa: E402  (re-exported: what the opt-in message says)
from tdfusion.errors import TDFusionError  # noqa: E402

__all__ = ["PAD_VALUE", "TRUST_HINT", "build_yolov8", "decode_predictions", "load_yolov8_weights", "pad_to_stride",
           "yolo_targets"]

#: ultralytics' letterbox fill (114 of 255), used for the padding to a multiple of the stride.
PAD_VALUE = 114 / 255
_VARIANTS = ("n", "s", "m", "l", "x")


# -- network ------------------------------------------------------------------------------------

def build_yolov8(num_classes: int, variant: str = "n", channels: int = 1) -> nn.Module:
    """A freshly initialised YOLOv8 ``DetectionModel`` built from ultralytics' model YAML."""
    if variant not in _VARIANTS:
        raise TDFusionError(f"det task: unknown YOLOv8 variant {variant!r} (one of {', '.join(_VARIANTS)})")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise TDFusionError(f"det task: num_classes must be a positive integer, not {num_classes!r}")
    from ultralytics.nn.tasks import DetectionModel

    return DetectionModel(f"yolov8{variant}.yaml", ch=channels, nc=num_classes, verbose=False)


def _state_dict_from_file(path: str, trust: bool = False) -> dict[str, torch.Tensor]:
    """The tensors of a weights file. ``trust``: also unpickle full ultralytics checkpoints
    (they pickle the model object, and unpickling can run any code the file carries)."""
    from tdfusion.checkpoint import load_weights_file

    if not os.path.isfile(path):
        raise TDFusionError(f"{path}: no such task weights file")
    obj = load_weights_file(path, "weights file", trust)
    if isinstance(obj, dict):
        for key in ("ema", "model", "state_dict", "task", "task_net"):
            if obj.get(key) is not None:
                obj = obj[key]
                break
    if isinstance(obj, nn.Module):
        obj = obj.float().state_dict()
    if not isinstance(obj, dict) or not obj or not all(torch.is_tensor(v) for v in obj.values()):
        raise TDFusionError(f"{path}: no YOLOv8 state_dict found (expected a state_dict or an ultralytics checkpoint)")
    return obj


def load_yolov8_weights(net: nn.Module, path: str, trust: bool = False) -> tuple[int, int]:
    """Load a local ``.pt`` into ``net``; returns ``(tensors loaded, tensors in net)``.

    Files load with ``weights_only=True``; a pickled ultralytics checkpoint is refused
    unless ``trust`` (``--trust-weights``) says the file may be unpickled.

    Tensors are matched by name and shape. A 3-channel first convolution (ultralytics'
    RGB checkpoints) is folded to one channel by summing over its input channels, which
    gives the same response to a grey image replicated to RGB. Tensors whose shape
    differs (e.g. the class branch of a head trained for other classes) keep their
    fresh initialisation, with a warning.
    """
    source = _state_dict_from_file(path, trust)
    target = net.state_dict()
    loaded = {}
    for name, t in target.items():
        s = source.get(name)
        if s is None:
            continue
        if s.shape != t.shape and s.ndim == 4 and s.shape[1] == 3 and t.shape[1] == 1 and s.shape[0] == t.shape[0]:
            s = s.sum(1, keepdim=True)
        if s.shape == t.shape:
            loaded[name] = s.to(t.dtype)
    if not loaded:
        raise TDFusionError(f"{path}: no tensor matches this YOLOv8 (wrong variant or not a YOLOv8 checkpoint?)")
    net.load_state_dict(loaded, strict=False)
    if len(loaded) < len(target):
        warnings.warn(f"{path}: loaded {len(loaded)} of {len(target)} tensors; the rest keep their fresh "
                      "initialisation (different classes or variant)", stacklevel=2)
    return len(loaded), len(target)


# -- between the task's tensors and the network's -----------------------------------------------

def pad_to_stride(images: torch.Tensor, stride: int = 32, value: float = PAD_VALUE) -> torch.Tensor:
    """Pad ``(B, C, H, W)`` at the bottom/right to sides divisible by ``stride``."""
    h, w = images.shape[-2:]
    ph, pw = (-h) % stride, (-w) % stride
    if not ph and not pw:
        return images
    return F.pad(images, (0, pw, 0, ph), value=value)


def yolo_targets(boxes: torch.Tensor, image_hw: Sequence[int], canvas_hw: Sequence[int]) -> dict[str, torch.Tensor]:
    """Batch rows ``(N, 6)`` ``(image, class, cx, cy, w, h)`` normalised to an ``image_hw``
    image, as the ultralytics loss wants them for an ``image_hw`` image placed at the
    top-left of a ``canvas_hw`` canvas: ``batch_idx (N,)``, ``cls (N, 1)``, ``bboxes (N, 4)``."""
    boxes = boxes.reshape(-1, 6)
    boxes = boxes if boxes.is_floating_point() else boxes.float()
    sy, sx = image_hw[0] / canvas_hw[0], image_hw[1] / canvas_hw[1]
    scale = boxes.new_tensor([sx, sy, sx, sy])
    return {"batch_idx": boxes[:, 0], "cls": boxes[:, 1:2], "bboxes": boxes[:, 2:6] * scale}


def decode_predictions(raw: torch.Tensor, image_hw: Sequence[int], conf: float = 0.001, iou: float = 0.7,
                       max_det: int = 300, multi_label: bool = True) -> list[dict[str, torch.Tensor]]:
    """NMS on YOLOv8's decoded output ``(B, 4 + K, A)`` (xywh pixels on the padded canvas).

    Returns per image ``{"boxes": (n, 4) xyxy pixels clipped to image_hw, "scores": (n,),
    "classes": (n,) int64, "image_size": (H, W)}``, highest score first.
    """
    try:
        from ultralytics.utils.nms import non_max_suppression
    except ImportError:  # ultralytics < 8.3
        from ultralytics.utils.ops import non_max_suppression

    # ultralytics stops NMS after a wall-clock budget per image; results must not depend
    # on the machine's speed, so the budget is effectively removed.
    kept = non_max_suppression(raw.float(), conf_thres=conf, iou_thres=iou, multi_label=multi_label,
                               max_det=max_det, max_time_img=1e6)
    h, w = int(image_hw[0]), int(image_hw[1])
    out = []
    for det in kept:
        det = det.detach()
        boxes = det[:, :4].clone()
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
        out.append({"boxes": boxes.cpu(), "scores": det[:, 4].cpu(), "classes": det[:, 5].long().cpu(),
                    "image_size": (h, w)})
    return out
