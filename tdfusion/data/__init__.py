"""Datasets, training/evaluation views and batching."""
from . import builtin as _builtin  # noqa: F401  (registers the built-in datasets)
from . import det as _det  # noqa: F401  (registers the detection datasets)
from . import seg as _seg  # noqa: F401  (registers msrs, fmb, seg_folder)
from .base import PairDataset, PairFolderDataset, Sample, luminance
from .registry import available_datasets, build_dataset, register_dataset
from .views import collate, eval_view, swap_sources, to_device, train_view

__all__ = [
    "PairDataset", "PairFolderDataset", "Sample", "available_datasets", "build_dataset", "collate",
    "eval_view", "luminance", "register_dataset", "swap_sources", "to_device", "train_view",
]
