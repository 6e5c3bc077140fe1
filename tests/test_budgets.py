"""Compute budgets and the virtual clock: each mode keeps exactly the clients it should."""

from __future__ import annotations

import math

import numpy as np
import pytest

from harness.engine import open_run, run
from harness.engine.clock import MBPS, DeviceProfiles
from tests.conftest import small_config

LOGNORMAL = ["budget.devices.distribution=lognormal", "budget.devices.sigma=0.8",
             "budget.devices.seconds_per_sample=0.01", "budget.devices.upload_mbps=1",
             "budget.devices.download_mbps=5"]


def _expected_seconds(cfg, engine, cid: int, samples: int, nbytes: int) -> float:
    p = engine.clock.p
    return samples * p.seconds_per_sample[cid] + nbytes / p.download_bps[cid] + nbytes / p.upload_bps[cid]


def _full_work_samples(engine, cid: int, epochs: int) -> int:
    return epochs * len(engine.data.train_of(cid))


def test_fixed_mode_keeps_everyone_and_round_time_is_the_slowest_client(tmp_path):
    cfg = small_config(tmp_path, *LOGNORMAL, "rounds=2")
    engine = open_run(cfg, progress=False)
    result = engine.loop()
    log = result.client_log
    nbytes = 4 * engine.algo.spec.size
    assert set(log["outcome"]) == {"kept"}
    for rnd, group in log.groupby("round"):
        for row in group.itertuples():
            assert row.samples_processed == _full_work_samples(engine, row.client, cfg.train.local_epochs)
            expected = _expected_seconds(cfg, engine, row.client, row.samples_processed, nbytes)
            assert row.sim_seconds == pytest.approx(expected)
        assert result.history[rnd - 1]["sim_round_time"] == pytest.approx(group["sim_seconds"].max())
    assert result.history[-1]["sim_time"] == pytest.approx(sum(h["sim_round_time"] for h in result.history))
    assert result.history[0]["bytes_up"] == nbytes * result.history[0]["clients_kept"]


def test_deadline_without_partial_work_drops_exactly_the_late_clients(tmp_path):
    probe = open_run(small_config(tmp_path / "probe", *LOGNORMAL, "rounds=1"), progress=False).loop()
    times = probe.client_log["sim_seconds"].to_numpy()
    deadline = float(np.median(times))
    cfg = small_config(tmp_path / "run", *LOGNORMAL, "rounds=1", "budget.mode=deadline",
                       f"budget.deadline_s={deadline}", "budget.partial_work=false")
    result = run(cfg, progress=False)
    log = result.client_log
    late = set(log.loc[log["sim_seconds"] > deadline, "client"])
    assert late, "the median deadline must make some clients late"
    assert set(log.loc[log["outcome"] == "late", "client"]) == late
    assert set(log.loc[log["outcome"] == "kept", "client"]) == set(log["client"]) - late
    assert result.history[0]["clients_late"] == len(late)
    assert result.history[0]["sim_round_time"] == pytest.approx(deadline)


def test_deadline_with_partial_work_trains_only_the_steps_that_fit(tmp_path):
    deadline = 1.5
    cfg = small_config(tmp_path, *LOGNORMAL, "rounds=2", "budget.mode=deadline", f"budget.deadline_s={deadline}",
                       "budget.min_steps=2")
    engine = open_run(cfg, progress=False)
    result = engine.loop()
    log = result.client_log
    nbytes = 4 * engine.algo.spec.size
    p = engine.clock.p
    for row in log.itertuples():
        comm = nbytes / p.download_bps[row.client] + nbytes / p.upload_bps[row.client]
        fit = math.floor((deadline - comm) / (p.seconds_per_sample[row.client] * cfg.train.batch_size) + 1e-9)
        full_steps = cfg.train.local_epochs * math.ceil(len(engine.data.train_of(row.client)) / cfg.train.batch_size)
        if fit < 2:
            assert row.outcome == "no_time"
        else:
            assert row.outcome == "kept"
            assert row.steps == min(fit, full_steps)
            assert row.sim_seconds <= deadline + 1e-9
    assert (log["outcome"] == "no_time").any() or (log["steps"] < log["steps"].max()).any()


