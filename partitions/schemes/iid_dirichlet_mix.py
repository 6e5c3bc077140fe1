"""iid_dirichlet_mix: a fraction of the clients hold IID data, the rest Dirichlet label skew.

A mixed population (some devices see the global distribution, others a skewed slice): the IID
clients are a random subset of round(iid_fraction * num_clients) clients; they share a uniformly
random share of the examples, proportional to their number, in equal parts; the other examples go
to the other clients through the `dirichlet` scheme (same alpha, min_samples and repair).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from pydantic import Field

from partitions.schemes.common import check_enough
from partitions.schemes.dirichlet import DirichletParams, dirichlet
from partitions.schemes.registry import Deal, scheme
from protocol.specs import Strict

if TYPE_CHECKING:
    from partitions.spec import PartitionSpec


class IidDirichletMixParams(Strict):
    alpha: float = Field(0.5, gt=0, description="dirichlet / inner_dirichlet / iid_dirichlet_mix: concentration; "
                                                "small = strong label skew")
    iid_fraction: float = Field(0.5, ge=0, le=1, description="iid_dirichlet_mix: share of the clients that hold IID "
                                                             "data (0 = all Dirichlet, 1 = all IID)")


@scheme("iid_dirichlet_mix", IidDirichletMixParams, label=lambda p: f"iid={p.iid_fraction},alpha={p.alpha}")
def iid_dirichlet_mix(y: np.ndarray, spec: PartitionSpec, params: IidDirichletMixParams, gen: np.random.Generator,
                      groups: np.ndarray | None = None) -> Deal:
    """Every example is dealt. With K clients of which K_iid = round(iid_fraction * K) are IID, the IID
    clients get round(N * K_iid / K) uniformly random examples in equal parts (sizes differ by at most
    one), the remaining examples go to the K - K_iid others by `dirichlet`. The meta records the IID
    clients' ids (`iid_clients`)."""
    n, k, m = len(y), spec.num_clients, spec.min_samples
    check_enough(n, spec)
    k_iid = int(round(params.iid_fraction * k))
    iid_clients = np.sort(gen.choice(k, k_iid, replace=False))
    skewed = np.setdiff1d(np.arange(k), iid_clients)
    n_iid = int(round(n * k_iid / k))
    if k_iid and n_iid // k_iid < m:
        raise ValueError(f"iid_dirichlet_mix: the {k_iid} IID clients share {n_iid} samples, {n_iid // k_iid} each "
                         f"< partition.min_samples={m}; lower min_samples or num_clients")
    perm = gen.permutation(n)
    owner = np.full(n, -1, dtype=np.int64)
    if k_iid:
        owner[perm[:n_iid]] = iid_clients[np.arange(n_iid) % k_iid]
    rest = perm[n_iid:]
    if len(skewed):
        sub = spec.model_copy(update={"num_clients": len(skewed)})
        inner = dirichlet(y[rest], sub, DirichletParams(alpha=params.alpha), gen)
        owner[rest] = skewed[inner]
    return Deal(owner, {"iid_clients": iid_clients.tolist()})
