"""Arithmetic precision of training (``train.precision``): fp32, bf16 or fp16 autocast.

Where lower precision applies, and why: the fusion phase (ordinary steps of F and T)
runs under ``torch.autocast``; the meta step (G's meta-gradient) always runs in fp32.
On the project's CPU the bf16 meta-gradient of G pointed away from the fp32 one (cosine
similarity 0.915-0.960 for segmentation, fixed batches; ``tdfusion bench --tasks seg
--precision bfloat16`` measures it), below the 0.99 the project requires, and in fp16
it would underflow: it carries the inner step size (~1e-4) as a factor. fp16 needs CUDA
and comes with a gradient scaler (``torch.amp.GradScaler``); bf16 has fp32's range and
needs none.
"""
from __future__ import annotations

import contextlib

import torch

from .errors import TDFusionError

__all__ = ["PRECISIONS", "autocast", "check_precision", "grad_scaler"]

PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str, device: torch.device) -> None:
    """Raise :class:`TDFusionError` for an unknown precision or fp16 off CUDA."""
    if precision not in PRECISIONS:
        raise TDFusionError(f"train.precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    if precision == "fp16" and device.type != "cuda":
        raise TDFusionError("train.precision fp16 needs a CUDA device (CPU fp16 kernels are slow or missing); "
                            "use bf16 on CPU")


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to the precision's dtype on ``device``; nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=_DTYPES[precision])


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    """A gradient scaler for fp16 (small gradients would flush to zero), else None."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None