def test_overcommit_keeps_the_first_k_finishers(tmp_path):
    cfg = small_config(tmp_path, *LOGNORMAL, "rounds=2", "partition.num_clients=20", "clients_per_round=4",
                       "budget.mode=overcommit", "budget.overcommit=0.5")
    result = run(cfg, progress=False)
    for _, group in result.client_log.groupby("round"):
        assert len(group) == 6  # ceil(4 * 1.5) sampled and trained
        fastest = set(group.sort_values(["sim_seconds", "client"])["client"][:4])
        assert set(group.loc[group["outcome"] == "kept", "client"]) == fastest
    assert all(h["clients_kept"] == 4 for h in result.history)


def test_tier_step_budgets_cap_local_steps(tmp_path):
    tiers = ('budget.devices.tiers=[{fraction: 0.5, seconds_per_sample: 0.01, upload_mbps: 1, download_mbps: 1, '
             'max_steps: 1}, {fraction: 0.5, seconds_per_sample: 0.001, upload_mbps: 10, download_mbps: 10}]')
    cfg = small_config(tmp_path, "budget.devices.distribution=tiers", tiers, "rounds=1", "join_ratio=1.0")
    engine = open_run(cfg, progress=False)
    log = engine.loop().client_log
    tier_of = engine.clock.p.tier
    assert set(tier_of[log["client"]]) == {0, 1}
    assert (log.loc[tier_of[log["client"]] == 0, "steps"] == 1).all()
    assert (log.loc[tier_of[log["client"]] == 1, "steps"] > 1).all()


def test_device_profiles_are_deterministic_and_follow_the_spec(tmp_path):
    cfg = small_config(tmp_path, *LOGNORMAL)
    a = DeviceProfiles.draw(cfg.budget, 1000, seed=3)
    b = DeviceProfiles.draw(cfg.budget, 1000, seed=3)
    c = DeviceProfiles.draw(cfg.budget, 1000, seed=4)
    np.testing.assert_array_equal(a.seconds_per_sample, b.seconds_per_sample)
    assert not np.array_equal(a.seconds_per_sample, c.seconds_per_sample)
    assert np.median(a.seconds_per_sample) == pytest.approx(0.01, rel=0.15)
    assert np.median(a.upload_bps) == pytest.approx(1 * MBPS, rel=0.15)


def test_trace_file_profiles_and_availability(tmp_path):
    trace = tmp_path / "trace.csv"
    trace.write_text("seconds_per_sample,upload_mbps,download_mbps,availability\n0.5,1,2,0.0\n0.25,4,8,1.0\n")
    cfg = small_config(tmp_path, "budget.devices.distribution=trace", f"budget.devices.trace_file={trace}",
                       "rounds=2", "join_ratio=1.0")
    engine = open_run(cfg, progress=False)
    p = engine.clock.p
    assert set(p.seconds_per_sample) <= {0.5, 0.25}
    never_online = set(np.flatnonzero(p.availability == 0.0))
    log = engine.loop().client_log
    assert never_online and not never_online & set(log["client"])
    assert set(log["client"]) == set(np.flatnonzero(p.availability == 1.0))


def test_missing_trace_file_is_a_clear_error(tmp_path):
    cfg = small_config(tmp_path, "budget.devices.distribution=trace", "budget.devices.trace_file=/nope.csv")
    with pytest.raises(ValueError, match="trace_file '/nope.csv' does not exist"):
        open_run(cfg, progress=False)


def test_bytes_follow_what_the_algorithm_sends(tmp_path):
    local = run(small_config(tmp_path / "local", "algorithm.name=local", "rounds=1"), progress=False)
    assert local.history[0]["bytes_up"] == 0 and local.history[0]["bytes_down"] == 0
