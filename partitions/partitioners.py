"""Partitioners: labels (and options) -> one array of example indices per client.

All are vectorized over examples; impossible requests raise ValueError at once.
"""

from __future__ import annotations

import numpy as np

from partitions.spec import PartitionSpec


def iid(y: np.ndarray, spec: PartitionSpec, gen: np.random.Generator) -> list[np.ndarray]:
    _check_enough(len(y), spec)
    return [np.sort(p) for p in np.array_split(gen.permutation(len(y)), spec.num_clients)]


def dirichlet(y: np.ndarray, spec: PartitionSpec, gen: np.random.Generator) -> list[np.ndarray]:
    """Label skew: each class is split over clients by proportions ~ Dir(alpha)."""
    _check_enough(len(y), spec)
    n_clients = spec.num_clients
    classes = np.unique(y)
    for _attempt in range(1000):
        owner = np.empty(len(y), dtype=np.int64)
        for c in classes:
            members = np.flatnonzero(y == c)
            members = members[gen.permutation(len(members))]
            cuts = (np.cumsum(gen.dirichlet(np.full(n_clients, spec.alpha)))[:-1] * len(members)).astype(np.int64)
            owner[members] = np.repeat(np.arange(n_clients), np.diff(np.concatenate([[0], cuts, [len(members)]])))
        sizes = np.bincount(owner, minlength=n_clients)
        if sizes.min() >= spec.min_samples:
            order = np.argsort(owner, kind="stable")
            return np.split(order, np.cumsum(sizes)[:-1])
    raise ValueError(f"dirichlet: could not give every one of {n_clients} clients >= {spec.min_samples} samples "
                     f"with alpha={spec.alpha} in 1000 draws; lower partition.min_samples or num_clients")


def _check_enough(n: int, spec: PartitionSpec) -> None:
    if spec.num_clients * spec.min_samples > n:
        raise ValueError(f"{spec.num_clients} clients x min_samples {spec.min_samples} needs "
                         f"{spec.num_clients * spec.min_samples} samples, the data set has {n}")


PARTITIONERS = {"iid": iid, "dirichlet": dirichlet}
