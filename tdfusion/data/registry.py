"""Datasets by name: ``build_dataset("synthetic", root=None, split="train", **options)``.

A builder takes ``(root, split, **options)`` and returns a
:class:`~tdfusion.data.base.PairDataset`; datasets with classes expose them as
``dataset.classes`` (a list of names, index = class id).
"""
from __future__ import annotations

import difflib
import inspect
from typing import Any, Callable

from ..errors import TDFusionError
from ..registry import Registry
from .base import PairDataset

__all__ = ["DATASETS", "available_datasets", "build_dataset", "build_split", "dataset_builder", "dataset_options",
           "register_dataset"]

DATASETS: Registry[Callable[..., PairDataset]] = Registry("dataset", entry_point_group="tdfusion.datasets")
# Folder options are spelt dir_a/dir_b by the pair and detection datasets and a_dir/b_dir/
# label_dir by the segmentation ones; either spelling is accepted everywhere.
_ALIASES = {"a_dir": "dir_a", "dir_a": "a_dir", "b_dir": "dir_b", "dir_b": "b_dir",
            "label_dir": "dir_label", "dir_label": "label_dir"}


def register_dataset(name: str, lazy_module: str | None = None, serves: str | None = None):
    """Decorator registering a dataset builder under ``name`` (case-insensitive).

    ``serves``: the tasks the dataset's targets serve (``tdfusion data list`` shows it),
    e.g. ``"seg"``. ``lazy_module``: declare the name now, import the module (whose
    decorator registers it) on first use.
    """
    if lazy_module is not None:
        DATASETS.declare(name, lazy_module)
        return None

    def wrap(fn):
        fn.serves = serves or getattr(fn, "serves", None)
        return DATASETS.register(name)(fn)

    return wrap


def dataset_builder(name: str) -> Callable[..., PairDataset]:
    """The registered builder of ``name`` (importing its module if it is declared lazily)."""
    return DATASETS.get(name)


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


def build_split(cfg: dict, split_key: str = "test_split") -> PairDataset:
    """The dataset a run config names, split ``cfg["dataset"][split_key]`` (``train_split`` or
    ``test_split``), with its options and ``data.cache``."""
    ds = cfg["dataset"]
    try:
        return build_dataset(ds["name"], ds["root"], ds[split_key], cache=bool(cfg["data"].get("cache")),
                             **dict(ds.get("options") or {}))
    except TypeError as exc:
        raise TDFusionError(f"dataset {ds['name']!r}: bad option ({exc})") from None


def available_datasets(pattern: str | None = None) -> list[str]:
    """Registered dataset names; ``pattern`` filters shell-style."""
    return DATASETS.names(pattern)
