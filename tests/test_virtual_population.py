"""Virtual client populations (partition.virtual_clients, partitions/virtual.py): N clients whose data is
drawn on demand from (seed, client id) over a real base partition (FEMNIST by writer), bounded in memory."""

from __future__ import annotations

import pickle
import tracemalloc

import numpy as np
import pytest

from harness.config import ConfigError, validate
from harness.engine import resume, run
from harness.engine.parts import build_parts
from partitions import build_federated_dataset
from partitions.stats import partition_summary, per_client_table
from partitions.virtual import DENSE_LIMIT, VirtualFederatedDataset
from tests.conftest import metrics_history, shared_data

MILLION = 1_000_000


def femnist_tree(tmp_path, n: int = MILLION, **fields) -> dict:
    tree = {
        "name": "virtual", "seed": 0, "rounds": 3, "clients_per_round": 8, "eval_clients": 24, "device": "cpu",
        "data": {"source": "femnist", "root": str(shared_data("femnist")), "invert": True},
        "partition": {"scheme": "natural", "num_clients": 300, "min_samples": 2, "virtual_clients": n,
                      "cache_dir": str(tmp_path / "cache")},
        "model": {"name": "mlp", "options": {"hidden": 32}},
        "train": {"local_epochs": 1, "batch_size": 32, "lr": 0.05},
        "algorithm": {"name": "fedavg"},
        "workers": {"num_workers": 2, "use_ray": False},
        "tracking": {"enabled": False},
        "checkpoint_dir": str(tmp_path / "ckpt"),
    }
    tree.update(fields)
    return tree


def spec_of(cfg) -> tuple:
    return cfg.data, cfg.partition, cfg.seed


@pytest.fixture(scope="module")
def population(tmp_path_factory) -> VirtualFederatedDataset:
    cfg = validate(femnist_tree(tmp_path_factory.mktemp("pop")))
    return build_federated_dataset(cfg.data, cfg.partition, cfg.seed)


def test_a_client_is_a_deterministic_resample_of_its_base_client(population, tmp_path):
    fed = population
    assert fed.num_clients == MILLION and fed.base_clients == 300 and len(fed.train_clients) == MILLION
    again = build_federated_dataset(*spec_of(validate(femnist_tree(tmp_path))))
    for cid in (0, 17, 999_999):
        b = int(fed.base_of[cid])
        for split in ("train", "test"):
            idx = fed.split_of(cid, split)
            np.testing.assert_array_equal(idx, fed.split_of(cid, split))  # repeated call
            np.testing.assert_array_equal(idx, again.split_of(cid, split))  # another build, same seed
            assert len(idx) == fed.sizes(split)[cid] == len(fed.index[split][fed.offsets[split][b]:
                                                                               fed.offsets[split][b + 1]])
            assert np.isin(idx, fed.index[split][fed.offsets[split][b]:fed.offsets[split][b + 1]]).all()
        assert not np.isin(fed.split_of(cid, "train"), fed.split_of(cid, "test")).any()
    twins = np.flatnonzero(fed.base_of[:5000] == fed.base_of[0])[:2]  # two clients of the same writer
    assert len(twins) == 2
    assert not np.array_equal(fed.split_of(int(twins[0])), fed.split_of(int(twins[1])))
    other = build_federated_dataset(*spec_of(
        validate(femnist_tree(tmp_path, seed=1))))
    assert not np.array_equal(other.base_of[:100], fed.base_of[:100])
    assert fed.digest() == again.digest() != other.digest()
    cached = build_federated_dataset(*spec_of(validate(femnist_tree(tmp_path))))  # the base from the cache
    assert cached.meta["cache"] == "hit" and cached.digest() == fed.digest()


def test_a_million_clients_cost_a_few_megabytes(population, tmp_path):
    fed = population
    base = build_federated_dataset(*spec_of(validate(femnist_tree(tmp_path, n=None))))
    tracemalloc.start()
    built = VirtualFederatedDataset.over(base, MILLION, 0)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 16 * 2**20, f"building 1,000,000 virtual clients allocated {peak / 2**20:.1f} MiB"
    assert built.base_of.nbytes == 4 * MILLION and built.train_clients.nbytes == 8 * MILLION
    shared = built.x.nbytes + built.y.nbytes + sum(a.nbytes for a in built.index.values())
    pickled = len(pickle.dumps(built)) - shared  # what Ray ships to every worker, beyond the base data
    assert pickled < 14 * 2**20
    fed.split_of(5, "train")
    assert "_split_cache" not in pickle.loads(pickle.dumps(fed)).__dict__  # the cache stays in its process
    assert built.sizes("train").shape == (MILLION,)


