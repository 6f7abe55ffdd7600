"""SegFormer for the ``seg`` task: the network's construction and its local weights.

SegFormer (Xie et al., NeurIPS 2021) is built by ``transformers`` from a
``SegformerConfig`` -- nothing is downloaded. MiT-b0 by default (TDFusion uses the
lightest model, about 3.7 M parameters); ``variant: b1 .. b5`` picks the larger
MiT encoders as defined in the SegFormer paper. The network takes the 1-channel fused
image directly (``num_channels=1``) and returns logits at 1/4 of the input resolution.

:func:`load_segformer_weights` reads a ``save_pretrained`` folder or a state_dict file
(transformers-4 key names included) into such a network, adapting RGB input weights and
re-initialising a classifier for other classes. The task head that uses both is
:class:`~tdfusion.tasks.seg.SegmentationTask`.
"""
from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from tdfusion.errors import TDFusionError

__all__ = ["SEGFORMER_VARIANTS", "build_segformer", "load_segformer_weights", "segformer_config",
           "weights_architecture"]

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


def weights_architecture(path: str | os.PathLike) -> dict[str, Any]:
    """The architecture fields that local weights fix: a ``save_pretrained`` folder's
    config.json (see :func:`load_segformer_weights`); ``{}`` for a state_dict file."""
    path = Path(path)
    return _folder_architecture(path) if _is_hf_folder(path) else {}


def _read_state_dict(path: Path, trust: bool = False) -> dict[str, torch.Tensor]:
    """Tensors of a plain weights file (torch ``.pt``/``.pth``/``.bin`` or ``.safetensors``).

    ``trust`` (``--trust-weights``): a torch file may also be fully unpickled -- a pickled
    model object or a training checkpoint holding other Python objects -- which can run any
    code the file carries. ``.safetensors`` files never need it."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            from tdfusion.checkpoint import load_weights_file

            state = load_weights_file(path, "weights file", trust)
    except TDFusionError:
        raise
    except Exception as exc:  # safetensors raises several types for a bad file
        raise TDFusionError(f"{path}: cannot read weights ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    # Unwrap the usual containers ({"state_dict": ...}, {"model": ...}) and, from a trusted
    # file, a pickled model object (torch.save(model)).
    for key in ("state_dict", "model", "task_net"):
        if isinstance(state, dict) and isinstance(state.get(key), (dict, nn.Module)):
            state = state[key]
    if isinstance(state, nn.Module):
        state = state.state_dict()
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


def load_segformer_weights(net: nn.Module, path: str | os.PathLike, trust: bool = False) -> dict[str, list[str]]:
    """Load local weights into ``net`` (a network from :func:`build_segformer`).

    ``path`` is a folder written by ``save_pretrained`` or a state_dict file (``.pt``,
    ``.pth``, ``.bin``, ``.safetensors``; transformers-4 key names are accepted).
    Adaptations, each reported in a warning:

    * a first patch embedding for 3-channel input is summed over its input channels,
      which is exactly what feeding the grey image replicated to RGB would compute;
    * a classifier for another number of classes, or a missing decode head (encoder-only
      weights such as ImageNet MiT), is left randomly initialised.

    Any other missing or mis-shaped tensor is a :class:`TDFusionError` naming the file.
    A file is read weights-only unless ``trust`` (``--trust-weights``) allows unpickling it.
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
        state = _read_state_dict(path, trust)
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
