"""Every partition scheme deals exactly the examples it dealt before the scheme registry.

Runs started before the redesign must stay valid, so for each scheme and a few parameter
settings on real data (MNIST through the `mnist` source, scikit-learn's digits, FEMNIST's
writers) tests/golden/partitions.json holds sha256 digests of the resulting index arrays and
offsets of every split, the training clients and the metadata, recorded with the code as it was
before the registry (commit 042f756, rng imported from protocol). The test recomputes them and
compares exactly. It also compares the partition cache key, which is what keeps cache entries
and config hashes of those runs the same.

    HF_HUB_OFFLINE=1 .venv/bin/python -m tests.test_partition_golden   # re-records (don't, casually)
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from partitions import partition_data
from partitions.federated import ArrayData, FederatedDataset
from partitions.sources import load_source
from partitions.spec import DataSpec, PartitionSpec
from tests.conftest import SHARED_DATA, shared_data

GOLDEN = Path(__file__).resolve().parent / "golden" / "partitions.json"

# name -> (data set, seed, partition fields); cache_dir is always None
CASES: dict[str, tuple[str, int, dict]] = {
    "iid-mnist-100": ("mnist", 0, {"scheme": "iid", "num_clients": 100}),
    "iid-digits-10-val": ("digits", 3, {"scheme": "iid", "num_clients": 10, "val_fraction": 0.1}),
    "dirichlet-mnist-0.1": ("mnist", 0, {"scheme": "dirichlet", "num_clients": 100, "alpha": 0.1}),
    "dirichlet-mnist-0.5-balance": ("mnist", 1, {"scheme": "dirichlet", "num_clients": 100, "alpha": 0.5,
                                                 "dirichlet_balance": True}),
    "dirichlet-mnist-repair": ("mnist", 1, {"scheme": "dirichlet", "num_clients": 1000, "alpha": 0.1,
                                            "min_samples": 20}),
    "dirichlet-mnist-tiny-alpha": ("mnist", 2, {"scheme": "dirichlet", "num_clients": 200, "alpha": 1e-4,
                                               "min_samples": 5}),
    "dirichlet-digits-unseen": ("digits", 0, {"scheme": "dirichlet", "num_clients": 20, "alpha": 0.3,
                                              "unseen_fraction": 0.2, "val_fraction": 0.1, "test_fraction": 0.2}),
    "pathological-mnist-cyclic": ("mnist", 0, {"scheme": "pathological", "num_clients": 50,
                                               "classes_per_client": 2}),
    "pathological-mnist-random": ("mnist", 4, {"scheme": "pathological", "num_clients": 70, "classes_per_client": 3,
                                               "class_assignment": "random"}),
    "pathological-digits-1": ("digits", 0, {"scheme": "pathological", "num_clients": 30, "classes_per_client": 1,
                                            "min_samples": 5}),
    "shards-mnist-2": ("mnist", 0, {"scheme": "shards", "num_clients": 100, "shards_per_client": 2}),
    "shards-digits-3": ("digits", 5, {"scheme": "shards", "num_clients": 15, "shards_per_client": 3}),
    "quantity-mnist-lognormal": ("mnist", 0, {"scheme": "quantity", "num_clients": 100, "quantity_sigma": 1.5,
                                              "min_samples": 20}),
    "quantity-mnist-powerlaw": ("mnist", 1, {"scheme": "quantity", "num_clients": 100, "min_samples": 20,
                                             "quantity_distribution": "powerlaw", "powerlaw_exponent": 1.0}),
    "quantity-digits": ("digits", 0, {"scheme": "quantity", "num_clients": 20}),
    "natural-femnist-50": ("femnist", 1, {"scheme": "natural", "num_clients": 50, "min_samples": 20}),
    "natural-digits-groups": ("digits-groups", 0, {"scheme": "natural", "num_clients": 30, "unseen_fraction": 0.1}),
    "shift-digits-rotation-noise": ("digits", 0, {"scheme": "iid", "num_clients": 10,
                                                  "feature_shift": {"kind": "rotation+noise", "max_degrees": 60}}),
    "shift-digits-levels": ("digits", 2, {"scheme": "dirichlet", "num_clients": 12, "alpha": 1.0,
                                          "feature_shift": {"kind": "rotation", "levels": 4}}),
}


def load_data(name: str, cache_dir: str) -> ArrayData:
    """The data set of a case; `digits-groups` gives digits synthetic writers (45 groups of ~40)."""
    if name == "mnist":
        return load_source(DataSpec(source="mnist", root=str(shared_data("mnist")), split="train",
                                    cache_dir=cache_dir))
    if name == "femnist":
        return load_source(DataSpec(source="arrays", root=str(shared_data("femnist") / "femnist_300writers.npz"),
                                    group_column="writer", invert=True, cache_dir=cache_dir))
    data = load_source(DataSpec(source="digits"))
    if name == "digits-groups":
        groups = (np.arange(len(data.y)) * 7919) % 45
        data = ArrayData(data.x, data.y, data.num_classes, data.mean, data.std, data.name, groups)
    return data


def sha(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def fingerprint(fed: FederatedDataset, shifted: bool) -> dict:
    """What a run sees of a partition: every split's CSR arrays, who trains, and the metadata."""
    meta = {k: v for k, v in fed.meta.items() if k not in ("cache", "cache_key")}
    out = {"splits": {s: sha(fed.index[s], fed.offsets[s]) for s in fed.index},
           "train_clients": sha(fed.train_clients),
           "meta": hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest(),
           "meta_keys": list(meta), "assigned_samples": fed.meta["assigned_samples"],
           "cache_key": fed.meta["cache_key"]}
    if shifted:
        out["x"] = sha(fed.x)
    return out


