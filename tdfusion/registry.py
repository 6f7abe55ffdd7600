"""One registry type for everything looked up by name: networks, datasets, tasks, target kinds.

The shape of timm's ``register_model`` and mmengine's ``Registry``: a decorator registers
a builder under a name; lookups are case-insensitive; a name registered twice (by two
different objects) is refused; an unknown name raises :class:`UnknownName` with the
closest known name; ``names(pattern)`` lists with a shell-style filter.

Where the object comes from, in the order a lookup tries:

1. registered by a decorator in a module already imported;
2. declared lazily (``declare(name, "module.path")``): the module is imported on first
   use, so the built-in tasks do not pull in transformers or ultralytics until asked for;
3. a package entry point of the registry's group (``tdfusion.tasks``,
   ``tdfusion.datasets``, ...): a third-party plug-in that ``pip install`` made known.
   The entry point names a module (imported, its decorators register) or an object
   (registered under the entry point's name);
4. the config key ``imports: [mypkg.mytask]`` imports modules before anything is built
   (:func:`import_plugins`).
"""
from __future__ import annotations

import difflib
import fnmatch
import importlib
import inspect
from importlib import metadata
from typing import Any, Callable, Generic, Iterable, TypeVar

from .errors import TDFusionError

__all__ = ["Registry", "UnknownName", "import_plugins"]

T = TypeVar("T")


class UnknownName(TDFusionError, ValueError):
    """A name no registry entry answers to (a ``ValueError`` too, for library callers)."""


class Registry(Generic[T]):
    """Named builders of one kind.

    Args:
        kind: what the entries are, for messages (``"task"``, ``"dataset"``).
        entry_point_group: the package entry point group of third-party plug-ins.
    """

    def __init__(self, kind: str, entry_point_group: str | None = None):
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._entries: dict[str, T] = {}
        self._lazy: dict[str, str] = {}
        self._entry_points_loaded = False

    # -- registering --------------------------------------------------------------------
    def register(self, name: str | None = None) -> Callable[[T], T]:
        """Decorator: register the object under ``name`` (default: its ``name`` attribute,
        else its ``__name__``)."""

        def wrap(obj: T) -> T:
            self.add(name or getattr(obj, "name", None) or obj.__name__, obj)
            return obj

        return wrap

    def add(self, name: str, obj: T) -> None:
        """Register ``obj`` under ``name``; the same object twice, or its definition run again
        by re-executing its module (``importlib.reload``), is a no-op; another object under a
        taken name is an error."""
        if not name:
            raise ValueError(f"a {self.kind} needs a name: {obj!r}")
        key = name.lower()
        existing = self._entries.get(key)
        if existing is not None and not _same(existing, obj):
            raise ValueError(f"{self.kind} {name!r} is registered twice ({_label(existing)}, {_label(obj)})")
        self._entries[key] = obj

    def declare(self, name: str, module: str) -> None:
        """Make ``name`` known without importing ``module`` (which registers it) yet."""
        self._lazy[name.lower()] = module

    # -- looking up ---------------------------------------------------------------------
    def get(self, name: str) -> T:
        """The entry registered as ``name`` (case-insensitive); raises :class:`UnknownName`."""
        key = str(name).lower()
        if key not in self._entries and key in self._lazy:
            importlib.import_module(self._lazy[key])
        if key not in self._entries:
            self._load_entry_points()
        if key not in self._entries:
            known = self.names()
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise UnknownName(f"unknown {self.kind} {name!r}{hint} available: {', '.join(known) or 'none'}")
        return self._entries[key]

    def __contains__(self, name: object) -> bool:
        key = str(name).lower()
        if key not in self._entries and key not in self._lazy:
            self._load_entry_points()
        return key in self._entries or key in self._lazy

    def names(self, pattern: str | None = None) -> list[str]:
        """Known names, sorted; ``pattern`` filters shell-style (``"msrs*"``)."""
        self._load_entry_points()
        known = sorted(set(self._entries) | set(self._lazy))
        return [n for n in known if pattern is None or fnmatch.fnmatch(n, pattern.lower())]

    # -- plug-ins -----------------------------------------------------------------------
    def _load_entry_points(self) -> None:
        if self._entry_points_loaded or not self.entry_point_group:
            return
        self._entry_points_loaded = True
        for ep in metadata.entry_points(group=self.entry_point_group):
            try:
                obj = ep.load()
            except Exception as exc:  # a broken plug-in must say which one it is
                raise TDFusionError(f"plug-in {ep.name!r} ({ep.value}, entry point group "
                                    f"{self.entry_point_group}) failed to load: {exc}") from exc
            if not inspect.ismodule(obj):  # an object: register it under the entry point's name
                self.add(ep.name, obj)


def import_plugins(modules: Iterable[str] | None, source: str = "imports") -> None:
    """Import the modules a config lists under ``imports:`` (their decorators register)."""
    for name in modules or ():
        try:
            importlib.import_module(str(name))
        except ImportError as exc:
            raise TDFusionError(f"{source}: cannot import {name!r}: {exc}") from exc


def _same(a: Any, b: Any) -> bool:
    """The same object, or the same class or function defined twice by re-importing its module."""
    if a is b:
        return True
    qual = lambda o: (getattr(o, "__module__", None), getattr(o, "__qualname__", None))  # noqa: E731
    return qual(a) == qual(b) and qual(a) != (None, None)


def _label(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"
