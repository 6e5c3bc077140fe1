"""Data sources, partition schemes, per-client splits, partition statistics.

build_federated_dataset = load a source -> deal examples to clients (the spec's scheme) -> split
each client locally (train / val / test) -> pick the unseen clients -> apply the per-client
feature shift. Every random step draws from its own stream rng(seed, purpose), and the result
(minus the shift, which is recomputed) is cached on disk keyed by data, spec and seed.

Sources and schemes are registries: a user's module adds one with `@source("name")` or
`@scheme("name", Params)` and names it in a spec (docs/partitions.md).
"""

from __future__ import annotations

import numpy as np

from partitions.cache import PARTITION_FORMAT, PartitionCache, array_digest, digest
from partitions.federated import ArrayData, FederatedDataset
from partitions.schemes import SCHEMES, Deal, run_scheme, scheme, scheme_label
from partitions.shift import apply_feature_shift, feature_shift_params
from partitions.sources import SOURCES, load_source, source
from partitions.spec import DataSpec, FeatureShiftSpec, PartitionSpec
from partitions.splits import split_from_codes, split_owner
from partitions.virtual import VirtualFederatedDataset
from protocol.rng import rng

__all__ = ["SCHEMES", "SOURCES", "ArrayData", "DataSpec", "Deal", "FeatureShiftSpec", "FederatedDataset",
           "PartitionSpec", "build_federated_dataset", "load_source", "partition_data", "scheme", "scheme_label",
           "source"]

RESERVED_META = ("scheme", "unseen_clients", "num_samples", "assigned_samples", "feature_shift", "cache",
                 "cache_key")


def build_federated_dataset(data: DataSpec, partition: PartitionSpec, seed: int) -> FederatedDataset:
    return partition_data(load_source(data), partition, seed)


def partition_key(data: ArrayData, partition: PartitionSpec, seed: int) -> tuple[str, dict]:
    """Cache key: the labels' fingerprint, the spec's identity dump and the seed (see cache.py)."""
    about = {"format": PARTITION_FORMAT, "dataset": data.name, "n": int(len(data.y)),
             "x_shape": list(data.x.shape), "x_dtype": str(data.x.dtype),
             "labels_sha256": array_digest(data.y, data.groups),
             "partition": partition.identity_dump(exclude={"cache_dir", "virtual_clients"}), "seed": int(seed)}
    return digest(about), about


def partition_data(data: ArrayData, partition: PartitionSpec, seed: int) -> FederatedDataset:
    """Partition in-memory arrays (what build_federated_dataset does after loading the source); with
    partition.virtual_clients, the virtual population over that partition (partitions/virtual.py)."""
    fed = _base_partition(data, partition, seed)
    if partition.virtual_clients is not None:
        return VirtualFederatedDataset.over(fed, partition.virtual_clients, seed)
    return fed


def _base_partition(data: ArrayData, partition: PartitionSpec, seed: int) -> FederatedDataset:
    k = partition.num_clients
    cache = PartitionCache(partition.cache_dir) if partition.cache_dir else None
    key, about = partition_key(data, partition, seed)
    label = f"{data.name}-{partition.scheme}-{k}"
    hit = cache.load(key, label, len(data.y), k) if cache else None
    if hit is not None:
        index, offsets, train_clients, meta = hit["index"], hit["offsets"], hit["train_clients"], hit["meta"]
        status = "hit"
    else:
        index, offsets, train_clients, meta = _deal_and_split(data, partition, seed)
        if cache:
            cache.save(key, label, index, offsets, train_clients, meta, about)
        status = "miss" if cache else "off"
    fed = FederatedDataset.from_csr(data, index, offsets, train_clients, {**meta, "cache": status,
                                                                            "cache_key": key[:24]})
    if "feature_shift" in meta:
        shift = meta["feature_shift"]
        fed.x = apply_feature_shift(data.x, fed.owner(), np.asarray(shift["degrees"], dtype=np.float64),
                                    np.asarray(shift["noise_std"], dtype=np.float64), rng(seed, "feature-shift-noise"))
    return fed


def _deal_and_split(data: ArrayData, partition: PartitionSpec,
                    seed: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray, dict]:
    """What the cache stores: CSR splits, training clients and meta (the scheme's own meta included)."""
    k = partition.num_clients
    dealt = run_scheme(data.y, partition, rng(seed, "partition"), groups=data.groups)
    owner = dealt.owner
    if dealt.split is not None:  # the scheme reproduces another tool's local split (flbench_dirichlet)
        index, offsets = split_from_codes(owner, dealt.split, k, partition.val_fraction > 0)
    else:
        index, offsets = split_owner(owner, k, partition.test_fraction, partition.val_fraction,
                                     rng(seed, "local-split"))
    n_unseen = int(round(partition.unseen_fraction * k))
    unseen = rng(seed, "unseen").choice(k, n_unseen, replace=False)
    train_clients = np.setdiff1d(np.arange(k), unseen)
    meta = {"scheme": partition.scheme, "unseen_clients": np.sort(unseen).tolist(),
            "num_samples": int(len(data.y)), "assigned_samples": int((owner >= 0).sum())}
    clash = sorted(set(dealt.meta) & set(RESERVED_META))
    if clash:
        raise ValueError(f"scheme {partition.scheme}: its meta keys {', '.join(clash)} are reserved")
    meta.update(dealt.meta)
    if partition.feature_shift.kind != "none":
        params = feature_shift_params(partition.feature_shift, k, rng(seed, "feature-shift"))
        meta["feature_shift"] = {name: values.tolist() for name, values in params.items()}
    return index, offsets, train_clients, meta
