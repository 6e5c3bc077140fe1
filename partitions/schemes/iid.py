"""iid: no heterogeneity, the reference point of every comparison."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from partitions.schemes.common import check_enough, deal
from partitions.schemes.registry import NoParams, scheme

if TYPE_CHECKING:
    from partitions.spec import PartitionSpec


@scheme("iid", NoParams)
def iid(y: np.ndarray, spec: PartitionSpec, params: NoParams, gen: np.random.Generator,
        groups: np.ndarray | None = None) -> np.ndarray:
    """Uniformly random, equal sizes (differ by at most one)."""
    check_enough(len(y), spec)
    sizes = np.full(spec.num_clients, len(y) // spec.num_clients, dtype=np.int64)
    sizes[: len(y) % spec.num_clients] += 1
    return deal(sizes, gen.permutation(len(y)), len(y))
