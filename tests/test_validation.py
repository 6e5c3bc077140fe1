"""Validation data for model selection: each client's validation split is evaluated with the personalized model
(personal_val_acc), and the leaderboard's 'best' round is chosen on it, never on the test data it reports."""

from __future__ import annotations

import numpy as np
import pandas as pd

from harness.engine import run
from harness.reports.collect import best_round_accuracy
from partitions import build_federated_dataset
from tests.conftest import small_config


def test_the_personalized_model_is_evaluated_on_every_clients_validation_split(tmp_path):
    cfg = small_config(tmp_path, "partition.val_fraction=0.2", "rounds=2", "algorithm.name=fedper")
    result = run(cfg, progress=False)
    data = build_federated_dataset(cfg.data, cfg.partition, cfg.seed)
    clients = result.clients
    assert (clients["val_samples"].to_numpy() == data.sizes("val")).all() and data.sizes("val").sum() > 0
    pooled = clients["personal_val_correct"].sum() / clients["val_samples"].sum()
    assert result.history[-1]["personal_val_acc"] == pooled and 0 < pooled <= 1
    assert all("personal_val_acc" in h for h in result.history if "personal_acc" in h)
    assert not np.array_equal(clients["personal_val_acc"], clients["personal_acc"])  # another split, other numbers


def test_without_a_validation_split_nothing_is_reported_for_it(tmp_path):
    result = run(small_config(tmp_path, "rounds=1"), progress=False)
    assert "personal_val_acc" not in result.history[-1] and "val_samples" not in result.clients


def test_best_round_is_chosen_on_validation_and_reports_that_rounds_test_accuracy():
    test = pd.Series({2: 0.50, 4: 0.70, 6: 0.60})
    assert best_round_accuracy(test, pd.Series({2: 0.40, 4: 0.30, 6: 0.90})) == 0.60  # not the test maximum
    assert best_round_accuracy(test, pd.Series({2: 0.80, 4: 0.80, 6: 0.10})) == 0.50  # ties: the first round
    assert best_round_accuracy(test, pd.Series(dtype=float)) == 0.70  # no validation: the test maximum


def test_leaderboard_best_reads_validation_in_mlflow_runs(tmp_path):
    from mlflow.tracking import MlflowClient

    from harness.reports import load_runs

    cfg = small_config(tmp_path, "partition.val_fraction=0.2", "rounds=4", "tracking.enabled=true")
    result = run(cfg, progress=False)
    runs = load_runs(cfg.tracking.uri, cfg.tracking.experiment).runs
    client = MlflowClient(cfg.tracking.uri)
    val = {m.step: m.value for m in client.get_metric_history(result.run_id, "personal_val_acc")}
    test = {m.step: m.value for m in client.get_metric_history(result.run_id, "personal_acc")}
    chosen = min(val, key=lambda step: (-val[step], step))
    assert runs.loc[0, "best_selected_on"] == "validation"
    assert runs.loc[0, "best_personal_acc"] == test[chosen]
