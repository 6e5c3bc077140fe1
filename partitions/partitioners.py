"""Partitioners: labels (and group ids) -> the owning client of every example.

A partitioner returns one int64 array `owner` of length N: owner[i] is the client that holds
example i, or -1 when no client does (e.g. the writers a natural partition leaves out). An
owner vector makes "every example is held at most once" true by construction, and lets every
scheme run as a few sorts and bincounts over N examples: no per-sample Python loop, so ten
thousand clients partition in well under a second.

Impossible requests (more clients than samples, k > number of classes, a min size that the
data cannot give) raise ValueError before any work, naming the field and the numbers; no
scheme retries in a loop.

Per-client feature shift (rotation / noise) is also here: it is applied once, at partition
time, to every example of a client.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from partitions.spec import FeatureShiftSpec, PartitionSpec

Partitioner = Callable[..., np.ndarray]
PARTITIONERS: dict[str, Partitioner] = {}


def partitioner(name: str):
    def deco(fn: Partitioner) -> Partitioner:
        PARTITIONERS[name] = fn
        return fn

    return deco


# ----- helpers ------------------------------------------------------------------------------------
def _check_enough(n: int, spec: PartitionSpec) -> None:
    if spec.num_clients > n:
        raise ValueError(f"partition.num_clients={spec.num_clients} is more than the {n} samples of the data set")
    if spec.num_clients * spec.min_samples > n:
        raise ValueError(f"partition.num_clients={spec.num_clients} x partition.min_samples={spec.min_samples} "
                         f"needs {spec.num_clients * spec.min_samples} samples, the data set has {n}; "
                         f"lower one of them")


def _check_min_size(owner: np.ndarray, spec: PartitionSpec, scheme: str, hint: str) -> None:
    sizes = np.bincount(owner[owner >= 0], minlength=spec.num_clients)
    if sizes.min() < spec.min_samples:
        raise ValueError(f"{scheme}: the smallest of {spec.num_clients} clients gets {sizes.min()} samples < "
                         f"partition.min_samples={spec.min_samples}; {hint}")


def _rank_within(sorted_keys: np.ndarray) -> np.ndarray:
    """Position of each element inside its run of equal keys (keys already sorted)."""
    n = len(sorted_keys)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    run_start = np.repeat(starts, np.diff(np.r_[starts, n]))
    return np.arange(n) - run_start


def _deal(sizes: np.ndarray, order: np.ndarray, n: int) -> np.ndarray:
    """owner such that the examples order[0:sizes[0]] go to client 0, the next sizes[1] to client 1, ..."""
    owner = np.full(n, -1, dtype=np.int64)
    owner[order[: sizes.sum()]] = np.repeat(np.arange(len(sizes)), sizes)
    return owner


def _largest_remainder(weights: np.ndarray, total: int) -> np.ndarray:
    """Integers proportional to weights that sum exactly to total."""
    share = weights / weights.sum() * total
    base = np.floor(share).astype(np.int64)
    rest = total - base.sum()
    if rest > 0:
        base[np.argsort(-(share - base), kind="stable")[:rest]] += 1
    return base


def _label_index(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    classes, y_idx = np.unique(y, return_inverse=True)
    return classes, y_idx.astype(np.int64)


# ----- schemes ------------------------------------------------------------------------------------
@partitioner("iid")
def iid(y: np.ndarray, spec: PartitionSpec, gen: np.random.Generator, groups: np.ndarray | None = None) -> np.ndarray:
    """Uniformly random, equal sizes (differ by at most one)."""
    _check_enough(len(y), spec)
    sizes = np.full(spec.num_clients, len(y) // spec.num_clients, dtype=np.int64)
    sizes[: len(y) % spec.num_clients] += 1
    return _deal(sizes, gen.permutation(len(y)), len(y))


@partitioner("dirichlet")
def dirichlet(y: np.ndarray, spec: PartitionSpec, gen: np.random.Generator,
              groups: np.ndarray | None = None) -> np.ndarray:
    """Label skew: each class c is split over the K clients by proportions p_c ~ Dir(alpha * 1_K)
    (the scheme of FL-bench, flwr-datasets and PFLlib; small alpha = few classes per client).

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
    _check_enough(n, spec)
    _, y_idx = _label_index(y)
    n_c = np.bincount(y_idx)
    c = len(n_c)
    props = gen.dirichlet(np.full(k, spec.alpha), size=c)  # (C, K)
    bad = ~np.isfinite(props).all(1) | (props.sum(1) <= 0)
    if bad.any():  # underflow at extreme alpha: the limit of Dir(alpha -> 0) is one random client
        props[bad] = 0.0
        props[bad, gen.integers(0, k, bad.sum())] = 1.0
    if spec.dirichlet_balance:
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
    rank = _rank_within(unit_client[by_client])
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
    want_rank = _rank_within(want_class[want_order])
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


