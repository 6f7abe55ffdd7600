"""One registry of network constructors, looked up by name (timm style)."""
from __future__ import annotations

from typing import Any, Callable

from torch import nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable:
    """Class/function decorator that makes ``create_model(name, **config)`` build it."""

    def wrap(fn):
        if name in _MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        _MODELS[name] = fn
        return fn

    return wrap


def create_model(name: str, **config: Any) -> nn.Module:
    """Build a registered network from its name and keyword configuration."""
    try:
        factory = _MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(sorted(_MODELS))}") from None
    return factory(**config)


def list_models() -> list[str]:
    return sorted(_MODELS)
