"""Networks by name (timm style): ``create_model(name, **config)``."""
from __future__ import annotations

from typing import Any, Callable

from torch import nn

from ..registry import Registry

__all__ = ["MODELS", "create_model", "list_models", "register_model"]

MODELS: Registry[Callable[..., nn.Module]] = Registry("model", entry_point_group="tdfusion.models")


def register_model(name: str) -> Callable:
    """Class/function decorator that makes ``create_model(name, **config)`` build it."""
    return MODELS.register(name)


def create_model(name: str, **config: Any) -> nn.Module:
    """Build a registered network from its name and keyword configuration."""
    return MODELS.get(name)(**config)


def list_models(pattern: str | None = None) -> list[str]:
    """Registered network names; ``pattern`` filters shell-style."""
    return MODELS.names(pattern)