@partitioner("pathological")
def pathological(y: np.ndarray, spec: PartitionSpec, gen: np.random.Generator,
                 groups: np.ndarray | None = None) -> np.ndarray:
    """Each client holds exactly `classes_per_client` labels; a class's samples are split evenly
    (sizes differ by at most one) among the clients that hold it. Classes that no client holds
    (only when num_clients * k < C) stay unassigned."""
    n, k, per = len(y), spec.num_clients, spec.classes_per_client
    _check_enough(n, spec)
    _, y_idx = _label_index(y)
    n_c = np.bincount(y_idx)
    c = len(n_c)
    if per > c:
        raise ValueError(f"pathological: partition.classes_per_client={per} exceeds the {c} classes of the data set")
    if spec.class_assignment == "cyclic":
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
    rank = _rank_within(cls_sorted)
    owner = np.full(n, -1, dtype=np.int64)
    has = holders[cls_sorted] > 0
    slot = rank[has] * holders[cls_sorted[has]] // n_c[cls_sorted[has]]
    owner[order[has]] = pair_client[by_class][holder_start[cls_sorted[has]] + slot]
    _check_min_size(owner, spec, "pathological", "lower partition.num_clients or min_samples, or raise "
                                                 "classes_per_client")
    return owner


@partitioner("shards")
def shards(y: np.ndarray, spec: PartitionSpec, gen: np.random.Generator,
           groups: np.ndarray | None = None) -> np.ndarray:
    """McMahan et al. (2017): sort by label, cut into num_clients * shards_per_client equal shards,
    deal each client `shards_per_client` random shards."""
    n, k, s = len(y), spec.num_clients, spec.shards_per_client
    _check_enough(n, spec)
    n_shards = k * s
    if n_shards > n:
        raise ValueError(f"shards: num_clients x shards_per_client = {n_shards} shards but only {n} samples")
    if s * (n // n_shards) < spec.min_samples:
        raise ValueError(f"shards: {n_shards} shards of {n // n_shards} samples give clients "
                         f"{s * (n // n_shards)} < partition.min_samples={spec.min_samples} samples")
    _, y_idx = _label_index(y)
    order = np.lexsort((gen.random(n), y_idx))
    shard_sizes = np.full(n_shards, n // n_shards, dtype=np.int64)
    shard_sizes[: n % n_shards] += 1
    client_of_shard = np.empty(n_shards, dtype=np.int64)
    client_of_shard[gen.permutation(n_shards)] = np.arange(n_shards) // s
    owner = np.empty(n, dtype=np.int64)
    owner[order] = client_of_shard[np.repeat(np.arange(n_shards), shard_sizes)]
    return owner


@partitioner("quantity")
def quantity(y: np.ndarray, spec: PartitionSpec, gen: np.random.Generator,
             groups: np.ndarray | None = None) -> np.ndarray:
    """Size skew with IID labels: every client gets min_samples, the remaining N - K*min_samples
    are dealt in proportion to weights ~ lognormal(0, sigma) or Pareto(exponent) + 1."""
    n, k, m = len(y), spec.num_clients, spec.min_samples
    _check_enough(n, spec)
    if spec.quantity_distribution == "lognormal":
        weights = gen.lognormal(0.0, spec.quantity_sigma, k)
    else:
        weights = gen.pareto(spec.powerlaw_exponent, k) + 1.0
    sizes = m + _largest_remainder(weights, n - k * m)
    return _deal(sizes, gen.permutation(n), n)


@partitioner("natural")
def natural(y: np.ndarray, spec: PartitionSpec, gen: np.random.Generator,
            groups: np.ndarray | None = None) -> np.ndarray:
    """One client per natural group (writer, user...). Groups smaller than min_samples are left
    out; when more groups remain than num_clients, a random subset of them is kept. Client ids
    follow the ascending group ids; examples of groups not kept stay unassigned."""
    if groups is None:
        raise ValueError("natural: the data set has no group ids; set data.group_column to the column that names "
                         "each example's writer/user (e.g. writer)")
    ids, inverse, sizes = np.unique(groups, return_inverse=True, return_counts=True)
    eligible = np.flatnonzero(sizes >= spec.min_samples)
    if spec.num_clients > len(eligible):
        raise ValueError(f"natural: partition.num_clients={spec.num_clients} but the data set has only "
                         f"{len(eligible)} groups with >= partition.min_samples={spec.min_samples} samples "
                         f"({len(ids)} groups in all); set num_clients <= {len(eligible)}")
    kept = np.sort(gen.choice(eligible, spec.num_clients, replace=False))
    client_of_group = np.full(len(ids), -1, dtype=np.int64)
    client_of_group[kept] = np.arange(spec.num_clients)
    return client_of_group[inverse.ravel()]


def run_partitioner(y: np.ndarray, spec: PartitionSpec, gen: np.random.Generator,
                    groups: np.ndarray | None = None) -> np.ndarray:
    if spec.scheme not in PARTITIONERS:
        raise ValueError(f"unknown partition scheme {spec.scheme!r}; choose one of: {', '.join(sorted(PARTITIONERS))}")
    owner = PARTITIONERS[spec.scheme](np.asarray(y), spec, gen, groups=groups)
    if owner.shape != (len(y),) or (owner >= spec.num_clients).any():
        raise AssertionError(f"{spec.scheme}: partitioner returned a bad owner vector")
    return owner


# ----- feature (covariate) shift --------------------------------------------------------------------
def feature_shift_params(spec: FeatureShiftSpec, num_clients: int, gen: np.random.Generator) -> dict[str, np.ndarray]:
    """Per-client rotation angle (degrees) and noise std (on the [0, 1] pixel scale)."""
    if spec.levels:
        level = gen.permutation(num_clients) % spec.levels
        frac = np.linspace(0.0, 1.0, spec.levels)[level] if spec.levels > 1 else np.zeros(num_clients)
        frac_rot, frac_noise = frac, frac
    else:
        frac_rot, frac_noise = gen.random(num_clients), gen.random(num_clients)
    degrees = frac_rot * spec.max_degrees if "rotation" in spec.kind else np.zeros(num_clients)
    noise = frac_noise * spec.max_noise_std if "noise" in spec.kind else np.zeros(num_clients)
    return {"degrees": degrees, "noise_std": noise}


CHUNK = 2048


def apply_feature_shift(x: np.ndarray, owner: np.ndarray, degrees: np.ndarray, noise_std: np.ndarray,
                        gen: np.random.Generator) -> np.ndarray:
    """A copy of x in which every example is rotated / noised with its client's parameters.

    Vectorized over examples: every example gets its own affine matrix (its client's angle)
    and one `grid_sample` call transforms a chunk of examples at once. dtype is kept (uint8 is
    rounded and clipped to 0..255). Examples of no client are left unchanged."""
    import torch
    import torch.nn.functional as F

    out = x.copy()
    is_uint8 = x.dtype == np.uint8
    scale = 255.0 if is_uint8 else 1.0
    todo_rot = np.flatnonzero((owner >= 0) & (degrees[np.maximum(owner, 0)] != 0))
    if len(todo_rot) and x.ndim != 4:
        raise ValueError(f"feature_shift rotation needs image data (N, C, H, W); inputs have shape {x.shape}")
    todo_noise = np.flatnonzero((owner >= 0) & (noise_std[np.maximum(owner, 0)] > 0))
    for start in range(0, len(todo_rot), CHUNK):
        idx = todo_rot[start : start + CHUNK]
        rad = torch.as_tensor(np.deg2rad(degrees[owner[idx]]), dtype=torch.float32)
        cos, sin = torch.cos(rad), torch.sin(rad)
        theta = torch.zeros(len(idx), 2, 3)
        theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos
        batch = torch.from_numpy(np.ascontiguousarray(out[idx])).float()
        grid = F.affine_grid(theta, list(batch.shape), align_corners=False)
        rotated = F.grid_sample(batch, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        out[idx] = _cast(rotated.numpy(), out.dtype)
    for start in range(0, len(todo_noise), CHUNK):
        idx = todo_noise[start : start + CHUNK]
        sigma = (noise_std[owner[idx]] * scale).astype(np.float32).reshape(-1, *([1] * (x.ndim - 1)))
        noisy = out[idx].astype(np.float32) + gen.standard_normal((len(idx), *x.shape[1:]), dtype=np.float32) * sigma
        out[idx] = _cast(noisy, out.dtype)
    return out


def _cast(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if dtype == np.uint8:
        return np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return values.astype(dtype)
