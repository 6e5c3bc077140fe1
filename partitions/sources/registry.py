"""The data-source registry: name -> Source, and load_source, the one entry point.

A source is a function DataSpec -> ArrayData (all examples in one array; the partition does
the rest). The built-in sources live beside this file by job (local arrays, torchvision, Hugging
Face); a user's module adds one with the same decorator (docs/partitions.md has an example):

    @source("my-csv", splits=("train", "test"))
    def my_csv(spec: DataSpec) -> ArrayData: ...

DataSpec looks the name up when a spec is validated, so a source registered after partitions
was imported is as valid as a built-in one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from partitions.federated import ArrayData
from partitions.spec import DataSpec

SourceFn = Callable[[DataSpec], ArrayData]


@dataclass(frozen=True)
class Source:
    """A registered source. `splits`: the values of data.split it knows (null and "all", which pool
    them, are always allowed); None accepts any value (e.g. the split expressions of `hf`)."""

    name: str
    load: SourceFn
    splits: tuple[str, ...] | None = None


SOURCES: dict[str, Source] = {}


def source(name: str, splits: tuple[str, ...] | None = None) -> Callable[[SourceFn], SourceFn]:
    """Register the decorated function as data source `name` (data.source: name)."""

    def deco(fn: SourceFn) -> SourceFn:
        if not name or name in SOURCES:
            raise ValueError(f"data source name {name!r} is empty or already registered")
        SOURCES[name] = Source(name, fn, tuple(splits) if splits is not None else None)
        return fn

    return deco


def unregister(name: str) -> None:
    """Remove a source (a test's own source, or a notebook cell that registers it again)."""
    SOURCES.pop(name, None)


def load_source(spec: DataSpec) -> ArrayData:
    """Load spec's source, then apply the options every source shares: invert, max_samples and the
    normalization constants."""
    if spec.source not in SOURCES:
        raise ValueError(f"unknown data source {spec.source!r}; choose one of: {', '.join(sorted(SOURCES))}")
    data = SOURCES[spec.source].load(spec)
    if not isinstance(data, ArrayData):
        raise TypeError(f"data source {spec.source}: returned {type(data).__name__}, not an ArrayData "
                        f"(partitions.sources.common.make_data builds one from arrays)")
    check_finite_inputs(data, spec)
    if spec.invert:
        x = 255 - data.x if data.x.dtype == np.uint8 else (1.0 - data.x).astype(data.x.dtype)
        data = ArrayData(x, data.y, data.num_classes, tuple(1.0 - m for m in data.mean), data.std, data.name,
                         data.groups, data.class_names, data.columns)
    if spec.max_samples is not None and spec.max_samples < len(data.y):
        data = data.subset(slice(0, spec.max_samples))
    return normalized_with(data, spec)


def normalized_with(data: ArrayData, spec: DataSpec) -> ArrayData:
    """The data with the spec's normalization constants in place of its own channel mean / std."""
    if spec.normalize_mean is None and spec.normalize_std is None:
        return data
    channels = len(data.mean)
    mean = tuple(spec.normalize_mean) if spec.normalize_mean is not None else tuple(data.mean)
    std = tuple(spec.normalize_std) if spec.normalize_std is not None else tuple(data.std)
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"data.normalize_mean / normalize_std need one value per channel: {data.name} has "
                         f"{channels}, got {len(mean)} and {len(std)}")
    return ArrayData(data.x, data.y, data.num_classes, mean, std, data.name, data.groups, data.class_names,
                     data.columns)


def check_finite_inputs(data: ArrayData, spec: DataSpec) -> None:
    """NaN/inf inputs are an error at load: held by one client they would still poison the data set's
    channel mean/std, and with it every client's normalized inputs. Counted per sample, in chunks."""
    x = data.x
    if x.dtype.kind != "f" or not len(x):
        return
    flat = x.reshape(len(x), -1)
    bad = np.concatenate([~np.isfinite(flat[i : i + 4096]).all(axis=1) for i in range(0, len(x), 4096)])
    if bad.any():
        where = f"data.root={spec.root!r}" if spec.root is not None else f"data.source={spec.source!r}"
        first = np.flatnonzero(bad)[:5].tolist()
        raise ValueError(f"{data.name} ({where}): {int(bad.sum()):,} of {len(x):,} samples have NaN/inf input values "
                         f"(samples {', '.join(map(str, first))}{', ...' if bad.sum() > 5 else ''}); fix or drop "
                         f"them in the data (fedharness does not guess values for them)")
