"""Per-client local split into train / val / test (default 75/25, no validation)."""

from __future__ import annotations

import numpy as np


def local_splits(parts: list[np.ndarray], test_fraction: float, val_fraction: float,
                 gen: np.random.Generator) -> dict[str, list[np.ndarray]]:
    """Shuffle each client's examples and cut them by ratio. Every client with >= 2 examples
    keeps at least one training and one test example."""
    out: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for part in parts:
        shuffled = part[gen.permutation(len(part))]
        n = len(shuffled)
        n_test = int(round(n * test_fraction))
        n_val = int(round(n * val_fraction))
        if n >= 2:
            n_test = min(max(n_test, 1), n - 1)
            n_val = min(n_val, n - 1 - n_test)
        out["test"].append(np.sort(shuffled[:n_test]))
        out["val"].append(np.sort(shuffled[n_test : n_test + n_val]))
        out["train"].append(np.sort(shuffled[n_test + n_val :]))
    if val_fraction == 0:
        del out["val"]
    return out
