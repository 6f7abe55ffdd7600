"""Downstream task heads, looked up by name.

Built-in tasks are imported lazily (``seg`` pulls in transformers, ``det`` ultralytics),
so the engine and the command line only pay for the task they use. A third-party task
registers itself with :func:`register_task` (see README, "Adding a task").
"""
from __future__ import annotations

import importlib
from typing import Any, Mapping

from .base import Evaluator, TaskHead

__all__ = ["Evaluator", "TaskHead", "available_tasks", "create_task", "get_task", "register_task"]

_BUILTIN = {"recon": "tasks.recon", "seg": "tasks.seg", "det": "tasks.det"}
_REGISTRY: dict[str, type[TaskHead]] = {}


def register_task(cls: type[TaskHead]) -> type[TaskHead]:
    """Class decorator: make ``create_task(cls.name, ...)`` build this task."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    existing = _REGISTRY.get(cls.name)
    if existing is not None and existing is not cls:
        raise ValueError(f"task {cls.name!r} is registered twice ({existing.__name__}, {cls.__name__})")
    _REGISTRY[cls.name] = cls
    return cls


def get_task(name: str) -> type[TaskHead]:
    if name not in _REGISTRY and name in _BUILTIN:
        importlib.import_module(_BUILTIN[name])
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; available: {', '.join(available_tasks())}") from None


def create_task(name: str, config: Mapping[str, Any] | None = None) -> TaskHead:
    """Instantiate a task head by name with its config section."""
    return get_task(name)(config)


def available_tasks() -> list[str]:
    return sorted(set(_BUILTIN) | set(_REGISTRY))
