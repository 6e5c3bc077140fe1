"""Batched multi-client training (harness.engine.batched, train.batched): the same numbers as training the
clients one by one, to float tolerance, and cohorts that depend on the round's sample alone.

Tolerance: the batched matmuls of a cohort sum in another order than one client's, so float32 results differ
in their last bits and the difference grows with each SGD step; over these runs (2 rounds, digits MLP, up to
20 local steps) every metric stays within 1e-5 relative (measured: < 1e-7), every model weight within 1e-5
absolute.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from algorithms import registry
from harness.config import ConfigError
from harness.engine import run
from harness.engine.batched import CohortTrainer, decide, opts_in
from harness.engine.parts import build_parts
from harness.engine.rounds import cohorts, waves
from harness.engine.worker import Worker, build_algorithm
from protocol.messages import ClientJob
from protocol.trainer import Phase
from tests.conftest import NEEDS_ON_DIGITS, small_config

RTOL = 1e-5
BATCHABLE = sorted(name for name in registry.names() if opts_in(registry.get(name)))


def _history(result) -> list[dict]:
    return [{k: v for k, v in row.items() if not k.startswith("wall_")} for row in result.history]


def _close(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for old, new in zip(a, b, strict=True):
        assert set(old) == set(new)
        for key, value in old.items():
            if isinstance(value, float) and math.isnan(value):
                assert math.isnan(new[key]), key
            else:
                assert new[key] == pytest.approx(value, rel=RTOL, abs=1e-9), (old.get("round"), key)


def test_the_algorithms_that_opt_in_are_those_whose_local_step_is_plain_sgd_phases():
    opted = {"fedavg", "fedprox", "fedper", "fedobp", "ditto", "local", "lgfedavg", "fedrep", "fedbabu"}
    assert opted <= set(BATCHABLE)
    # their own losses, hooks or custom loops: one client at a time
    assert not {"apfl", "scaffold", "moon", "fedala", "pfedme", "fedbn", "fedrod", "fedselect"} & set(BATCHABLE)


@pytest.mark.parametrize("algorithm", BATCHABLE)
def test_batched_training_gives_the_per_client_numbers(tmp_path, algorithm, monkeypatch):
    extra = NEEDS_ON_DIGITS.get(algorithm, ())
    common = ("rounds=2", f"algorithm.name={algorithm}", "eval_sampled=true", *extra)
    one_by_one = _history(run(small_config(tmp_path / "a", *common), progress=False))
    sizes, train = [], CohortTrainer.train
    monkeypatch.setattr(CohortTrainer, "train", lambda self, algo, jobs: sizes.append(len(jobs)) or train(
        self, algo, jobs))
    batched = _history(run(small_config(tmp_path / "b", *common, "train.batched=on", "train.cohort_size=3"),
                           progress=False))
    assert sorted(sizes[:2]) == sorted(sizes[2:]) == [2, 3]  # 5 clients a round: cohorts of 3 and 2, 2 rounds
    _close(one_by_one, batched)


def _worker_and_jobs(tmp_path, *overrides):
    cfg = small_config(tmp_path, "partition.num_clients=8", *overrides)
    data = build_parts(cfg).data
    worker = Worker(cfg.model_dump(mode="json"), data)
    _, _, init = build_algorithm(cfg, data)
    return worker, [ClientJob(c, 0, {"model": init}, {}) for c in range(8)]


@pytest.mark.parametrize("overrides", [
    (),  # clients of different sizes: fewer steps and smaller last batches are masked
    ("train.weight_decay=0.01", "train.local_epochs=2", "train.momentum=0.9"),
    ("algorithm.name=fedprox", "algorithm.mu=0.5"),
])
def test_a_cohort_trains_each_client_as_its_own_sgd(tmp_path, overrides):
    worker, jobs = _worker_and_jobs(tmp_path, "train.batched=on", *overrides)
    budgets = [None, 1, 3, None, 0, None, 2, None]  # step budgets cut some clients short, one to nothing
    jobs = [dataclasses.replace(j, max_steps=b) for j, b in zip(jobs, budgets, strict=True)]
    alone = worker.train(jobs)
    together = worker.train([dataclasses.replace(j, cohort=0) for j in jobs])
    sizes = [len(worker.data.split_of(j.cid, "train")) for j in jobs]
    assert len(set(sizes)) > 1 and any(s % 16 for s in sizes)  # the masks have work to do
    for a, b in zip(alone, together, strict=True):
        assert (a.cid, a.steps, a.samples_processed, a.finite) == (b.cid, b.steps, b.samples_processed, b.finite)
        np.testing.assert_allclose(b.upload["model"], a.upload["model"], rtol=0, atol=1e-5)
        assert b.loss == pytest.approx(a.loss, rel=RTOL) or (math.isnan(a.loss) and math.isnan(b.loss))
    epochs = worker.cfg.train.local_epochs
    for job, update, n in zip(jobs, together, sizes, strict=True):  # the budgets, by hand
        full = epochs * -(-n // 16)
        assert update.steps == (full if job.max_steps is None else min(full, job.max_steps))
    assert together[4].steps == 0 and np.array_equal(together[4].upload["model"], jobs[4].payload["model"])


def test_a_diverging_client_stops_alone_at_its_first_nonfinite_loss(tmp_path):
    worker, jobs = _worker_and_jobs(tmp_path, "train.batched=on", "train.local_epochs=3")
    bad = jobs[2].payload["model"].copy()
    bad[:50] = np.inf  # client 2 starts from a broken model: its first loss is not finite
    jobs[2] = dataclasses.replace(jobs[2], payload={"model": bad})
    alone = worker.train(jobs)
    together = worker.train([dataclasses.replace(j, cohort=0) for j in jobs])
    assert not together[2].finite and together[2].steps == 0 == alone[2].steps
    for a, b in zip(alone, together, strict=True):
        assert (a.finite, a.steps) == (b.finite, b.steps)
        if a.finite:
            np.testing.assert_allclose(b.upload["model"], a.upload["model"], rtol=0, atol=1e-5)


def test_a_cohort_step_computes_only_the_clients_that_still_have_a_batch(tmp_path):
    worker, jobs = _worker_and_jobs(tmp_path, "train.batched=on", "train.local_epochs=2")
    trainer, seen = worker.cohorts, []
    forward = trainer._forward
    trainer._forward = lambda params, x: seen.append(x.shape[0]) or forward(params, x)
    batched = worker.train([dataclasses.replace(j, cohort=0) for j in jobs])
    alone = worker.train(jobs)
    steps = sorted((u.steps for u in alone), reverse=True)
    assert len(set(steps)) > 1  # clients of unequal sizes, or the check proves nothing
    # step s computes the clients with more than s steps: no padding with finished clients
    assert seen == [sum(n > s for n in steps) for s in range(steps[0])]
    assert sum(seen) == sum(steps) < len(jobs) * steps[0]
    for a, b in zip(alone, batched, strict=True):  # and every client in job order, as trained alone
        assert (a.cid, a.steps) == (b.cid, b.steps)
        np.testing.assert_allclose(b.upload["model"], a.upload["model"], rtol=0, atol=1e-5)


def test_a_phase_without_a_start_continues_the_previous_one_and_cannot_come_first(tmp_path, monkeypatch):
    worker, jobs = _worker_and_jobs(tmp_path, "train.batched=on")
    algo = worker.algo
    start = jobs[0].payload["model"]
    names = tuple(algo.spec.head_names())
    two = [Phase(start, epochs=1, names=names), Phase(None, epochs=1, purpose="second")]
    monkeypatch.setattr(algo, "local_phases", lambda job: two)
    alone = worker.train(jobs)
    together = worker.train([dataclasses.replace(j, cohort=0) for j in jobs])
    for a, b in zip(alone, together, strict=True):
        np.testing.assert_allclose(b.upload["model"], a.upload["model"], rtol=0, atol=1e-5)
        assert a.steps == b.steps == 2 * -(-len(worker.trainer.split_of(a.cid)) // worker.cfg.train.batch_size)
    monkeypatch.setattr(algo, "local_phases", lambda job: two[::-1])
    for batch in (jobs, [dataclasses.replace(j, cohort=0) for j in jobs]):
        with pytest.raises(RuntimeError, match="first phase has no start model"):
            worker.train(batch)


def test_cohorts_depend_on_the_sample_alone_and_waves_keep_them_whole():
    rng = np.random.default_rng(0)
    cids = sorted(rng.choice(1000, size=100, replace=False).tolist())
    sizes = rng.integers(20, 400, size=1000)
    steps = {c: int(sizes[c] // 32) for c in cids}
    units = cohorts(cids, steps, 16)
    assert sorted(c for u in units for c in u) == cids and [len(u) for u in units] == [16] * 6 + [4]
    assert all(max(steps[c] for c in a) <= min(steps[c] for c in b) for a, b in zip(units, units[1:], strict=False))
    for workers in (1, 2, 3, 5):
        for wave in waves(cids, workers, sizes, units):
            for batch in wave:  # a worker's batch is a union of whole cohorts
                assert all(set(u) <= set(batch) or not set(u) & set(batch) for u in units)
    assert waves(cids, 2, sizes) == waves(cids, 2, sizes, [[c] for c in cids])  # per-client waves unchanged
    (two,) = waves(cids, 2, sizes, units)  # cohorts balanced by their data (what a cohort costs), not padded size
    load = sorted(int(sizes[b].sum()) for b in map(np.array, two))
    assert load[1] - load[0] <= max(int(sizes[u].sum()) for u in map(np.array, units))


def test_batched_runs_are_bit_identical_whatever_the_worker_count(tmp_path):
    runs = [_history(run(small_config(tmp_path / str(w), "rounds=2", "train.batched=on", "train.cohort_size=2",
                                      f"workers.num_workers={w}", "partition.num_clients=12"), progress=False))
            for w in (1, 2, 3)]
    assert runs[0] == runs[1] == runs[2]


def test_auto_batches_where_it_was_measured_to_pay_and_on_refuses_what_cannot(tmp_path):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")

    def built(*overrides):
        cfg = small_config(tmp_path, *overrides)
        algo, model, _ = build_algorithm(cfg, build_parts(cfg).data)
        return algo, model

    algo, mlp = built()
    assert decide("auto", algo, mlp, "sgd", cpu) and not decide("off", algo, mlp, "sgd", cpu)
    assert not decide("auto", algo, mlp, "adam", cpu)
    cnn = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.Linear(144, 10))
    assert not decide("auto", algo, cnn, "sgd", cpu) and decide("auto", algo, cnn, "sgd", cuda)
    apfl, model = built("algorithm.name=apfl")
    with pytest.raises(ConfigError, match="apfl does not opt in"):
        decide("on", apfl, model, "sgd", cpu)
    algo, bn = built("model.options.batchnorm=true")
    with pytest.raises(ConfigError, match="BatchNorm"):
        decide("on", algo, bn, "sgd", cpu)
    with pytest.raises(ConfigError, match="train.batched=on but"):
        build_parts(small_config(tmp_path, "train.batched=on", "train.optimizer=adam"))


def test_the_default_leaves_config_hashes_unchanged_and_yaml_on_off_reads_as_meant(tmp_path):
    default = small_config(tmp_path)
    assert default.config_hash() == small_config(tmp_path, "train.batched=off", "train.cohort_size=5").config_hash()
    assert default.config_hash() != small_config(tmp_path, "train.batched=on").config_hash()
    assert small_config(tmp_path, "train.batched=on").train.batched == "on"  # YAML 1.1 read `on` as True
    assert small_config(tmp_path, "train.batched=off").train.batched == "off"