def test_dense_operations_are_refused_with_the_option_named(population, tmp_path):
    with pytest.raises(ValueError, match=r"label_counts over 1,000,000 virtual clients \(partition.virtual_clients\)"):
        population.label_counts()
    with pytest.raises(ValueError, match="partition.virtual_clients"):
        population.owner()
    with pytest.raises(ConfigError, match=r"evaluating all 1,000,000 clients .*set eval_clients"):
        build_parts(validate(femnist_tree(tmp_path, eval_clients=None)))
    with pytest.raises(ConfigError, match="virtual_clients needs unseen_fraction=0"):
        validate(femnist_tree(tmp_path) | {"partition": {**femnist_tree(tmp_path)["partition"],
                                                         "unseen_fraction": 0.1}})
    with pytest.raises(ConfigError, match=r"clients_per_round=2000000 .* \(partition.virtual_clients\)"):
        validate(femnist_tree(tmp_path, clients_per_round=2 * MILLION))
    small = build_federated_dataset(*spec_of(validate(femnist_tree(tmp_path, n=50))))
    counts = small.label_counts()  # small populations may have the dense view
    assert counts.shape == (50, 62) and counts.sum() == sum(small.sizes(s).sum() for s in small.index)


def test_an_algorithm_whose_dispatch_grows_with_n_is_refused_before_it_starts(tmp_path, monkeypatch):
    # APPLE sends every client's core model with each dispatch: N x d floats (here 1M x 26,000 x 4 B ~ 97 GiB)
    monkeypatch.setattr("harness.engine.parts.available_memory", lambda: 8 * 2**30)
    tree = femnist_tree(tmp_path, algorithm={"name": "apple"})
    with pytest.raises(ConfigError, match=r"apple over 1,000,000 clients needs \d+\.\d GiB per client dispatch .* "
                                          r"8\.0 GiB are available"):
        build_parts(validate(tree))
    assert not (tmp_path / "ckpt").exists()  # refused before anything was written
    parts = build_parts(validate(femnist_tree(tmp_path, n=300, algorithm={"name": "apple"})))
    assert parts.algo.server_bytes() == 4 * 300 * parts.global_vec.size  # 300 cores fit


def test_partition_report_summarizes_a_bounded_sample(population):
    summary = partition_summary(population)
    assert summary["clients"] == MILLION and summary["summarized_clients"] == DENSE_LIMIT
    assert summary["samples"] == int(population.sizes("train").sum() + population.sizes("test").sum())
    table = per_client_table(population)
    assert len(table) == DENSE_LIMIT and (table["base_client"] == population.base_of[table["client"]]).all()


def test_default_specs_keep_their_identity(tmp_path):
    """virtual_clients and eval_clients unset: the config hash and the partition cache key are the ones recorded
    before the options existed (main at 2d6972d); a virtual population shares its base partition's cache entry."""
    from partitions import load_source, partition_key

    assert validate({}).config_hash() == "159a6845d1a6a9b8"
    cfg = validate(femnist_tree(tmp_path, n=None))
    data = load_source(cfg.data)
    assert partition_key(data, cfg.partition, 0)[0][:24] == "859efd53c72aa3578edd056e"
    assert partition_key(data, validate(femnist_tree(tmp_path)).partition, 0)[0][:24] == "859efd53c72aa3578edd056e"
    assert "virtual_clients" not in cfg.partition.identity_dump()


def test_fedavg_over_a_million_clients_end_to_end_and_resumes_bit_identically(tmp_path):
    cfg = validate(femnist_tree(tmp_path / "a", keep_checkpoint=True))
    full = run(cfg, progress=False)
    assert [h["clients_kept"] for h in full.history] == [8.0] * 3
    assert 0 < full.final["personal_acc"] < 1 and np.isfinite(full.final["train_loss"])
    assert len(full.clients) == 24 and full.clients["client"].max() < MILLION  # the fixed evaluation sample
    assert np.isfinite(full.global_vec).all()
    cut = run(validate(femnist_tree(tmp_path / "b")), progress=False, stop_after=2)
    resumed = resume(cut.run_id, checkpoint_dir=str(tmp_path / "b" / "ckpt"), progress=False)
    assert metrics_history(resumed) == metrics_history(full)
    np.testing.assert_array_equal(resumed.global_vec, full.global_vec)


def test_fedper_keeps_state_only_for_participants_on_disk(tmp_path):
    """Tracked in MLflow too: the run's partition artifacts cover a bounded sample of the million clients."""
    store = tmp_path / "store"
    cfg = validate(femnist_tree(tmp_path, algorithm={"name": "fedper"}, rounds=2,
                                store={"backend": "disk", "path": str(store)}, keep_checkpoint=True,
                                tracking={"uri": f"sqlite:///{tmp_path}/mlflow.db", "experiment": "virtual"}))
    result = run(cfg, progress=False)
    from mlflow.tracking import MlflowClient

    tags = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_run(result.run_id).data.tags
    assert tags["partition.clients"] == str(MILLION) and tags["partition.summarized_clients"] == str(DENSE_LIMIT)
    participants = set(result.client_log["client"].astype(int))
    files = list(store.glob("[0-9][0-9][0-9]/*.npy"))
    assert 0 < len(participants) <= 16
    assert {int(f.name.split(".")[0]) for f in files} == participants  # one head per participant, nothing else


def test_same_metrics_with_one_and_two_ray_workers(tmp_path, ray_session):
    out = []
    for workers in (1, 2):
        cfg = validate(femnist_tree(tmp_path / f"w{workers}", rounds=2,
                                    workers={"num_workers": workers, "use_ray": True}))
        out.append(run(cfg, progress=False))
    assert len(out[0].history) == 2 and metrics_history(out[0]) == metrics_history(out[1])
    np.testing.assert_array_equal(out[0].global_vec, out[1].global_vec)
