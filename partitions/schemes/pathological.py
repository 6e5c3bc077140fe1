"""pathological: exactly k labels per client, the extreme label skew of the pFL papers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import Field

from partitions.schemes.common import check_enough, check_min_size, label_index, rank_within
from partitions.schemes.registry import scheme
from protocol.specs import Strict

if TYPE_CHECKING:
    from partitions.spec import PartitionSpec


class PathologicalParams(Strict):
    classes_per_client: int = Field(2, ge=1, description="pathological: labels per client")
    class_assignment: Literal["cyclic", "random"] = Field(
        "cyclic", description="pathological: cyclic = the i-th client holds classes p[i..i+k-1 mod C] of a random "
                              "class order p (every class held equally often; clients shuffled); random = a random "
                              "k-subset per client")


@scheme("pathological", PathologicalParams, label=lambda p: f"k={p.classes_per_client}")
def pathological(y: np.ndarray, spec: PartitionSpec, params: PathologicalParams, gen: np.random.Generator,
                 groups: np.ndarray | None = None) -> np.ndarray:
    """Each client holds exactly `classes_per_client` labels; a class's samples are split evenly
    (sizes differ by at most one) among the clients that hold it. Classes that no client holds
    (only when num_clients * k < C) stay unassigned."""
    n, k, per = len(y), spec.num_clients, params.classes_per_client
    check_enough(n, spec)
    _, y_idx = label_index(y)
    n_c = np.bincount(y_idx)
    c = len(n_c)
    if per > c:
        raise ValueError(f"pathological: partition.classes_per_client={per} exceeds the {c} classes of the data set")
    if params.class_assignment == "cyclic":
        held = gen.permutation(c)[(np.arange(k)[:, None] + np.arange(per)[None, :]) % c]  # (K, per)
        held = held[gen.permutation(k)]  # client ids carry no class order
    else:
        held = np.argsort(gen.random((k, c)), axis=1)[:, :per]
    pair_client = np.repeat(np.arange(k), per)
    pair_class = held.ravel()
    by_class = np.lexsort((pair_client, pair_class))
    holders = np.bincount(pair_class, minlength=c)
    holder_start = np.cumsum(holders) - holders
    order = np.lexsort((gen.random(n), y_idx))
    cls_sorted = y_idx[order]
    rank = rank_within(cls_sorted)
    owner = np.full(n, -1, dtype=np.int64)
    has = holders[cls_sorted] > 0
    slot = rank[has] * holders[cls_sorted[has]] // n_c[cls_sorted[has]]
    owner[order[has]] = pair_client[by_class][holder_start[cls_sorted[has]] + slot]
    check_min_size(owner, spec, "pathological", "lower partition.num_clients or min_samples, or raise "
                                                "classes_per_client")
    return owner
