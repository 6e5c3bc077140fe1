"""dirichlet: label skew by Dir(alpha) proportions, the scheme of FL-bench, flwr-datasets and PFLlib."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from pydantic import Field

from partitions.schemes.common import check_enough, label_index, rank_within
from partitions.schemes.registry import scheme
from protocol.specs import Strict

if TYPE_CHECKING:
    from partitions.spec import PartitionSpec


class DirichletParams(Strict):
    alpha: float = Field(0.5, gt=0, description="dirichlet: concentration; small = strong label skew")
    dirichlet_balance: bool = Field(False, description="dirichlet: FL-bench/PFLlib rule, a client already above "
                                                       "N/num_clients samples gets no share of later classes")


@scheme("dirichlet", DirichletParams, label=lambda p: f"alpha={p.alpha}")
def dirichlet(y: np.ndarray, spec: PartitionSpec, params: DirichletParams, gen: np.random.Generator,
              groups: np.ndarray | None = None) -> np.ndarray:
    """Each class c is split over the K clients by proportions p_c ~ Dir(alpha * 1_K) (small
    alpha = few classes per client).

    Minimum size without the hang: peers redraw all proportions until every client has
    `min_samples`; at small alpha and many clients that probability is ~0 and they loop
    forever. Here one draw is made, then a bounded, constructive repair: every client short of
    `min_samples` receives exactly its deficit, taken from other clients' samples beyond their
    own `min_samples` (a uniformly random choice among those surplus samples), and matched by
    class to what the receiving client's own Dirichlet row favours (labels drawn from its
    proportions) wherever such samples are in the pool. Work is O(N log N + C K) whatever
    alpha is, and it succeeds whenever num_clients * min_samples <= N, which is checked first.

    `dirichlet_balance` adds the rule of the FL-bench / PFLlib / Hsu et al. code (the FedOBP
    paper's setup): classes are dealt in label order and a client that already holds more than
    N/K samples gets no share of later classes, which keeps sizes near N/K.
    """
    n, k, m = len(y), spec.num_clients, spec.min_samples
    check_enough(n, spec)
    _, y_idx = label_index(y)
    n_c = np.bincount(y_idx)
    c = len(n_c)
    props = gen.dirichlet(np.full(k, params.alpha), size=c)  # (C, K)
    bad = ~np.isfinite(props).all(1) | (props.sum(1) <= 0)
    if bad.any():  # underflow at extreme alpha: the limit of Dir(alpha -> 0) is one random client
        props[bad] = 0.0
        props[bad, gen.integers(0, k, bad.sum())] = 1.0
    if params.dirichlet_balance:
        counts = np.zeros((c, k), dtype=np.int64)
        sizes = np.zeros(k, dtype=np.int64)
        for ci in range(c):  # classes in label order, like the reference code; vectorized over clients
            p = props[ci] * (sizes < n / k)
            props[ci] = p / p.sum() if p.sum() > 0 else props[ci]
            counts[ci] = _cut(props[ci : ci + 1], n_c[ci : ci + 1])[0]
            sizes += counts[ci]
    else:
        counts = _cut(props, n_c)  # (C, K) samples of class c dealt to client k
    counts = _repair_min_size(counts, props, m, gen)
    order = np.lexsort((gen.random(n), y_idx))  # examples grouped by class, random order inside a class
    owner = np.empty(n, dtype=np.int64)
    owner[order] = np.repeat(np.tile(np.arange(k), c), counts.ravel())
    return owner


def _cut(props: np.ndarray, n_c: np.ndarray) -> np.ndarray:
    """Per row, n_c samples cut at the cumulative proportions (floors; the row sums exactly to n_c)."""
    cum = np.floor(np.cumsum(props, axis=1) * n_c[:, None]).astype(np.int64)
    cum = np.minimum(np.maximum.accumulate(cum, axis=1), n_c[:, None])
    cum[:, -1] = n_c
    return np.diff(cum, axis=1, prepend=0)


def _repair_min_size(counts: np.ndarray, props: np.ndarray, m: int, gen: np.random.Generator) -> np.ndarray:
    """Move samples (as counts) from clients above m to clients below m; see `dirichlet`."""
    c, k = counts.shape
    sizes = counts.sum(0)
    deficit = np.maximum(m - sizes, 0)
    need = int(deficit.sum())
    if need == 0:
        return counts
    surplus = np.maximum(sizes - m, 0)
    # 1. which surplus units leave: how many per donor (hypergeometric over donors' surplus), then
    #    which of a donor's samples (uniform over its samples, via random ranks inside the donor)
    give = gen.multivariate_hypergeometric(surplus, need, method="marginals")
    unit_client = np.repeat(np.tile(np.arange(k), c), counts.ravel())  # one entry per sample: (class, client)
    unit_class = np.repeat(np.repeat(np.arange(c), k), counts.ravel())
    by_client = np.lexsort((gen.random(len(unit_client)), unit_client))
    rank = rank_within(unit_client[by_client])
    leaving = by_client[rank < give[unit_client[by_client]]]
    pool_class, pool_from = unit_class[leaving], unit_client[leaving]
    # 2. what each short client wants: `deficit[k]` labels drawn from its own proportions
    short = np.flatnonzero(deficit)
    rows = props[:, short].T  # (short clients, C)
    total = rows.sum(1, keepdims=True)
    rows = np.where(total > 0, rows / np.where(total > 0, total, 1.0), 1.0 / c)  # all-zero row: no preference
    wants = gen.multinomial(deficit[short], rows)  # (short clients, C) labels each one asks for
    want_client = np.repeat(np.repeat(short, c), wants.ravel())
    want_class = np.repeat(np.tile(np.arange(c), len(short)), wants.ravel())
    # 3. match wants to pool units of the same class; the unmatched rest are paired at random
    pool_order = np.lexsort((gen.random(need), pool_class))
    want_order = np.lexsort((gen.random(need), want_class))
    want_rank = rank_within(want_class[want_order])
    have = np.bincount(pool_class, minlength=c)
    pool_start = np.cumsum(have) - have
    wc = want_class[want_order]
    matched = want_rank < have[wc]
    receiver = np.empty(need, dtype=np.int64)  # receiver of pool unit pool_order[j]
    pos = pool_start[wc[matched]] + want_rank[matched]
    receiver[pos] = want_client[want_order[matched]]
    pool_used = np.zeros(need, dtype=bool)
    pool_used[pos] = True
    free_pool = np.flatnonzero(~pool_used)
    free_want = want_client[want_order[~matched]]
    receiver[free_pool] = free_want[gen.permutation(len(free_want))]
    moved_class = pool_class[pool_order]
    moved_from = pool_from[pool_order]
    flat = counts.ravel().copy()
    flat -= np.bincount(moved_class * k + moved_from, minlength=c * k)
    flat += np.bincount(moved_class * k + receiver, minlength=c * k)
    return flat.reshape(c, k)
