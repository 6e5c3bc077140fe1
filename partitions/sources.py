"""Data sources: each turns a DataSpec into an ArrayData (all examples, one array)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from partitions.federated import ArrayData
from partitions.spec import DataSpec

SOURCES: dict[str, Callable[[DataSpec], ArrayData]] = {}


def source(name: str):
    def deco(fn: Callable[[DataSpec], ArrayData]):
        SOURCES[name] = fn
        return fn

    return deco


@source("digits")
def digits(spec: DataSpec) -> ArrayData:
    """scikit-learn's bundled 8x8 digits (1,797 real images, 10 classes): the offline default."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None, :, :]
    return ArrayData(x, bunch.target, 10, mean=(float(x.mean()),), std=(float(x.std()),), name="digits")


def load_source(spec: DataSpec) -> ArrayData:
    if spec.source not in SOURCES:
        raise ValueError(f"unknown data source {spec.source!r}; choose one of: {', '.join(sorted(SOURCES))}")
    data = SOURCES[spec.source](spec)
    if spec.max_samples is not None and spec.max_samples < len(data.y):
        keep = slice(0, spec.max_samples)
        groups = data.groups[keep] if data.groups is not None else None
        data = ArrayData(data.x[keep], data.y[keep], data.num_classes, data.mean, data.std, data.name, groups,
                         data.class_names)
    return data
