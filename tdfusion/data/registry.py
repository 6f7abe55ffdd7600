"""Datasets by name: ``build_dataset("synthetic", root=None, split="train", **options)``.

A builder takes ``(root, split, **options)`` and returns a
:class:`~tdfusion.data.base.PairDataset`; datasets with classes expose them as
``dataset.classes`` (a list of names, index = class id).
"""
from __future__ import annotations

import difflib
import importlib
import inspect
from typing import Any, Callable

from ..errors import TDFusionError
from .base import PairDataset

__all__ = ["available_datasets", "build_dataset", "dataset_builder", "dataset_options", "register_dataset"]

_BUILDERS: dict[str, Callable[..., PairDataset]] = {}
# Datasets whose builders live in modules with heavy or optional imports.
_LAZY: dict[str, str] = {}
# Folder options are spelt dir_a/dir_b by the pair and detection datasets and a_dir/b_dir/
# label_dir by the segmentation ones; either spelling is accepted everywhere.
_ALIASES = {"a_dir": "dir_a", "dir_a": "a_dir", "b_dir": "dir_b", "dir_b": "b_dir",
            "label_dir": "dir_label", "dir_label": "label_dir"}


def register_dataset(name: str, lazy_module: str | None = None, serves: str | None = None):
    """Decorator registering a dataset builder under ``name`` (case-insensitive).

    ``serves``: the tasks the dataset's targets serve (``tdfusion data list`` shows it),
    e.g. ``"seg"``; by default derived from nothing and shown as ``-``.
    """

    def wrap(fn):
        fn.serves = serves or getattr(fn, "serves", None)
        _BUILDERS[name.lower()] = fn
        return fn

    if lazy_module is not None:  # declare without importing
        _LAZY[name.lower()] = lazy_module
        return None
    return wrap


def dataset_builder(name: str) -> Callable[..., PairDataset]:
    """The registered builder of ``name`` (importing its module if it is declared lazily)."""
    key = name.lower()
    if key not in _BUILDERS and key in _LAZY:
        importlib.import_module(_LAZY[key])
    if key not in _BUILDERS:
        close = difflib.get_close_matches(key, available_datasets(), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise TDFusionError(f"unknown dataset {name!r}{hint} available: {', '.join(available_datasets())}")
    return _BUILDERS[key]


def dataset_options(name: str) -> dict[str, Any]:
    """A dataset's options (keyword arguments of its builder) and their defaults."""
    builder = dataset_builder(name)
    target = getattr(builder, "options_of", builder)  # a builder passing **options on names where they go
    params = list(inspect.signature(target).parameters.values())
    return {p.name: p.default for p in params
            if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name not in ("self", "root", "split")}


def build_dataset(name: str, root: str | None = None, split: str = "train", *, cache: bool = False,
                  **options: Any) -> PairDataset:
    """Build a registered dataset. An unknown option is an error that suggests the closest
    known one; ``a_dir``/``dir_a`` (and ``b``, ``label``) spellings are interchangeable.
    ``cache=True`` (the ``data.cache`` config key) asks a builder that takes a ``cache``
    option to keep decoded samples in memory, unless ``options`` set it explicitly."""
    builder = dataset_builder(name)
    known = dataset_options(name)
    for key in list(options):
        if key in known:
            continue
        if _ALIASES.get(key) in known and _ALIASES[key] not in options:
            options[_ALIASES[key]] = options.pop(key)
            continue
        close = difflib.get_close_matches(key, list(known) + [a for a in _ALIASES if _ALIASES[a] in known], n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise TDFusionError(f"dataset {name!r} has no option {key!r}{hint} (options: {', '.join(known) or 'none'})")
    if cache and "cache" not in options and "cache" in known:
        options["cache"] = True
    return builder(root, split, **options)


def available_datasets() -> list[str]:
    return sorted(set(_BUILDERS) | set(_LAZY))
