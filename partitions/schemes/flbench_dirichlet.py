"""flbench_dirichlet: FL-bench's Dirichlet partition and local split, reproduced draw for draw.

FL-bench (KarhouTam/FL-bench, `generate_data.py -a ALPHA`; the FedOBP authors' fork ran it) makes a
partition once, with NumPy's legacy global generator seeded by its `--seed` (default 42):

1. for every class in label order: shuffle that class's example indices in place, draw
   p ~ Dir(alpha * 1_K), and cut the shuffled indices at floor(cumsum(p) * n_class) (the last
   cut is the class's end), client k taking the k-th piece;
2. if the smallest client holds fewer than `least_samples` (`partition.min_samples`), start over
   from step 1 with the same generator (the class arrays stay as the previous draw left them);
3. for every client in id order: shuffle its indices (label-major, as dealt) in place; the first
   int(n * test_ratio) are its test split, the next int(n * val_ratio) its validation split, the
   rest its training split.

This module makes the same calls on `np.random.RandomState(flbench_seed)` (the legacy stream
NumPy keeps fixed across versions), so with the same labels it deals the same number of each
class to every client and the same split sizes as FL-bench: checked against the per-client test
accuracies that the FedOBP authors' logs print (tests/test_flbench_partition.py). Which example
a client gets also matches wherever the data set's order matches FL-bench's (train then test, in
torchvision's order; the CIFAR-10 JPEG copy in ../shared/data keeps the training order, not the
test order).

Differences from the harness's own `dirichlet` scheme, on purpose: no size rule
(`dirichlet_balance`), redraws instead of the constructive minimum-size repair (bounded here by
`max_draws`, where FL-bench can loop forever), split sizes rounded down (the harness rounds half
up and keeps one test example), and the partition seed is `flbench_seed`, not the run's seed:
FL-bench makes one partition and trains every seed on it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from pydantic import Field

from partitions.schemes.common import check_enough
from partitions.schemes.registry import Deal, scheme
from partitions.splits import TEST, TRAIN, VAL
from protocol.specs import Strict

if TYPE_CHECKING:
    from partitions.spec import PartitionSpec


class FLbenchDirichletParams(Strict):
    alpha: float = Field(0.5, gt=0, description="flbench_dirichlet: concentration (FL-bench's -a)")
    flbench_seed: int = Field(42, ge=0, description="flbench_dirichlet: FL-bench's partition seed (generate_data.py "
                                                    "--seed, default 42); the same partition for every run seed")
    max_draws: int = Field(10_000, ge=1, description="flbench_dirichlet: give up after this many redraws (FL-bench "
                                                     "loops until every client has min_samples)")


@scheme("flbench_dirichlet", FLbenchDirichletParams, label=lambda p: f"alpha={p.alpha},seed={p.flbench_seed}")
def flbench_dirichlet(y: np.ndarray, spec: PartitionSpec, params: FLbenchDirichletParams, gen: np.random.Generator,
                      groups: np.ndarray | None = None) -> Deal:
    """FL-bench's partition and local split (module docstring); `gen` is unused: FL-bench's own stream."""
    check_enough(len(y), spec)
    legacy = np.random.RandomState(params.flbench_seed)
    parts, draws = _deal(y, spec.num_clients, params.alpha, spec.min_samples, params.max_draws, legacy)
    owner = np.full(len(y), -1, dtype=np.int64)
    split = np.full(len(y), -1, dtype=np.int64)
    for client, indices in enumerate(parts):  # FL-bench's split_dataset, client by client
        legacy.shuffle(indices)
        n_test, n_val = int(len(indices) * spec.test_fraction), int(len(indices) * spec.val_fraction)
        owner[indices] = client
        split[indices[:n_test]] = TEST
        split[indices[n_test:n_test + n_val]] = VAL
        split[indices[n_test + n_val:]] = TRAIN
    return Deal(owner, {"flbench_draws": draws}, split)


def _deal(y: np.ndarray, clients: int, alpha: float, least: int, max_draws: int,
          legacy: np.random.RandomState) -> tuple[list[np.ndarray], int]:
    """Steps 1-2 of the module docstring: each client's indices in FL-bench's order, and the draws it took."""
    by_class = [np.flatnonzero(y == label) for label in np.unique(y)]
    for draw in range(1, max_draws + 1):
        pieces: list[list[np.ndarray]] = [[] for _ in range(clients)]
        for indices in by_class:
            legacy.shuffle(indices)
            p = legacy.dirichlet(np.repeat(alpha, clients))
            cuts = (np.cumsum(p) * len(indices)).astype(int)[:-1]
            for client, piece in enumerate(np.split(indices, cuts)):
                pieces[client].append(piece)
        parts = [np.concatenate(p).astype(np.int64) for p in pieces]
        if min(len(p) for p in parts) >= least:
            return parts, draw
    raise ValueError(f"flbench_dirichlet: after {max_draws} draws of Dir({alpha}) over {clients} clients, some client "
                     f"still had fewer than partition.min_samples={least} samples (FL-bench redraws until none does); "
                     f"lower min_samples or num_clients, raise alpha, or use scheme dirichlet, which repairs small "
                     f"clients instead of redrawing")
