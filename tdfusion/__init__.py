"""tdfusion: task-driven multi-modal image fusion with a meta-learned fusion loss.

The Python API (docs/python.md): :class:`Fuser` fuses numpy arrays, torch tensors or PIL
images with a published model or a checkpoint; :func:`fusion_metrics` scores them.
"""
__version__ = "0.1.0"

__all__ = ["Fuser", "__version__", "fusion_metrics"]


def _find_tasks_in_source_tree() -> None:
    """Make ``tdfusion.tasks`` the top-level ``tasks/`` folder of a source checkout.

    The task heads live in ``tasks/`` beside ``tdfusion/`` (the project's layout); an
    installed tdfusion has them at ``tdfusion/tasks`` (pyproject's ``package-dir``). Run
    from a checkout (the tests, an editable install), the folder is found here, under
    the one name ``tdfusion.tasks``: importing it also as ``tasks`` would register every
    task twice.
    """
    import importlib.abc
    import importlib.util
    import os
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    source = os.path.join(os.path.dirname(here), "tasks")
    if os.path.isdir(os.path.join(here, "tasks")) or not os.path.isfile(os.path.join(source, "__init__.py")):
        return

    class SourceTreeTasks(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname, path, target=None):
            if fullname != f"{__name__}.tasks":
                return None
            return importlib.util.spec_from_file_location(fullname, os.path.join(source, "__init__.py"),
                                                          submodule_search_locations=[source])

    if not any(type(f).__name__ == "SourceTreeTasks" for f in sys.meta_path):
        sys.meta_path.insert(0, SourceTreeTasks())


_find_tasks_in_source_tree()


def __getattr__(name: str):
    # Imported on first use: the command line reads __version__ from here, and its --help
    # must not pay for torch (seconds) to print a page of text.
    if name in ("Fuser", "fusion_metrics"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'tdfusion' has no attribute {name!r}")
