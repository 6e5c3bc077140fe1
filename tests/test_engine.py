"""End-to-end runs: Ray workers, determinism across worker counts, MLflow records, learning."""

from __future__ import annotations

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from harness.engine import run
from tests.conftest import metrics_history, small_config


def _eval_history(result):
    return metrics_history(result)


def test_same_metrics_with_one_and_two_ray_workers(tmp_path, ray_session):
    results = []
    for workers in (1, 2):
        cfg = small_config(tmp_path / f"w{workers}", f"workers.num_workers={workers}", "workers.use_ray=true",
                           "rounds=3")
        results.append(run(cfg, progress=False))
    one, two = results
    assert _eval_history(one) == _eval_history(two)
    np.testing.assert_array_equal(one.global_vec, two.global_vec)


def test_ray_and_in_process_workers_agree(tmp_path, ray_session):
    a = run(small_config(tmp_path / "ray", "workers.use_ray=true", "rounds=2"), progress=False)
    b = run(small_config(tmp_path / "local", "workers.use_ray=false", "rounds=2"), progress=False)
    assert _eval_history(a) == _eval_history(b)


def test_fedavg_on_digits_rises_well_above_chance(tmp_path, ray_session):
    cfg = small_config(tmp_path, "workers.use_ray=true", "rounds=8", "partition.num_clients=20", "join_ratio=0.5",
                       "partition.alpha=1.0", "train.local_epochs=2", "eval_every=4")
    result = run(cfg, progress=False)
    evaluated = [h for h in result.history if "personal_acc" in h]
    assert [h["round"] for h in evaluated] == [4, 8]
    assert evaluated[-1]["global_acc"] > 0.75  # chance is 0.10
    assert evaluated[-1]["global_acc"] > evaluated[0]["global_acc"] - 0.02


def test_different_seeds_give_different_runs(tmp_path):
    a = run(small_config(tmp_path / "a", "rounds=1"), progress=False)
    b = run(small_config(tmp_path / "b", "rounds=1", "seed=1"), progress=False)
    assert not np.array_equal(a.global_vec, b.global_vec)


def test_mlflow_holds_params_round_metrics_tags_and_artifacts(tmp_path):
    cfg = small_config(tmp_path, "tracking.enabled=true", "rounds=3", "eval_every=1")
    result = run(cfg, progress=False)
    client = MlflowClient(cfg.tracking.uri)
    mlrun = client.get_run(result.run_id)
    assert mlrun.info.status == "FINISHED"
    assert mlrun.data.params["algorithm.name"] == "fedavg"
    assert mlrun.data.params["partition.alpha"] == "0.5"
    assert mlrun.data.tags["fedharness.config_hash"] == cfg.config_hash()
    assert "mlflow.source.git.commit" in mlrun.data.tags and "fedharness.version" in mlrun.data.tags
    history = client.get_metric_history(result.run_id, "personal_acc")
    assert [m.step for m in history] == [1, 2, 3]
    assert [m.value for m in history] == [h["personal_acc"] for h in result.history]
    for metric in ("global_acc", "personal_acc_worst10", "personal_acc_mean", "sim_time", "bytes_up_total"):
        assert len(client.get_metric_history(result.run_id, metric)) == 3
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"config.yaml", "clients_final.csv", "history.csv", "accuracy.png", "partition"} <= artifacts
    partition_files = {a.path for a in client.list_artifacts(result.run_id, "partition")}
    assert {"partition/partition_heatmap.png", "partition/partition_summary.csv"} <= partition_files


def test_evaluation_covers_every_client_with_consistent_aggregates(tmp_path):
    result = run(small_config(tmp_path, "rounds=1"), progress=False)
    df = result.clients
    assert sorted(df["client"]) == list(range(10))
    last = result.history[-1]
    assert last["personal_acc"] == pytest.approx(df["personal_correct"].sum() / df["test_samples"].sum())
    assert last["personal_acc_mean"] == pytest.approx(df["personal_acc"].mean())
    assert last["personal_acc_worst10"] == pytest.approx(df["personal_acc"].min())  # 10% of 10 clients = 1


