"""Seeds and deterministic kernels: what makes a run repeatable."""
from __future__ import annotations

import os
import random

import numpy as np
import torch

__all__ = ["seed_everything", "set_determinism"]


def seed_everything(seed: int) -> None:
    """Seed torch, Python's ``random`` and NumPy's global generator.

    tdfusion draws from keyed generators of its own; the global ones are seeded for the
    third-party code that draws from them (ultralytics' transforms and loss, transformers).
    """
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


def set_determinism(enabled: bool, device: torch.device) -> None:
    """``train.deterministic``: deterministic kernels (bit-identical CPU runs for a seed).

    On CUDA, ops that have no deterministic kernel warn instead of failing the run (see
    ``docs/distributed.md``, "Determinism"); cuBLAS needs its workspace pinned, which must
    happen before its first use, hence the environment variable.
    """
    if not enabled:
        return
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
