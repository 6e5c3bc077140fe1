"""flbench_dirichlet and sampling=flbench reproduce the FedOBP authors' partitions and client streams.

The authors' logs print each sampled client's test accuracy to two decimals every 10 rounds
(docs/reproduction/flbench_logged/): an accuracy a is k/n for the client's test-set size n, so the
1,600 logged lines check the test size of nearly every client of four partitions, and the logged clients of
every 10th round check the sampling stream. The test sizes depend only on the class counts (FL-bench's
shuffles permute positions, whatever the labels there), so no image is needed."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from harness.config import BudgetSpec
from harness.engine.clock import DeviceProfiles, VirtualClock
from partitions import partition_data
from partitions.federated import ArrayData
from partitions.spec import PartitionSpec

LOGS = Path(__file__).resolve().parents[1] / "docs" / "reproduction" / "flbench_logged"
CIFAR10_COUNTS = [6000] * 10  # train + test
MNIST_COUNTS = [6903, 7877, 6990, 7141, 6824, 6313, 6876, 7293, 6825, 6958]  # train + test, torchvision's files


def labels(counts: list[int], seed: int = 0) -> np.ndarray:
    """A label vector with these class counts, in a scrambled order (the order must not matter)."""
    y = np.repeat(np.arange(len(counts)), counts)
    return np.random.default_rng(seed).permutation(y)


def partition(y: np.ndarray, scheme: str = "flbench_dirichlet", run_seed: int = 0, **keys):
    spec = PartitionSpec(**{"scheme": scheme, "num_clients": 100, "min_samples": 10, "cache_dir": None, **keys})
    data = ArrayData(x=np.zeros((len(y), 1), dtype=np.float32), y=y, name="labels", num_classes=int(y.max()) + 1,
                     mean=(0.0,), std=(1.0,))
    return partition_data(data, spec, run_seed)


def logged(name: str) -> list[dict[str, float]]:
    with open(LOGS / name) as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def fits(accuracy: float, n: int) -> bool:
    """Whether a two-decimal percentage can be k/n."""
    return n > 0 and abs(100 * round(accuracy * n / 100) / n - accuracy) <= 0.0051


def inconsistent(rows, test_sizes) -> int:
    return sum(not (fits(r["acc_before"], test_sizes[int(r["client"])])
                    and fits(r["acc_after"], test_sizes[int(r["client"])])) for r in rows)


CASES = [("cifar10_a0.1_local.csv", CIFAR10_COUNTS, 0.1), ("cifar10_a0.5_local.csv", CIFAR10_COUNTS, 0.5),
         ("mnist_a0.1_local.csv", MNIST_COUNTS, 0.1), ("mnist_a0.5_local.csv", MNIST_COUNTS, 0.5)]


@pytest.mark.parametrize(("log", "counts", "alpha"), CASES)
def test_test_sizes_match_every_logged_accuracy(log, counts, alpha):
    rows = logged(log)
    assert len(rows) == 400 and len({int(r["client"]) for r in rows}) >= 95
    fed = partition(labels(counts), alpha=alpha)
    assert inconsistent(rows, fed.sizes("test")) == 0


def test_the_check_tells_partitions_apart():
    """The harness's own dirichlet partition of the same data fails the check almost everywhere."""
    rows = logged("cifar10_a0.1_local.csv")
    for balance in (True, False):
        fed = partition(labels(CIFAR10_COUNTS), scheme="dirichlet", run_seed=42, alpha=0.1, dirichlet_balance=balance)
        assert inconsistent(rows, fed.sizes("test")) > 300


def test_partition_is_fl_benchs_not_the_runs_seed():
    y = labels(CIFAR10_COUNTS)
    a, b = partition(y, alpha=0.1, run_seed=0), partition(y, alpha=0.1, run_seed=7)
    for split in ("train", "test"):
        assert np.array_equal(a.index[split], b.index[split])
    other = partition(y, alpha=0.1, flbench_seed=43)
    assert not np.array_equal(a.sizes("test"), other.sizes("test"))
    assert a.meta["flbench_draws"] == 8  # seed 42 at Dir(0.1) redraws 7 times before every client has 10


def test_split_sizes_round_down_like_fl_bench():
    fed = partition(labels(CIFAR10_COUNTS), alpha=0.5, val_fraction=0.1)
    total = fed.sizes("train") + fed.sizes("val") + fed.sizes("test")
    assert np.array_equal(fed.sizes("test"), (total * 0.25).astype(int))
    assert np.array_equal(fed.sizes("val"), (total * 0.1).astype(int))
    assert total.sum() == 60_000 and total.min() >= 10


