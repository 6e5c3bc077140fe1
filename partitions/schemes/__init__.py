"""Partition schemes: one registered unit per scheme (parameters, partition function, label).

Importing this package registers the built-in schemes, one module each, in the order below
(the order in which error messages list the choices); partitions.schemes.registry has the
decorator with which a user's module adds its own.
"""

from __future__ import annotations

import importlib

from partitions.schemes.registry import (
    SCHEMES,
    Deal,
    NoParams,
    Scheme,
    get_scheme,
    run_scheme,
    scheme,
    scheme_label,
    unregister,
)

BUILTIN = ("iid", "dirichlet", "pathological", "shards", "quantity", "natural", "inner_dirichlet", "iid_dirichlet_mix",
           "label_quantity", "flbench_dirichlet")
for _name in BUILTIN:
    importlib.import_module(f"partitions.schemes.{_name}")

__all__ = ["BUILTIN", "SCHEMES", "Deal", "NoParams", "Scheme", "get_scheme", "run_scheme", "scheme", "scheme_label",
           "unregister"]
