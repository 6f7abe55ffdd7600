"""Downstream task heads, looked up by name.

Built-in tasks are imported lazily (``seg`` pulls in transformers, ``det`` ultralytics),
so the engine and the command line only pay for the task they use. A third-party task
registers itself with :func:`register_task` (see README, "Adding a task").
"""
from __future__ import annotations

from typing import Any, Mapping

from tdfusion.errors import TDFusionError
from tdfusion.registry import Registry

from .base import Evaluator, TaskHead

__all__ = ["TASKS", "Evaluator", "TaskHead", "available_tasks", "build_task", "create_task", "get_task", "register_task"]

TASKS: Registry[type[TaskHead]] = Registry("task", entry_point_group="tdfusion.tasks")
for _name in ("recon", "seg", "det"):
    TASKS.declare(_name, f"{__name__}.{_name}")


def register_task(cls: type[TaskHead]) -> type[TaskHead]:
    """Class decorator: make ``create_task(cls.name, ...)`` build this task."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    return TASKS.register(cls.name)(cls)


def get_task(name: str) -> type[TaskHead]:
    return TASKS.get(name)


def create_task(name: str, config: Mapping[str, Any] | None = None) -> TaskHead:
    """Instantiate a task head by name with its config section."""
    return get_task(name)(config)


def available_tasks(pattern: str | None = None) -> list[str]:
    """Registered task names; ``pattern`` filters shell-style."""
    return TASKS.names(pattern)


def build_task(task_cfg: Mapping[str, Any], dataset=None) -> TaskHead:
    """The task of a config's ``task:`` section, fitted to ``dataset`` (its classes and
    void label, :meth:`TaskHead.for_dataset`); a bad name or value is a :class:`TDFusionError`."""
    cfg = dict(task_cfg)
    name = cfg.pop("name")
    cls = get_task(name)  # UnknownName is a TDFusionError
    try:
        return cls.for_dataset(cfg, dataset)
    except ValueError as exc:
        raise TDFusionError(f"task {name!r}: {exc}") from None