def test_redraw_limit_is_a_clear_error():
    y = labels([50] * 10)
    with pytest.raises(ValueError, match="after 3 draws.*min_samples=5.*scheme dirichlet"):
        partition(y, min_samples=5, alpha=0.01, max_draws=3)


def flbench_clock(seed: int = 42) -> VirtualClock:
    spec = BudgetSpec()
    return VirtualClock(spec, DeviceProfiles.draw(spec, 100, seed), 32, seed, "flbench")


@pytest.mark.parametrize("log", [c[0] for c in CASES])
def test_sampling_stream_matches_the_logged_rounds(log):
    clock = flbench_clock()
    by_round: dict[int, set[int]] = {}
    for r in logged(log):
        by_round.setdefault(int(r["epoch"]) - 1, set()).add(int(r["client"]))  # the engine counts rounds from 0
    everyone = np.arange(100)
    for rnd in range(400):
        chosen = clock.sample(rnd, everyone, 10)
        if rnd in by_round:
            assert set(chosen.tolist()) == by_round[rnd]


def test_sampling_stream_depends_on_the_round_alone():
    """A resumed run (a fresh clock asked for round 57 first) gets the same clients as one that ran through."""
    everyone = np.arange(100)
    through = flbench_clock()
    seq = [through.sample(r, everyone, 10) for r in range(60)]
    fresh = flbench_clock()
    assert np.array_equal(fresh.sample(57, everyone, 10), seq[57])
    assert np.array_equal(fresh.sample(3, everyone, 10), seq[3])  # going back replays from the start
    assert np.array_equal(fresh.sample(58, everyone, 10), seq[58])
    assert not np.array_equal(flbench_clock(seed=0).sample(0, everyone, 10), seq[0])


def test_flbench_sampling_refuses_budgets_it_cannot_honour(tmp_path):
    from tests.conftest import small_config

    with pytest.raises(ValueError, match="sampling=flbench.*budget.mode=fixed"):
        small_config(tmp_path, "sampling=flbench", "budget.mode=deadline", "budget.deadline_s=5")
    with pytest.raises(ValueError, match="sampling=flbench"):
        small_config(tmp_path, "sampling=flbench", "budget.devices.availability=0.5")


def test_config_hash_keeps_old_runs_and_tells_the_stream(tmp_path):
    from tests.conftest import small_config

    uniform = small_config(tmp_path)
    assert "sampling" not in uniform.model_dump() or uniform.config_hash() == small_config(
        tmp_path, "sampling=uniform").config_hash()
    assert small_config(tmp_path, "sampling=flbench").config_hash() != uniform.config_hash()


def test_a_run_on_fl_benchs_partition_and_stream(tmp_path, monkeypatch):
    """End to end: the engine trains exactly the clients of FL-bench's stream on FL-bench's partition."""
    import random

    from harness.engine.run import run
    from tests.conftest import small_config

    seen: list[list[int]] = []
    original = VirtualClock._flbench_sample

    def spy(self, rnd, candidates, k):
        out = original(self, rnd, candidates, k)
        seen.append(out.tolist())
        return out

    monkeypatch.setattr(VirtualClock, "_flbench_sample", spy)
    cfg = small_config(tmp_path, "partition.scheme=flbench_dirichlet", "partition.alpha=0.5", "sampling=flbench",
                       "rounds=3", "join_ratio=0.3", "seed=5")
    out = run(cfg, progress=False)
    stream = random.Random(5)
    assert seen == [sorted(stream.sample(list(range(10)), 3)) for _ in range(3)]
    assert out.final["rounds"] == 3 and 0.0 < out.final["best_personal_acc"] <= 1.0


def test_normalization_constants_replace_the_datas_own(tmp_path):
    """data.normalize_mean/std (e.g. FL-bench's CIFAR-10 constants) reach the data every trainer normalizes with."""
    from partitions import build_federated_dataset
    from tests.conftest import small_config

    plain = small_config(tmp_path)
    fed = build_federated_dataset(plain.data, plain.partition, 0)
    assert fed.mean != (0.25,)
    cfg = small_config(tmp_path, "data.normalize_mean=[0.25]", "data.normalize_std=[0.5]")
    fed = build_federated_dataset(cfg.data, cfg.partition, 0)
    assert fed.mean == (0.25,) and fed.std == (0.5,)
    assert cfg.config_hash() != plain.config_hash()
    with pytest.raises(ValueError, match="one value per channel.*has 1, got 3"):
        bad = small_config(tmp_path, "data.normalize_mean=[0.4914, 0.4822, 0.4465]")
        build_federated_dataset(bad.data, bad.partition, 0)
    with pytest.raises(ValueError, match="normalize_std must be positive"):
        small_config(tmp_path, "data.normalize_std=[0]")
