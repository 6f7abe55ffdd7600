"""Device selection shared by every command (``--device``)."""
from __future__ import annotations

import torch

from .errors import TDFusionError


def resolve_device(name: str | None = None) -> torch.device:
    """``None``/``"auto"`` -> CUDA when available, else CPU; otherwise the named device.

    Raises TDFusionError for a CUDA device on a machine without one.
    """
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise TDFusionError(f"--device {name!r}: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TDFusionError(f"--device {name!r}: CUDA is not available on this machine (use --device cpu)")
    return device
