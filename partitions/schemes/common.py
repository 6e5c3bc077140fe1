"""Building blocks shared by the schemes (and by a user's own scheme).

Every scheme turns labels into `owner`, the client of every example, with a few sorts and
bincounts over N examples; these are the pieces they share: the up-front feasibility checks
(an impossible request fails before any work, naming the fields and the numbers) and the
vectorized dealing helpers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from partitions.spec import PartitionSpec


def check_enough(n: int, spec: PartitionSpec) -> None:
    """Fail fast when num_clients (x min_samples) cannot be served from n examples."""
    if spec.num_clients > n:
        raise ValueError(f"partition.num_clients={spec.num_clients} is more than the {n} samples of the data set")
    if spec.num_clients * spec.min_samples > n:
        raise ValueError(f"partition.num_clients={spec.num_clients} x partition.min_samples={spec.min_samples} "
                         f"needs {spec.num_clients * spec.min_samples} samples, the data set has {n}; "
                         f"lower one of them")


def check_min_size(owner: np.ndarray, spec: PartitionSpec, scheme: str, hint: str) -> None:
    """For schemes whose sizes follow from the labels: fail when the smallest client is too small."""
    sizes = np.bincount(owner[owner >= 0], minlength=spec.num_clients)
    if sizes.min() < spec.min_samples:
        raise ValueError(f"{scheme}: the smallest of {spec.num_clients} clients gets {sizes.min()} samples < "
                         f"partition.min_samples={spec.min_samples}; {hint}")


def rank_within(sorted_keys: np.ndarray) -> np.ndarray:
    """Position of each element inside its run of equal keys (keys already sorted)."""
    n = len(sorted_keys)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    run_start = np.repeat(starts, np.diff(np.r_[starts, n]))
    return np.arange(n) - run_start


def deal(sizes: np.ndarray, order: np.ndarray, n: int) -> np.ndarray:
    """owner such that the examples order[0:sizes[0]] go to client 0, the next sizes[1] to client 1, ..."""
    owner = np.full(n, -1, dtype=np.int64)
    owner[order[: sizes.sum()]] = np.repeat(np.arange(len(sizes)), sizes)
    return owner


def largest_remainder(weights: np.ndarray, total: int) -> np.ndarray:
    """Integers proportional to weights that sum exactly to total."""
    share = weights / weights.sum() * total
    base = np.floor(share).astype(np.int64)
    rest = total - base.sum()
    if rest > 0:
        base[np.argsort(-(share - base), kind="stable")[:rest]] += 1
    return base


def label_index(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct labels, each example's position among them): classes as 0..C-1."""
    classes, y_idx = np.unique(y, return_inverse=True)
    return classes, y_idx.astype(np.int64)
