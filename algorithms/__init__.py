"""Algorithm registry and the built-in algorithms (one module each, registered on import).

Every module in this package is imported here, so dropping a new module with an
`@register`-ed class into algorithms/ is all it takes to add an algorithm.
"""

import importlib
import pkgutil

from algorithms.registry import get, names, register

for _module in pkgutil.iter_modules(__path__):
    if _module.name not in ("base", "registry"):
        importlib.import_module(f"algorithms.{_module.name}")

__all__ = ["get", "names", "register"]
