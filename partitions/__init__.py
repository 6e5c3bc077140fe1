"""Data sources, partitioners, per-client splits, partition statistics."""

from __future__ import annotations

import numpy as np

from harness.rng import rng
from partitions.federated import ArrayData, FederatedDataset
from partitions.partitioners import PARTITIONERS
from partitions.sources import load_source
from partitions.spec import DataSpec, PartitionSpec
from partitions.splits import local_splits

__all__ = ["ArrayData", "FederatedDataset", "build_federated_dataset"]


def build_federated_dataset(data: DataSpec, partition: PartitionSpec, seed: int) -> FederatedDataset:
    arrays = load_source(data)
    if partition.scheme not in PARTITIONERS:
        raise ValueError(f"unknown partition scheme {partition.scheme!r}; choose one of: {', '.join(sorted(PARTITIONERS))}")
    parts = PARTITIONERS[partition.scheme](arrays.y, partition, rng(seed, "partition"))
    splits = local_splits(parts, partition.test_fraction, partition.val_fraction, rng(seed, "local-split"))
    n_unseen = int(round(partition.unseen_fraction * partition.num_clients))
    unseen = rng(seed, "unseen").choice(partition.num_clients, n_unseen, replace=False)
    train_clients = np.setdiff1d(np.arange(partition.num_clients), unseen)
    meta = {"scheme": partition.scheme, "unseen_clients": np.sort(unseen).tolist()}
    return FederatedDataset.from_splits(arrays, splits, train_clients, meta)
