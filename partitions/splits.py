"""Per-client local split into train / val / test (default 75/25, no validation).

Vectorized over all examples at once (one lexsort), so 10,000 clients split as fast as 10.
"""

from __future__ import annotations

import numpy as np

TEST, VAL, TRAIN = 0, 1, 2  # an example's split, as split_owner decides it and a scheme's Deal.split gives it


def split_counts(sizes: np.ndarray, test_fraction: float, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(n_test, n_val) per client: round-half-up of size x fraction; a client with >= 2 examples
    keeps at least one training and one test example (the validation share gives way first)."""
    sizes = np.asarray(sizes, dtype=np.int64)
    n_test = np.floor(sizes * test_fraction + 0.5).astype(np.int64)
    n_val = np.floor(sizes * val_fraction + 0.5).astype(np.int64)
    two = sizes >= 2
    n_test = np.where(two, np.clip(n_test, 1, np.maximum(sizes - 1, 1)), np.minimum(n_test, sizes))
    n_val = np.where(two, np.clip(n_val, 0, np.maximum(sizes - 1 - n_test, 0)),
                     np.minimum(n_val, sizes - n_test))
    return n_test, n_val


def split_owner(owner: np.ndarray, num_clients: int, test_fraction: float, val_fraction: float,
                gen: np.random.Generator) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """CSR (index, offsets) per split from an owner vector (-1 = no client).

    Each client's examples are shuffled (one random key per example), the first n_test go to
    test, the next n_val to val, the rest to train; inside a split a client's indices are sorted.
    The "val" split exists only when val_fraction > 0."""
    assigned = np.flatnonzero(owner >= 0)
    cl = owner[assigned]
    order = np.lexsort((gen.random(len(assigned)), cl))
    idx, cl = assigned[order], cl[order]
    sizes = np.bincount(cl, minlength=num_clients)
    start = np.cumsum(sizes) - sizes
    rank = np.arange(len(idx)) - start[cl]
    n_test, n_val = split_counts(sizes, test_fraction, val_fraction)
    which = np.where(rank < n_test[cl], TEST, np.where(rank < (n_test + n_val)[cl], VAL, TRAIN))
    return _csr(idx, cl, which, num_clients, val_fraction > 0)


def split_from_codes(owner: np.ndarray, codes: np.ndarray, num_clients: int,
                     with_val: bool) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """CSR (index, offsets) per split from a split decided elsewhere: codes[i] = TEST, VAL or TRAIN (-1 where
    owner is -1), e.g. a scheme that reproduces another tool's local split (Deal.split)."""
    assigned = np.flatnonzero(owner >= 0)
    if not with_val and (codes[assigned] == VAL).any():
        raise ValueError("the scheme put examples in a validation split, but partition.val_fraction is 0")
    return _csr(assigned, owner[assigned], codes[assigned], num_clients, with_val)


def _csr(idx: np.ndarray, cl: np.ndarray, which: np.ndarray, num_clients: int,
         with_val: bool) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per split (which: TEST, VAL, TRAIN), every client's indices sorted, as (index, offsets)."""
    names = ["test", "val", "train"] if with_val else ["test", "train"]
    codes = [TEST, VAL, TRAIN] if with_val else [TEST, TRAIN]
    index, offsets = {}, {}
    for name, code in zip(names, codes, strict=True):
        sel = which == code
        i_s, c_s = idx[sel], cl[sel]
        o = np.lexsort((i_s, c_s))
        index[name] = i_s[o].astype(np.int64)
        off = np.zeros(num_clients + 1, dtype=np.int64)
        off[1:] = np.cumsum(np.bincount(c_s, minlength=num_clients))
        offsets[name] = off
    order_names = ["train", "val", "test"] if with_val else ["train", "test"]
    return {s: index[s] for s in order_names}, {s: offsets[s] for s in order_names}


def local_splits(parts: list[np.ndarray], test_fraction: float, val_fraction: float,
                 gen: np.random.Generator) -> dict[str, list[np.ndarray]]:
    """List-of-arrays form (kept for callers that hold one index array per client)."""
    num_clients = len(parts)
    n = int(max((p.max() for p in parts if len(p)), default=-1)) + 1
    owner = np.full(n, -1, dtype=np.int64)
    for cid, part in enumerate(parts):
        owner[part] = cid
    index, offsets = split_owner(owner, num_clients, test_fraction, val_fraction, gen)
    return {s: np.split(index[s], offsets[s][1:-1]) for s in index}
