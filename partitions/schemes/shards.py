"""shards: the label-sorted shards of McMahan et al. (2017), the original FedAvg non-IID split."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from pydantic import Field

from partitions.schemes.common import check_enough, label_index
from partitions.schemes.registry import scheme
from protocol.specs import Strict

if TYPE_CHECKING:
    from partitions.spec import PartitionSpec


class ShardsParams(Strict):
    shards_per_client: int = Field(2, ge=1, description="shards: label-sorted shards per client")


@scheme("shards", ShardsParams, label=lambda p: f"shards={p.shards_per_client}")
def shards(y: np.ndarray, spec: PartitionSpec, params: ShardsParams, gen: np.random.Generator,
           groups: np.ndarray | None = None) -> np.ndarray:
    """Sort by label, cut into num_clients * shards_per_client equal shards, deal each client
    `shards_per_client` random shards."""
    n, k, s = len(y), spec.num_clients, params.shards_per_client
    check_enough(n, spec)
    n_shards = k * s
    if n_shards > n:
        raise ValueError(f"shards: num_clients x shards_per_client = {n_shards} shards but only {n} samples")
    if s * (n // n_shards) < spec.min_samples:
        raise ValueError(f"shards: {n_shards} shards of {n // n_shards} samples give clients "
                         f"{s * (n // n_shards)} < partition.min_samples={spec.min_samples} samples")
    _, y_idx = label_index(y)
    order = np.lexsort((gen.random(n), y_idx))
    shard_sizes = np.full(n_shards, n // n_shards, dtype=np.int64)
    shard_sizes[: n % n_shards] += 1
    client_of_shard = np.empty(n_shards, dtype=np.int64)
    client_of_shard[gen.permutation(n_shards)] = np.arange(n_shards) // s
    owner = np.empty(n, dtype=np.int64)
    owner[order] = client_of_shard[np.repeat(np.arange(n_shards), shard_sizes)]
    return owner
