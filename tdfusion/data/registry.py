"""Datasets by name: ``build_dataset("synthetic", root=None, split="train", **options)``.

A builder takes ``(root, split, **options)`` and returns a
:class:`~tdfusion.data.base.PairDataset`; datasets with classes expose them as
``dataset.classes`` (a list of names, index = class id).
"""
from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable

from ..errors import TDFusionError
from .base import PairDataset

__all__ = ["available_datasets", "build_dataset", "register_dataset"]

_BUILDERS: dict[str, Callable[..., PairDataset]] = {}
# Datasets whose builders live in modules with heavy or optional imports.
_LAZY: dict[str, str] = {}


def register_dataset(name: str, lazy_module: str | None = None):
    """Decorator registering a dataset builder under ``name`` (case-insensitive)."""

    def wrap(fn):
        _BUILDERS[name.lower()] = fn
        return fn

    if lazy_module is not None:  # declare without importing
        _LAZY[name.lower()] = lazy_module
        return None
    return wrap


def build_dataset(name: str, root: str | None = None, split: str = "train", *, cache: bool = False,
                  **options: Any) -> PairDataset:
    """Build a registered dataset. ``cache=True`` (the ``data.cache`` config key) asks a
    builder that takes a ``cache`` option to keep decoded samples in memory, unless
    ``options`` set it explicitly."""
    key = name.lower()
    if key not in _BUILDERS and key in _LAZY:
        importlib.import_module(_LAZY[key])
    if key not in _BUILDERS:
        raise TDFusionError(f"unknown dataset {name!r}; available: {', '.join(available_datasets())}")
    builder = _BUILDERS[key]
    if cache and "cache" not in options and "cache" in inspect.signature(builder).parameters:
        options["cache"] = True
    return builder(root, split, **options)


def available_datasets() -> list[str]:
    return sorted(set(_BUILDERS) | set(_LAZY))
