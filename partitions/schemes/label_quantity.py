"""label_quantity: label skew (at most k classes per client) together with quantity skew (lognormal or
power-law client sizes), the two skews of NIID-Bench (Li et al. 2022, "Federated Learning on Non-IID
Data Silos", Sec. 4: #C=k label-quantity skew, and quantity skew) in one partition."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import Field

from partitions.schemes.common import check_enough, check_min_size, label_index, largest_remainder, rank_within
from partitions.schemes.registry import scheme
from protocol.specs import Strict

if TYPE_CHECKING:
    from partitions.spec import PartitionSpec


class LabelQuantityParams(Strict):
    classes_per_client: int = Field(2, ge=1, description="pathological / label_quantity: labels per client")
    class_assignment: Literal["cyclic", "random"] = Field(
        "cyclic", description="pathological / label_quantity: cyclic = the i-th client holds classes p[i..i+k-1 mod "
                              "C] of a random class order p (every class held equally often; clients shuffled); "
                              "random = a random k-subset per client")
    quantity_distribution: Literal["lognormal", "powerlaw"] = Field(
        "lognormal", description="quantity / label_quantity: law of the client size weights")
    quantity_sigma: float = Field(1.0, gt=0, description="quantity / label_quantity (lognormal): sigma of log "
                                                         "client sizes")
    powerlaw_exponent: float = Field(1.5, gt=0, description="quantity / label_quantity (powerlaw): Pareto shape; "
                                                            "small = heavier tail")


@scheme("label_quantity", LabelQuantityParams,
        label=lambda p: f"k={p.classes_per_client},{p.quantity_distribution}")
def label_quantity(y: np.ndarray, spec: PartitionSpec, params: LabelQuantityParams, gen: np.random.Generator,
                   groups: np.ndarray | None = None) -> np.ndarray:
    """Client k holds `classes_per_client` classes (assigned as in `pathological`) and a size weight w_k ~
    lognormal(0, sigma) or Pareto(a) + 1 (as in `quantity`). Each client first gets ceil-split
    min_samples from its classes; the rest of every class is then split among the clients holding it
    in proportion to their weights (largest remainder). A client's size is therefore
    min_samples + w_k * sum over its classes of n_c / W_c (W_c: the weights of c's holders), which
    follows w_k when classes are balanced and held equally often (cyclic). Classes that no client
    holds (only when num_clients * k < C) stay unassigned."""
    n, k, per = len(y), spec.num_clients, params.classes_per_client
    m = spec.min_samples
    check_enough(n, spec)
    _, y_idx = label_index(y)
    n_c = np.bincount(y_idx)
    c = len(n_c)
    if per > c:
        raise ValueError(f"label_quantity: partition.classes_per_client={per} exceeds the {c} classes of the data set")
    if params.class_assignment == "cyclic":
        held = gen.permutation(c)[(np.arange(k)[:, None] + np.arange(per)[None, :]) % c]
        held = held[gen.permutation(k)]
    else:
        held = np.argsort(gen.random((k, c)), axis=1)[:, :per]
    if params.quantity_distribution == "lognormal":
        weights = gen.lognormal(0.0, params.quantity_sigma, k)
    else:
        weights = gen.pareto(params.powerlaw_exponent, k) + 1.0
    counts = np.zeros((c, k), dtype=np.int64)
    base = np.full(per, m // per, dtype=np.int64)
    base[: m % per] += 1
    np.add.at(counts, (held.ravel(), np.repeat(np.arange(k), per)), np.tile(base, k))
    short = counts.sum(1) > n_c
    if short.any():
        cls = int(np.flatnonzero(short)[0])
        raise ValueError(f"label_quantity: class {cls} has {n_c[cls]} samples but its holders need "
                         f"{counts[cls].sum()} for partition.min_samples={m}; lower min_samples or num_clients, "
                         f"or raise classes_per_client")
    for cls in range(c):
        holders = (held == cls).any(1)
        if holders.any():
            counts[cls, holders] += largest_remainder(weights[holders], int(n_c[cls] - counts[cls].sum()))
    order = np.lexsort((gen.random(n), y_idx))  # examples grouped by class, random order inside a class
    cls_sorted = y_idx[order]
    dealt = rank_within(cls_sorted) < counts.sum(1)[cls_sorted]  # a class without holders stays unassigned
    owner = np.full(n, -1, dtype=np.int64)
    owner[order[dealt]] = np.repeat(np.tile(np.arange(k), c), counts.ravel())
    check_min_size(owner, spec, "label_quantity", "lower partition.num_clients or min_samples")
    return owner
