"""Datasets, training/evaluation views and batching."""
from . import builtin as _builtin  # noqa: F401  (registers the built-in datasets)
from . import det as _det  # noqa: F401  (registers the detection datasets)
from . import seg as _seg  # noqa: F401  (registers msrs, fmb, seg_folder)
from .base import PairDataset, PairFolderDataset, Sample, luminance
from .registry import available_datasets, build_dataset, build_split, register_dataset
from .targets import TARGET_KINDS, DenseMap, TargetKind, register_target_kind
from .views import collate, eval_view, swap_sources, to_device, train_view

__all__ = [
    "TARGET_KINDS", "DenseMap", "PairDataset", "PairFolderDataset", "Sample", "TargetKind", "available_datasets",
    "build_dataset", "build_split", "collate", "eval_view", "luminance", "register_dataset", "register_target_kind",
    "swap_sources", "to_device", "train_view",
]
