"""The algorithm registry: name -> Algorithm class. Modules register with @register."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from algorithms.base import Algorithm

_REGISTRY: dict[str, type[Algorithm]] = {}


def register(cls: type[Algorithm]) -> type[Algorithm]:
    name = cls.name
    if not name or name in _REGISTRY:
        raise ValueError(f"algorithm name {name!r} is empty or already registered")
    _REGISTRY[name] = cls
    return cls


def get(name: str) -> type[Algorithm]:
    _load_builtin()
    if name not in _REGISTRY:
        raise KeyError(f"unknown algorithm {name!r}; choose one of: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def names() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def _load_builtin() -> None:
    import algorithms  # noqa: F401  (its __init__ imports every built-in module)