def test_failed_run_is_marked_failed_in_mlflow(tmp_path, monkeypatch):
    from algorithms.fedavg import FedAvg

    def boom(self, global_vec, updates, notes=None):
        raise RuntimeError("aggregation exploded")

    monkeypatch.setattr(FedAvg, "aggregate", boom)
    cfg = small_config(tmp_path, "tracking.enabled=true", "rounds=2")
    with pytest.raises(RuntimeError, match="aggregation exploded"):
        run(cfg, progress=False)
    runs = MlflowClient(cfg.tracking.uri).search_runs(
        [MlflowClient(cfg.tracking.uri).get_experiment_by_name("tests").experiment_id])
    assert runs[0].info.status == "FAILED"
    assert "aggregation exploded" in runs[0].data.tags["fedharness.failure"]


def test_conv_model_gives_identical_numbers_in_process_and_on_ray(tmp_path, ray_session):
    """Grey images get a channel axis (x[:, None], zero stride): without one canonical layout torch
    chose channels-last kernels in the driver but not in Ray workers, and the floats differed."""
    gen = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 100)
    x = (gen.integers(0, 60, size=(400, 16, 16)) + 40 * y[:, None, None]).astype(np.uint8)
    np.savez(tmp_path / "grey.npz", x=x, y=y)
    common = ["data.source=arrays", f"data.root={tmp_path}/grey.npz", "model.name=avgcnn", "model.options={}",
              "rounds=2", "partition.num_clients=8", "partition.min_samples=20"]
    a = run(small_config(tmp_path / "ray", *common, "workers.use_ray=true"), progress=False)
    b = run(small_config(tmp_path / "proc", *common, "workers.use_ray=false"), progress=False)
    assert _eval_history(a) == _eval_history(b)
    np.testing.assert_array_equal(a.global_vec, b.global_vec)


def test_waves_balance_work_and_keep_client_order():
    from harness.engine.rounds import CHUNK
    from harness.engine.rounds import waves as _waves

    gen = np.random.default_rng(0)
    sizes = gen.integers(1, 500, size=1000)
    cids = sorted(gen.choice(1000, size=300, replace=False).tolist())
    waves = _waves(cids, 2, sizes)
    flat = [c for wave in waves for batch in wave for c in batch]
    assert sorted(flat) == cids and len(flat) == len(set(flat))
    for wave, start in zip(waves, range(0, 300, 2 * CHUNK), strict=True):
        assert sorted(c for batch in wave for c in batch) == cids[start : start + 2 * CHUNK]  # contiguous
        assert all(batch == sorted(batch) for batch in wave)
        loads = [int(sizes[batch].sum()) for batch in wave]
        assert max(loads) - min(loads) <= int(sizes.max())  # greedy largest-first bound


def test_global_metrics_are_nan_where_the_algorithm_has_no_global_model(tmp_path):
    """Local never averages and FedPer never averages its head: their server vector is not a
    trained model, so global_* must read NaN (not a misleading near-chance number)."""
    for name in ("local", "fedper"):
        result = run(small_config(tmp_path / name, f"algorithm.name={name}", "rounds=2"), progress=False)
        last = result.history[-1]
        assert np.isnan(last["global_acc"]) and np.isnan(last["global_loss"]) and np.isnan(last["global_acc_worst10"])
        assert np.isnan(result.final["best_global_acc"])
        assert 0.0 < last["personal_acc"] <= 1.0 and np.isfinite(result.final["best_personal_acc"])


def test_fedavg_global_metrics_equal_personal_ones_without_a_second_pass(tmp_path):
    result = run(small_config(tmp_path, "rounds=2"), progress=False)
    df = result.clients
    assert (df["global_correct"] == df["personal_correct"]).all()
    assert result.history[-1]["global_acc"] == result.history[-1]["personal_acc"]
