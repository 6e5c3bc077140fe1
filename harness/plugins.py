"""Plugins: a user's own algorithms, models, data sources and partition schemes, without editing the package.

A plugin is a Python module that registers things with the package's decorators when it is imported:
`@algorithms.registry.register` (an Algorithm subclass), `@harness.models.model("name")`,
`@partitions.sources.source("name")`, `@partitions.schemes.scheme(...)`. It is named
- in a spec: `plugins: [my_pkg.my_module, ./my_algo.py]` (a module path, or a file path relative to the
  working directory) — the spec then carries it to every Ray worker, which loads it when it validates the
  config;
- on the command line: `fedharness run SPEC --plugin my_module` (added to the spec's list);
- by an installed package, through the Python entry point group `fedharness.plugins` (loaded once, always).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import sys
import threading
from pathlib import Path

ENTRY_POINT_GROUP = "fedharness.plugins"
_LOCK = threading.Lock()
_loaded: set[str] = set()
_installed_done = False


def load(names: list[str] | tuple[str, ...]) -> None:
    """Import each plugin once (a module path or a .py file)."""
    for name in names:
        with _LOCK:
            if name in _loaded:
                continue
            _import(name)
            _loaded.add(name)


def absolute(names: list[str]) -> list[str]:
    """.py paths made absolute (module paths unchanged): the config then names the same file on every worker."""
    return [str(Path(n).expanduser().resolve()) if n.endswith(".py") else n for n in names]


def load_installed() -> None:
    """Import the plugins that installed packages declare under the entry point group (once per process)."""
    global _installed_done
    with _LOCK:
        if _installed_done:
            return
        _installed_done = True
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            try:
                ep.load()
            except Exception as err:  # noqa: BLE001 - a broken third-party plugin is named, not a traceback
                raise ValueError(f"plugin entry point {ep.name!r} ({ep.value}) failed to load: "
                                 f"{type(err).__name__}: {err}") from None


def _import(name: str) -> None:
    if name.endswith(".py"):
        path = Path(name).expanduser().resolve()
        if not path.is_file():
            raise ValueError(f"plugin file {name!r} does not exist (looked for {path})")
        module_name = f"fedharness_plugin_{path.stem}_{abs(hash(str(path))) % 10**8}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as err:  # noqa: BLE001
            sys.modules.pop(module_name, None)
            raise ValueError(f"plugin {name!r} failed to load: {type(err).__name__}: {err}") from None
        return
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name and name.startswith(err.name):
            raise ValueError(f"plugin module {name!r} not found (is it on PYTHONPATH, or give a .py path)") from None
        raise ValueError(f"plugin {name!r} failed to load: {type(err).__name__}: {err}") from None
    except Exception as err:  # noqa: BLE001
        raise ValueError(f"plugin {name!r} failed to load: {type(err).__name__}: {err}") from None
