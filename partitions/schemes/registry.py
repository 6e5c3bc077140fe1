"""The partition-scheme registry: name -> Scheme (its parameters, its function, its label).

A scheme is one small unit, registered like an algorithm: a pydantic class of the keys it reads
from the `partition:` section (written flat, next to the common keys of PartitionSpec, and
validated by this class), a function that deals the examples to clients, and the short label
that run tables show. The built-in schemes live one per module beside this file; a user's
module adds one with the same decorator (docs/partitions.md has a complete example):

    @scheme("every-kth", EveryKthParams, label=lambda p: f"k={p.k}")
    def every_kth(y, spec, params, gen, groups=None) -> np.ndarray: ...

Specs validate against the registry at validation time, so a scheme registered after
partitions was imported is as valid as a built-in one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel

from partitions.splits import TEST, TRAIN, VAL
from protocol.specs import Strict

if TYPE_CHECKING:
    from partitions.spec import PartitionSpec

PartitionFn = Callable[..., "np.ndarray | Deal"]


class NoParams(Strict):
    """The parameters of a scheme that reads only the common partition keys."""


@dataclass(frozen=True)
class Deal:
    """What a scheme may return instead of a bare owner vector: the owner plus metadata of its own
    for FederatedDataset.meta (cached with the partition, so JSON values only), e.g. the writer
    id of every client of a natural partition; and, for a scheme that must reproduce another
    tool's local split exactly (flbench_dirichlet), the split of every example: TEST, VAL or TRAIN
    (partitions.splits), -1 where owner is -1 (None: the harness splits each client itself, partitions/splits.py)."""

    owner: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)
    split: np.ndarray | None = None


@dataclass(frozen=True)
class Scheme:
    """A registered scheme. `partition(y, spec, params, gen, groups=None)` returns owner[i], the
    client of example i (-1: no client), or a Deal; `label(params)` is the detail shown in tables
    after the name, e.g. "alpha=0.1" -> "dirichlet(alpha=0.1)" ("" for none)."""

    name: str
    Params: type[BaseModel]
    partition: PartitionFn
    label: Callable[[Any], str]

    @property
    def keys(self) -> list[str]:
        return sorted(self.Params.model_fields)


SCHEMES: dict[str, Scheme] = {}  # registration order: the built-ins first, as the error messages list them
_listeners: list[Callable[[], None]] = []


def scheme(name: str, params: type[BaseModel] = NoParams,
           label: Callable[[Any], str] | None = None) -> Callable[[PartitionFn], PartitionFn]:
    """Register the decorated function as partition scheme `name` with its parameter class.

    `params` should forbid unknown keys (subclass protocol.specs.Strict) and must not reuse a name
    of the common keys (num_clients, min_samples, ...), which every scheme reads from the spec;
    a listener that rejects the registration (PartitionSpec checks that) leaves the registry as it was."""

    def deco(fn: PartitionFn) -> PartitionFn:
        if not name or name in SCHEMES:
            raise ValueError(f"partition scheme name {name!r} is empty or already registered")
        SCHEMES[name] = Scheme(name, params, fn, label or _no_label)
        try:
            for listener in _listeners:
                listener()
        except Exception:
            del SCHEMES[name]
            for listener in _listeners:
                listener()
            raise
        return fn

    return deco


def unregister(name: str) -> None:
    """Remove a scheme (a test's own scheme, or a notebook cell that registers it again)."""
    SCHEMES.pop(name, None)
    for listener in _listeners:
        listener()


def _no_label(params: Any) -> str:
    return ""


def on_register(listener: Callable[[], None]) -> None:
    """Call `listener` now and after every registration (PartitionSpec keeps its choices current)."""
    listener()
    _listeners.append(listener)


def get_scheme(name: str) -> Scheme:
    if name not in SCHEMES:
        raise ValueError(f"unknown partition scheme {name!r}; choose one of: {', '.join(SCHEMES)}")
    return SCHEMES[name]


def scheme_label(spec: PartitionSpec) -> str:
    """The scheme as run tables show it: `dirichlet(alpha=0.1)`, `pathological(k=2)`, `iid`."""
    detail = get_scheme(spec.scheme).label(spec.params)
    return f"{spec.scheme}({detail})" if detail else spec.scheme


def run_scheme(y: np.ndarray, spec: PartitionSpec, gen: np.random.Generator,
               groups: np.ndarray | None = None) -> Deal:
    """Deal the examples with the spec's scheme; a malformed owner vector is the scheme's bug and
    is reported as such, before it can corrupt the splits."""
    chosen = get_scheme(spec.scheme)
    out = chosen.partition(np.asarray(y), spec, spec.params, gen, groups=groups)
    result = out if isinstance(out, Deal) else Deal(out)
    owner = np.asarray(result.owner)
    if (owner.shape != (len(y),) or owner.dtype.kind not in "iu"
            or (len(owner) and (owner.min() < -1 or owner.max() >= spec.num_clients))):
        raise ValueError(f"scheme {spec.scheme}: its partition function returned owner of shape {owner.shape}, "
                         f"dtype {owner.dtype}; it must be an int array of shape ({len(y)},) with values in "
                         f"-1..{spec.num_clients - 1}")
    split = None if result.split is None else np.asarray(result.split)
    if split is not None and (split.shape != owner.shape or split.dtype.kind not in "iu"
                              or not np.isin(split, (-1, TEST, VAL, TRAIN)).all()
                              or ((split == -1) != (owner == -1)).any()):
        raise ValueError(f"scheme {spec.scheme}: its split must be an int array like owner, 0 test / 1 val / 2 train "
                         f"for every dealt example and -1 exactly where owner is -1")
    return Deal(owner.astype(np.int64, copy=False), dict(result.meta),
                None if split is None else split.astype(np.int64, copy=False))
