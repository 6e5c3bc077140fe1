"""The flwr-datasets-style schemes: inner_dirichlet, iid_dirichlet_mix, label_quantity (hand-computed sizes,
label histograms against the global one, k classes per client, the requested size skew, one-line errors)."""

from __future__ import annotations

import numpy as np
import pytest

from harness.specfile import ConfigError
from partitions import PartitionSpec, partition_data, scheme_label
from partitions.schemes.common import largest_remainder
from partitions.sources.common import make_data
from protocol.rng import rng
from tests.conftest import small_config


def labels_data(per_class: int = 600, classes: int = 10, name: str = "blobs"):
    """per_class examples of each class (balanced) in a random order, 2 float features each."""
    y = rng(0, "test-labels").permutation(np.repeat(np.arange(classes), per_class))
    x = rng(0, "test-x").random((len(y), 2)).astype(np.float32)
    return make_data(x, y, name)


def part(scheme: str, **kw) -> PartitionSpec:
    kw.setdefault("num_clients", 50)
    kw.setdefault("min_samples", 10)
    return PartitionSpec(scheme=scheme, cache_dir=None, **kw)


def tv(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Total-variation distance of each row of p (counts) to the distribution q."""
    return 0.5 * np.abs(p / p.sum(1, keepdims=True) - q).sum(1)


def check_owner(fed, n: int) -> np.ndarray:
    owner = fed.owner()
    idx = np.concatenate([fed.index[s] for s in fed.index])
    assert len(idx) == len(np.unique(idx))  # every example held at most once
    return owner


# ----- inner_dirichlet ------------------------------------------------------------------------------
def test_inner_dirichlet_equal_sizes_are_exact_and_every_example_is_dealt():
    data = labels_data()
    fed = partition_data(data, part("inner_dirichlet", num_clients=70, alpha=0.3), seed=1)
    owner = check_owner(fed, len(data.y))
    sizes = np.bincount(owner, minlength=70)
    assert (owner >= 0).all()
    assert sorted(sizes.tolist()) == sorted([6000 // 70 + 1] * (6000 % 70) + [6000 // 70] * (70 - 6000 % 70))
    assert (fed.label_counts().sum(0) == 600).all()  # classes exhausted exactly, nothing invented


def test_inner_dirichlet_lognormal_sizes_are_the_drawn_ones():
    data = labels_data()
    spec = part("inner_dirichlet", num_clients=40, inner_sizes="lognormal", inner_sigma=0.3, min_samples=20)
    fed = partition_data(data, spec, seed=5)
    # the scheme's first draw from its stream are the K size weights; sizes = m + largest remainder of the rest
    weights = rng(5, "partition").lognormal(0.0, 0.3, 40)
    expected = 20 + largest_remainder(weights, 6000 - 40 * 20)
    assert np.array_equal(np.bincount(fed.owner(), minlength=40), expected)
    assert scheme_label(spec) == "inner_dirichlet(alpha=0.5,lognormal=0.3)"


def test_inner_dirichlet_alpha_controls_the_label_skew():
    data = labels_data()
    glob = np.full(10, 0.1)
    skew = {a: tv(partition_data(data, part("inner_dirichlet", alpha=a), seed=0).label_counts(), glob).mean()
            for a in (0.05, 1.0, 1000.0)}
    iid = tv(partition_data(data, part("iid"), seed=0).label_counts(), glob).mean()  # 120 samples: ~0.1 noise
    assert skew[0.05] > 0.6 > skew[1.0] > 0.2 > skew[1000.0] and abs(skew[1000.0] - iid) < 0.02
    few = partition_data(data, part("inner_dirichlet", alpha=0.05), seed=0).label_counts()
    assert ((few > 0).sum(1) <= 5).mean() > 0.8  # tiny alpha: most clients hold a handful of classes


def test_inner_dirichlet_is_deterministic():
    data = labels_data()
    a = partition_data(data, part("inner_dirichlet"), seed=3).owner()
    assert np.array_equal(a, partition_data(data, part("inner_dirichlet"), seed=3).owner())
    assert not np.array_equal(a, partition_data(data, part("inner_dirichlet"), seed=4).owner())


# ----- iid_dirichlet_mix ----------------------------------------------------------------------------
def test_mix_iid_clients_look_global_and_the_rest_are_skewed():
    data = labels_data(per_class=1000)
    spec = part("iid_dirichlet_mix", num_clients=40, iid_fraction=0.25, alpha=0.1)
    fed = partition_data(data, spec, seed=2)
    owner = check_owner(fed, len(data.y))
    assert (owner >= 0).all()
    iid = np.asarray(fed.meta["iid_clients"])
    assert len(iid) == 10 and len(np.unique(iid)) == 10
    sizes = np.bincount(owner, minlength=40)
    assert set(sizes[iid].tolist()) == {10000 // 40}  # round(N * 10/40) examples, equal parts
    counts = fed.label_counts()
    glob = np.bincount(data.y) / len(data.y)
    skewed = np.setdiff1d(np.arange(40), iid)
    assert tv(counts[iid], glob).max() < 0.15  # 250 examples: a multinomial's TV to its mean is ~0.07
    assert tv(counts[skewed], glob).mean() > 0.5
    assert scheme_label(spec) == "iid_dirichlet_mix(iid=0.25,alpha=0.1)"


def test_mix_extremes_and_determinism():
    data = labels_data()
    all_iid = partition_data(data, part("iid_dirichlet_mix", iid_fraction=1.0), seed=0)
    assert len(all_iid.meta["iid_clients"]) == 50 and set(np.bincount(all_iid.owner()).tolist()) == {120}
    none = partition_data(data, part("iid_dirichlet_mix", iid_fraction=0.0, alpha=0.1), seed=0)
    assert none.meta["iid_clients"] == [] and (none.owner() >= 0).all()
    assert np.bincount(none.owner(), minlength=50).min() >= 10  # the dirichlet repair still holds min_samples
    again = partition_data(data, part("iid_dirichlet_mix"), seed=7)
    assert np.array_equal(again.owner(), partition_data(data, part("iid_dirichlet_mix"), seed=7).owner())


# ----- label_quantity -------------------------------------------------------------------------------
def test_label_quantity_holds_k_classes_per_client_and_deals_everything():
    data = labels_data()
    for k, assignment in ((1, "cyclic"), (3, "cyclic"), (2, "random")):
        spec = part("label_quantity", num_clients=40, classes_per_client=k, class_assignment=assignment)
        fed = partition_data(data, spec, seed=1)
        counts = fed.label_counts()
        assert ((counts > 0).sum(1) <= k).all()
        if assignment == "cyclic":  # every class held (40 * k >= 10) and min_samples >= k: exactly k each
            assert ((counts > 0).sum(1) == k).all() and (fed.owner() >= 0).all()
        assert counts.sum(1).min() >= 10
    assert scheme_label(part("label_quantity", classes_per_client=3)) == "label_quantity(k=3,lognormal)"


def test_label_quantity_sizes_follow_the_requested_skew():
    data = labels_data(per_class=5000)

    def log_sizes(**kw) -> np.ndarray:
        fed = partition_data(data, part("label_quantity", num_clients=100, min_samples=1, **kw), seed=3)
        return np.log(np.bincount(fed.owner(), minlength=100) - 1)  # the part above min_samples

    spread = {s: log_sizes(quantity_sigma=s).std() for s in (0.25, 1.0, 2.0)}
    assert spread[0.25] < spread[1.0] < spread[2.0]
    for s in (1.0, 2.0):  # the weights' own log-std is sigma; the split of each class adds a little
        assert abs(spread[s] - s) < 0.3 * s
    # sizes follow the drawn weights: the scheme's stream draws the class order, the client order, then them
    gen = rng(3, "partition")
    gen.permutation(10), gen.permutation(100)
    weights = gen.lognormal(0.0, 1.0, 100)
    assert np.corrcoef(np.log(weights), log_sizes(quantity_sigma=1.0))[0, 1] > 0.9
    heavy = np.exp(log_sizes(quantity_distribution="powerlaw", powerlaw_exponent=1.0))
    assert heavy.max() > 8 * np.median(heavy)  # Pareto(1) + 1: a heavy tail


def test_label_quantity_refuses_what_it_cannot_do():
    data = labels_data(per_class=30)
    with pytest.raises(ValueError, match="classes_per_client=11 exceeds the 10 classes"):
        partition_data(data, part("label_quantity", num_clients=10, classes_per_client=11), seed=0)
    with pytest.raises(ValueError, match="class .* has 30 samples but its holders need"):
        partition_data(data, part("label_quantity", num_clients=25, min_samples=11, classes_per_client=1), seed=0)


# ----- validation in a run spec: one line each --------------------------------------------------------
@pytest.mark.parametrize(("block", "needle"), [
    ({"scheme": "inner_dirichlet", "inner_sizes": "zipf"}, "partition.inner_sizes: Input should be 'equal' or "
                                                          "'lognormal'"),
    ({"scheme": "inner_dirichlet", "alpha": 0}, "partition.alpha: Input should be greater than 0"),
    ({"scheme": "iid_dirichlet_mix", "iid_fraction": 1.5}, "partition.iid_fraction: Input should be less than or "
                                                           "equal to 1"),
    ({"scheme": "label_quantity", "classes_per_client": 0}, "partition.classes_per_client: Input should be "
                                                             "greater than or equal to 1"),
    ({"scheme": "label_quantity", "shards_per_client": 3}, "belongs to scheme shards, not label_quantity"),
])
def test_bad_parameters_fail_in_one_line(tmp_path, block, needle):
    with pytest.raises(ConfigError) as err:
        small_config(tmp_path, partition={"num_clients": 10, **block})
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_new_schemes_run_through_a_run_spec(tmp_path):
    from harness.engine import run

    for block in ({"scheme": "inner_dirichlet", "alpha": 0.5}, {"scheme": "iid_dirichlet_mix"},
                  {"scheme": "label_quantity", "classes_per_client": 3}):
        cfg = small_config(tmp_path / block["scheme"], "rounds=1",
                           partition={"num_clients": 10, "min_samples": 10, "cache_dir": None, **block})
        result = run(cfg, progress=False)
        assert np.isfinite(result.history[-1]["personal_acc"])
