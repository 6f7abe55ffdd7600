"""Semantic segmentation task (TDFusion's ``seg``): SegFormer on the fused image.

Network T: SegFormer (Xie et al., NeurIPS 2021) built by ``transformers`` from a
``SegformerConfig`` -- nothing is downloaded. MiT-b0 by default (TDFusion uses the
lightest model, about 3.7 M parameters); ``variant: b1 .. b5`` picks the larger
MiT encoders as defined in the SegFormer paper. The network
takes the 1-channel fused image directly (``num_channels=1``) and returns logits at
1/4 of the input resolution.

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

import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from tdfusion.errors import TDFusionError

from . import register_task
from .base import Evaluator, TaskHead

__all__ = [
    "SEGFORMER_VARIANTS", "SegmentationEvaluator", "SegmentationLoss", "SegmentationTask", "build_segformer",
    "confusion_matrix", "load_segformer_weights", "segmentation_loss", "segmentation_metrics", "upsample_logits",
]

# MiT encoder sizes (SegFormer paper, Xie et al. 2021); all share patch sizes 7/3/3/3,
# strides 4/2/2/2, reduction ratios 8/4/2/1, heads 1/2/5/8 and MLP ratio 4.
SEGFORMER_VARIANTS: dict[str, dict[str, Any]] = {
    "b0": dict(hidden_sizes=[32, 64, 160, 256], depths=[2, 2, 2, 2], decoder_hidden_size=256),
    "b1": dict(hidden_sizes=[64, 128, 320, 512], depths=[2, 2, 2, 2], decoder_hidden_size=256),
    "b2": dict(hidden_sizes=[64, 128, 320, 512], depths=[3, 4, 6, 3], decoder_hidden_size=768),
    "b3": dict(hidden_sizes=[64, 128, 320, 512], depths=[3, 4, 18, 3], decoder_hidden_size=768),
    "b4": dict(hidden_sizes=[64, 128, 320, 512], depths=[3, 8, 27, 3], decoder_hidden_size=768),
    "b5": dict(hidden_sizes=[64, 128, 320, 512], depths=[3, 6, 40, 3], decoder_hidden_size=768),
}
_COMMON = dict(num_attention_heads=[1, 2, 5, 8], sr_ratios=[8, 4, 2, 1], patch_sizes=[7, 3, 3, 3],
               strides=[4, 2, 2, 2], mlp_ratios=[4, 4, 4, 4], num_encoder_blocks=4)
# Architecture fields taken from a weights folder's config.json.
_ARCH_KEYS = ("hidden_sizes", "depths", "num_attention_heads", "sr_ratios", "patch_sizes", "strides",
              "mlp_ratios", "num_encoder_blocks", "decoder_hidden_size", "hidden_act", "layer_norm_eps",
              "reshape_last_stage")
_FIRST_PATCH_EMBED = "segformer.stages.0.patch_embeddings.proj.weight"


# -- network ---------------------------------------------------------------------------
def segformer_config(num_classes: int, variant: str = "b0", class_names: Sequence[str] | None = None,
                     attention: str = "sdpa", **overrides: Any):
    """A 1-channel ``SegformerConfig`` for ``num_classes`` classes; ``overrides`` win.

    ``attention``: ``"sdpa"`` (torch's fused attention, faster) or ``"eager"`` (plain
    matmul-softmax, the only one with second derivatives: torch implements no double
    backward for its fused attention kernels).
    """
    from transformers import SegformerConfig

    if variant not in SEGFORMER_VARIANTS:
        raise TDFusionError(f"unknown SegFormer variant {variant!r}; choose from {', '.join(SEGFORMER_VARIANTS)}")
    if attention not in ("sdpa", "eager"):
        raise TDFusionError(f"unknown attention implementation {attention!r} (sdpa, eager)")
    known = set(SegformerConfig().to_dict())
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TDFusionError(f"unknown SegformerConfig key(s) {', '.join(unknown)} in task.segformer")
    kw: dict[str, Any] = {**_COMMON, **SEGFORMER_VARIANTS[variant], "num_channels": 1, **overrides,
                          "num_labels": int(num_classes)}
    if class_names is not None:
        kw["id2label"] = {i: str(n) for i, n in enumerate(class_names)}
        kw["label2id"] = {str(n): i for i, n in enumerate(class_names)}
    return SegformerConfig(attn_implementation=attention, **kw)


def build_segformer(num_classes: int, variant: str = "b0", class_names: Sequence[str] | None = None,
                    attention: str = "sdpa", **overrides: Any) -> nn.Module:
    """A freshly initialised SegFormer: ``(B, 1, H, W)`` -> logits ``(B, K, H/4, W/4)`` (``.logits``)."""
    from transformers import SegformerForSemanticSegmentation

    return SegformerForSemanticSegmentation(segformer_config(num_classes, variant, class_names, attention,
                                                             **overrides))


def _is_hf_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def _folder_architecture(path: Path) -> dict[str, Any]:
    try:
        cfg = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise TDFusionError(f"{path / 'config.json'}: unreadable ({exc})") from None
    if cfg.get("model_type") != "segformer":
        raise TDFusionError(f"{path}: not a SegFormer folder (config.json model_type is {cfg.get('model_type')!r})")
    return {k: cfg[k] for k in _ARCH_KEYS if k in cfg}


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a plain weights file (torch ``.pt``/``.pth``/``.bin`` or ``.safetensors``)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            from tdfusion.checkpoint import safe_torch_load

            state = safe_torch_load(path, "weights file")
    except TDFusionError:
        raise
    except Exception as exc:  # safetensors raises several types for a bad file
        raise TDFusionError(f"{path}: cannot read weights ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    # Unwrap the usual containers ({"state_dict": ...}, {"model": ...}).
    for key in ("state_dict", "model", "task_net"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise TDFusionError(f"{path}: not a state_dict (expected a mapping of names to tensors)")
    return dict(state)


def _via_transformers(folder: Path, path: Path) -> dict[str, torch.Tensor]:
    """Load a folder with ``from_pretrained`` (offline) and return the tensors it found.

    ``from_pretrained`` knows how older transformers versions named SegFormer's weights
    (``encoder.block.N...`` before 5.0), so it does the renaming for us.
    """
    from transformers import SegformerForSemanticSegmentation

    try:
        model, info = SegformerForSemanticSegmentation.from_pretrained(
            str(folder), local_files_only=True, output_loading_info=True)
    except Exception as exc:  # transformers raises OSError/ValueError/RuntimeError variously
        raise TDFusionError(f"{path}: cannot load SegFormer weights ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0]})") from None
    missing = set(info.get("missing_keys", []))
    return {k: v for k, v in model.state_dict().items() if k not in missing}


def _old_style(state: Mapping[str, torch.Tensor]) -> bool:
    return any(".encoder.block." in k or k.startswith("encoder.block.") or "encoder.patch_embeddings." in k
               for k in state)


def load_segformer_weights(net: nn.Module, path: str | os.PathLike) -> dict[str, list[str]]:
    """Load local weights into ``net`` (a network from :func:`build_segformer`).

    ``path`` is a folder written by ``save_pretrained`` or a state_dict file (``.pt``,
    ``.pth``, ``.bin``, ``.safetensors``; transformers-4 key names are accepted).
    Adaptations, each reported in a warning:

    * a first patch embedding for 3-channel input is summed over its input channels,
      which is exactly what feeding the grey image replicated to RGB would compute;
    * a classifier for another number of classes, or a missing decode head (encoder-only
      weights such as ImageNet MiT), is left randomly initialised.

    Any other missing or mis-shaped tensor is a :class:`TDFusionError` naming the file.
    Returns ``{"loaded": [...], "reinitialised": [...], "ignored": [...]}`` (tensor names).
    """
    path = Path(path)
    if not path.exists():
        raise TDFusionError(f"{path}: no such weights file or folder")
    if path.is_dir():
        if not _is_hf_folder(path):
            raise TDFusionError(f"{path}: a weights folder needs the config.json written by save_pretrained")
        state = _via_transformers(path, path)
    else:
        state = _read_state_dict(path)
        if _old_style(state):
            state = _renamed_by_transformers(state, net, path)
    own = net.state_dict()
    loaded: dict[str, torch.Tensor] = {}
    reinit: list[str] = []
    ignored: list[str] = []
    for key, value in state.items():
        if key not in own:
            ignored.append(key)
            continue
        want = own[key]
        if value.shape != want.shape:
            if (key == _FIRST_PATCH_EMBED and value.dim() == 4 and value.shape[1] == 3 and want.shape[1] == 1
                    and value.shape[0] == want.shape[0] and value.shape[2:] == want.shape[2:]):
                value = value.sum(dim=1, keepdim=True)
            elif key.startswith("decode_head.classifier."):
                reinit.append(key)
                continue
            else:
                raise TDFusionError(f"{path}: tensor {key} has shape {tuple(value.shape)} but this network "
                                    f"expects {tuple(want.shape)} (check task.variant / task.segformer)")
        loaded[key] = value.to(want.dtype)
    if not loaded:
        raise TDFusionError(f"{path}: no SegFormer tensors found (e.g. {next(iter(state), 'none')!r})")
    missing = [k for k in own if k not in loaded and k not in reinit]
    missing_encoder = [k for k in missing if not k.startswith("decode_head.")]
    if missing_encoder:
        raise TDFusionError(f"{path}: incomplete SegFormer weights: {missing_encoder[0]} missing"
                            + (f" (and {len(missing_encoder) - 1} more)" if len(missing_encoder) > 1 else ""))
    net.load_state_dict(loaded, strict=False)
    reinit = sorted(set(reinit) | set(missing))
    if reinit or ignored:
        notes = []
        if reinit:
            notes.append(f"randomly initialised: {_summary(reinit)}")
        if ignored:
            notes.append(f"not used: {_summary(ignored)}")
        warnings.warn(f"{path}: loaded {len(loaded)} tensors; " + "; ".join(notes), stacklevel=2)
    return {"loaded": sorted(loaded), "reinitialised": reinit, "ignored": sorted(ignored)}


def _summary(keys: Sequence[str]) -> str:
    return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")


def _renamed_by_transformers(state: dict[str, torch.Tensor], net: nn.Module, path: Path) -> dict[str, torch.Tensor]:
    """Old-style (transformers 4) keys: write a temporary folder and let ``from_pretrained`` rename."""
    from safetensors.torch import save_file

    config = net.config.__class__(**net.config.to_dict())
    for key, value in state.items():  # size the config after the tensors, not after ``net``
        if key.endswith("patch_embeddings.0.proj.weight") and value.dim() == 4:
            config.num_channels = int(value.shape[1])
        if key.endswith("decode_head.classifier.weight"):
            config.num_labels = int(value.shape[0])
    config.id2label = {i: f"LABEL_{i}" for i in range(config.num_labels)}
    config.label2id = {v: k for k, v in config.id2label.items()}
    with tempfile.TemporaryDirectory(prefix="tdfusion-segformer-") as tmp:
        config.save_pretrained(tmp)
        save_file({k: v.contiguous().clone() for k, v in state.items()}, os.path.join(tmp, "model.safetensors"))
        return _via_transformers(Path(tmp), path)


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
        ignore_index: label value excluded from loss and metrics (default 255).
        class_weights: K per-class cross-entropy weights, or null.
        input_mean, input_std: the network sees ``(fused - mean) / std`` (default 0, 1:
            the fused image in [0, 1], as the reference feeds it).
    """

    name = "seg"
    target_kind = "mask"
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
        if weights is not None and _is_hf_folder(Path(weights)):
            overrides = {**_folder_architecture(Path(weights)), **overrides}
        net = build_segformer(self.num_classes, cfg["variant"], cfg["class_names"], cfg["attention"], **overrides)
        if weights is not None:
            load_segformer_weights(net, weights)
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
