"""SCAFFOLD and FedDyn: option II's control-variate update and FedDyn's server recursion by hand, the client
corrections as the papers define them, and bit-identical resumes of their server state."""

from __future__ import annotations

import numpy as np
import pytest

from algorithms.base import ClientJob, ClientUpdate
from harness.engine import resume, run
from harness.engine.worker import Worker
from partitions import build_federated_dataset
from tests.conftest import metrics_history, small_config


def _worker(tmp_path, algorithm, *overrides):
    cfg = small_config(tmp_path, f"algorithm.name={algorithm}", *overrides)
    data = build_federated_dataset(cfg.data, cfg.partition, cfg.seed)
    return Worker(cfg.model_dump(mode="json"), data), cfg


def test_scaffold_control_update_is_option_two(tmp_path):
    worker, cfg = _worker(tmp_path, "scaffold")
    size = worker.algo.spec.size
    rng = np.random.default_rng(0)
    x = worker.trainer.get_vector()
    c = (rng.normal(size=size) * 0.01).astype(np.float32)
    c_i = (rng.normal(size=size) * 0.01).astype(np.float32)
    job = ClientJob(0, 0, {"model": x, "control": c}, {"control": c_i})
    u = worker.train([job])[0]
    y, steps = u.upload["model"].astype(np.float64), u.steps
    expected = c_i.astype(np.float64) - c + (x.astype(np.float64) - y) / (steps * cfg.train.lr)
    np.testing.assert_allclose(u.state["control"], expected.astype(np.float32), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(u.upload["control_delta"], (expected - c_i).astype(np.float32), rtol=1e-5, atol=1e-6)
    assert steps > 0


def test_scaffold_momentum_correction_divides_by_the_effective_step(tmp_path):
    worker, cfg = _worker(tmp_path, "scaffold", "train.momentum=0.7", "algorithm.scaffold.momentum_correction=true")
    x = worker.trainer.get_vector()
    zero = np.zeros(worker.algo.spec.size, dtype=np.float32)
    u = worker.train([ClientJob(0, 0, {"model": x, "control": zero}, {"control": zero})])[0]
    y, steps = u.upload["model"].astype(np.float64), u.steps
    expected = (1 - 0.7) * (x.astype(np.float64) - y) / (steps * cfg.train.lr)  # K lr / (1 - beta)
    np.testing.assert_allclose(u.state["control"], expected.astype(np.float32), rtol=1e-5, atol=1e-8)
    plain = _worker(tmp_path / "plain", "scaffold", "train.momentum=0.7")[0]
    v = plain.train([ClientJob(0, 0, {"model": x, "control": zero}, {"control": zero})])[0]
    np.testing.assert_array_equal(v.upload["model"], u.upload["model"])  # the training itself is unchanged
    np.testing.assert_allclose(v.state["control"] * 0.3, u.state["control"], rtol=1e-5, atol=1e-8)


def test_scaffold_with_equal_controls_trains_exactly_like_fedavg(tmp_path):
    worker, _ = _worker(tmp_path / "s", "scaffold")
    fedavg, _ = _worker(tmp_path / "f", "fedavg")
    x = worker.trainer.get_vector()
    c = np.full(x.size, 0.3, dtype=np.float32)  # c - c_i = 0: no correction
    ours = worker.train([ClientJob(1, 0, {"model": x, "control": c}, {"control": c})])[0]
    plain = fedavg.train([ClientJob(1, 0, {"model": x}, {})])[0]
    np.testing.assert_array_equal(ours.upload["model"], plain.upload["model"])
    # a non-zero correction changes the trajectory
    moved = worker.train([ClientJob(1, 0, {"model": x, "control": c}, {"control": np.zeros_like(c)})])[0]
    assert not np.array_equal(moved.upload["model"], plain.upload["model"])


def test_scaffold_server_step_by_hand(tmp_path):
    worker, cfg = _worker(tmp_path, "scaffold")
    algo = worker.algo
    n = algo.spec.size
    x = np.zeros(n, dtype=np.float32)
    ups = [ClientUpdate(cid, size, {"model": np.full(n, v, np.float32), "control_delta": np.full(n, d, np.float32)},
                        {}) for cid, size, v, d in ((0, 5, 1.0, 0.2), (1, 50, 3.0, 0.6))]
    new = algo.aggregate(x, ups)
    np.testing.assert_allclose(new, 2.0)  # uniform mean of Δy (sizes ignored), lr_g = 1
    np.testing.assert_allclose(algo.c, (2 / 10) * 0.4)  # |S|/N * mean Δc, N = 10 clients
    assert algo.bytes_down({"model": x}) == 2 * 4 * n


def test_feddyn_server_state_follows_its_recursion(tmp_path):
    worker, _ = _worker(tmp_path, "feddyn", "algorithm.alpha=0.1")
    algo = worker.algo
    n = algo.spec.size
    theta = np.zeros(n, dtype=np.float32)
    h = np.zeros(n)
    rng = np.random.default_rng(1)
    for _ in range(3):
        uploads = [theta + rng.normal(size=n).astype(np.float32) for _ in range(4)]
        ups = [ClientUpdate(cid, 7, {"model": m}, {}) for cid, m in enumerate(uploads)]
        h = h - 0.1 * sum(m.astype(np.float64) - theta for m in uploads) / 10
        expected = (np.mean([m.astype(np.float64) for m in uploads], axis=0) - h / 0.1).astype(np.float32)
        theta = algo.aggregate(theta, ups)
        np.testing.assert_allclose(algo.h, h, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(theta, expected, rtol=1e-6, atol=1e-6)


def test_feddyn_client_gradient_state_update(tmp_path):
    worker, _ = _worker(tmp_path, "feddyn", "algorithm.alpha=0.5")
    prev = worker.trainer.get_vector()
    g = (np.random.default_rng(2).normal(size=prev.size) * 0.01).astype(np.float32)
    u = worker.train([ClientJob(0, 0, {"model": prev}, {"grad": g})])[0]
    expected = g.astype(np.float64) - 0.5 * (u.upload["model"].astype(np.float64) - prev)
    np.testing.assert_allclose(u.state["grad"], expected.astype(np.float32), rtol=1e-6, atol=1e-7)
    # the linear term is live: another g_i gives another local solution
    other = worker.train([ClientJob(0, 0, {"model": prev}, {"grad": -g})])[0]
    assert not np.array_equal(other.upload["model"], u.upload["model"])


@pytest.mark.parametrize("algorithm", ["scaffold", "feddyn"])
def test_server_state_survives_a_resume_bit_for_bit(tmp_path, algorithm):
    whole = run(small_config(tmp_path / "a", f"algorithm.name={algorithm}", "rounds=4"), progress=False)
    cut = small_config(tmp_path / "b", f"algorithm.name={algorithm}", "rounds=4")
    first = run(cut, progress=False, stop_after=2)
    again = resume(first.run_id, cut.checkpoint_dir, progress=False)
    assert metrics_history(again) == metrics_history(whole)
    assert whole.final["personal_acc"] > 0.15
