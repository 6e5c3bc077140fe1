"""inner_dirichlet: fixed client sizes, each client's label mix ~ Dir(alpha) (flwr-datasets' InnerDirichletPartitioner).

The scheme of FedDyn (Acar et al. 2021, "Federated Learning Based on Dynamic Regularization", Sec. 5 and
their code's `Dirichlet` split), which flwr-datasets ships as InnerDirichletPartitioner: where `dirichlet`
splits each *class* over the clients (client sizes then follow from the draw), this one fixes each
*client's* size and draws its class proportions q_k ~ Dir(alpha * 1_C).
"""

from __future__ import annotations

import bisect
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import Field

from partitions.schemes.common import check_enough, label_index, largest_remainder
from partitions.schemes.registry import scheme
from protocol.specs import Strict

if TYPE_CHECKING:
    from partitions.spec import PartitionSpec


class InnerDirichletParams(Strict):
    alpha: float = Field(0.5, gt=0, description="dirichlet / inner_dirichlet / iid_dirichlet_mix: concentration; "
                                                "small = strong label skew")
    inner_sizes: Literal["equal", "lognormal"] = Field(
        "equal", description="inner_dirichlet: client sizes; equal = N/num_clients (FedDyn's balanced setting), "
                             "lognormal = min_samples + a share of the rest ~ lognormal(0, inner_sigma) "
                             "(FedDyn's unbalanced setting)")
    inner_sigma: float = Field(0.3, gt=0, description="inner_dirichlet/lognormal: sigma of the log client sizes "
                                                      "(0.3 in FedDyn, Acar et al. 2021, Sec. 5)")


def _label(p: InnerDirichletParams) -> str:
    return f"alpha={p.alpha}" + (f",lognormal={p.inner_sigma}" if p.inner_sizes == "lognormal" else "")


@scheme("inner_dirichlet", InnerDirichletParams, label=_label)
def inner_dirichlet(y: np.ndarray, spec: PartitionSpec, params: InnerDirichletParams, gen: np.random.Generator,
                    groups: np.ndarray | None = None) -> np.ndarray:
    """Every example is dealt; client k gets exactly sizes[k] examples (equal: N/K, differing by at
    most one; lognormal: min_samples + largest-remainder share of the rest by lognormal(0, sigma) weights).

    The sample-by-sample process of FedDyn and flwr-datasets: repeatedly pick a client uniformly among
    those not yet full, then a class from that client's q_k renormalized over the classes that still
    have examples (a class that runs out gets probability zero), and give the client one example of
    that class (a uniformly random one). A client whose q_k is zero on every class left (possible when
    alpha underflows) draws uniformly among them instead of looping forever as FedDyn's code would.
    Cost: O(N log C) Python steps (~0.1-0.2 s for MNIST's 60,000) plus O(K C) per exhausted class.
    """
    n, k, m = len(y), spec.num_clients, spec.min_samples
    check_enough(n, spec)
    _, y_idx = label_index(y)
    left = np.bincount(y_idx).astype(np.int64)
    c = len(left)
    if params.inner_sizes == "equal":
        sizes = np.full(k, n // k, dtype=np.int64)
        sizes[: n % k] += 1
    else:
        sizes = m + largest_remainder(gen.lognormal(0.0, params.inner_sigma, k), n - k * m)
    q = gen.dirichlet(np.full(c, params.alpha), size=k)  # (K, C)
    q[~np.isfinite(q)] = 0.0
    # the loop is sequential by definition; it runs on Python lists (bisect), ~1 us an example
    counts = [[0] * c for _ in range(k)]
    need = sizes.tolist()
    remaining = left.tolist()
    open_clients = [i for i in range(k) if need[i] > 0]
    cum = _cumulative(q, left)
    uniforms = gen.random((n, 2)).tolist()  # two uniforms per example dealt, drawn at once
    for u_client, u_class in uniforms:
        slot = int(u_client * len(open_clients))
        client = open_clients[slot]
        row = cum[client]
        if row[-1] <= 0:  # q_k is zero on every class left: uniform over the classes left
            row = np.cumsum(np.asarray(remaining) > 0, dtype=np.float64).tolist()
        cls = min(bisect.bisect_right(row, u_class * row[-1]), c - 1)
        while remaining[cls] == 0:  # float ties at a zero-width step: the next class with examples left
            cls = (cls + 1) % c
        counts[client][cls] += 1
        remaining[cls] -= 1
        need[client] -= 1
        if need[client] == 0:
            open_clients[slot] = open_clients[-1]
            open_clients.pop()
        if remaining[cls] == 0:
            cum = _cumulative(q, np.asarray(remaining))
    counts = np.asarray(counts, dtype=np.int64).reshape(k, c)
    order = np.lexsort((gen.random(n), y_idx))  # examples grouped by class, random order inside a class
    owner = np.empty(n, dtype=np.int64)
    owner[order] = np.repeat(np.tile(np.arange(k), c), counts.T.ravel())
    return owner


def _cumulative(q: np.ndarray, left: np.ndarray) -> list[list[float]]:
    """Per client, the cumulative class weights over the classes that still have examples."""
    return np.cumsum(q * (left > 0), axis=1).tolist()