def compute(name: str, loaded: dict[str, ArrayData], cache_dir: str) -> dict:
    """Fingerprint of one case (a data set is loaded once into `loaded`)."""
    data_name, seed, fields = CASES[name]
    if data_name not in loaded:
        loaded[data_name] = load_data(data_name, cache_dir)
    part = PartitionSpec(**{**fields, "cache_dir": None})
    return fingerprint(partition_data(loaded[data_name], part, seed), "feature_shift" in fields)


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    """name -> fingerprint, each case computed once for both tests."""
    loaded: dict[str, ArrayData] = {}
    done: dict[str, dict] = {}
    cache_dir = str(tmp_path_factory.mktemp("golden-data"))

    def get(name: str) -> dict:
        if name not in done:
            done[name] = compute(name, loaded, cache_dir)
        return done[name]

    return get


@pytest.fixture(scope="module")
def golden() -> dict:
    return json.loads(GOLDEN.read_text())


def test_golden_file_covers_every_case(golden):
    assert set(golden) == set(CASES)
    assert {fields["scheme"] for _, _, fields in CASES.values()} == {"iid", "dirichlet", "pathological", "shards",
                                                                     "quantity", "natural"}


@pytest.mark.parametrize("name", list(CASES))
def test_partition_is_bit_identical_to_before_the_registry(name, golden, result):
    got = result(name)
    want = golden[name]
    assert {k: v for k, v in got.items() if k != "cache_key"} == {k: v for k, v in want.items() if k != "cache_key"}


@pytest.mark.parametrize("name", list(CASES))
def test_partition_cache_key_is_unchanged(name, golden, result):
    """Same key = same identity dump of the spec: old cache entries still hit, config hashes can stay."""
    assert result(name)["cache_key"] == golden[name]["cache_key"]


def main() -> int:
    if not SHARED_DATA.exists():
        print(f"{SHARED_DATA} is absent", file=sys.stderr)
        return 1
    loaded: dict[str, ArrayData] = {}
    with tempfile.TemporaryDirectory() as tmp:
        out = {name: compute(name, loaded, tmp) for name in CASES}
    GOLDEN.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN} ({len(out)} cases)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
