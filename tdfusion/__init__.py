"""tdfusion: task-driven multi-modal image fusion with a meta-learned fusion loss.

The Python API (docs/python.md): :class:`Fuser` fuses numpy arrays, torch tensors or PIL
images with a published model or a checkpoint; :func:`fusion_metrics` scores them.
"""
__version__ = "0.1.0"

__all__ = ["Fuser", "__version__", "fusion_metrics"]


def __getattr__(name: str):
    # Imported on first use: the command line reads __version__ from here, and its --help
    # must not pay for torch (seconds) to print a page of text.
    if name in ("Fuser", "fusion_metrics"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'tdfusion' has no attribute {name!r}")
