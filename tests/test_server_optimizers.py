"""FedAvgM, FedAdagrad, FedAdam, FedYogi: the server step equals its optimizer's formula on the pseudo-gradient,
FedAvgM with beta 0 is FedAvg, and the moments survive a resume bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from algorithms import registry
from algorithms.base import AlgoContext, Algorithm, ClientUpdate, Params
from harness.engine import resume, run
from harness.models import build_model
from protocol.params import ParamSpec
from protocol.specs import TrainSpec
from tests.conftest import metrics_history, small_config


def make(name: str, **params):
    model = build_model("mlp", (1, 2, 2), 2, hidden=2)  # 4*2+2 + 2*2+2 + 2*2+2 = 22 elements
    ctx = AlgoContext(spec=ParamSpec.of(model), train=TrainSpec(), num_clients=3, num_classes=2, seed=0)
    cls = registry.get(name)
    return cls(cls.Params(**params), ctx)


def updates(x, deltas, sizes):
    return [ClientUpdate(cid, n, {"model": (x + d).astype(np.float32)}, {}) for cid, (d, n) in
            enumerate(zip(deltas, sizes, strict=True))]


def test_fedadam_step_is_adam_without_bias_correction_on_the_uniform_mean_delta():
    algo = make("fedadam", server_lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3)
    rng = np.random.default_rng(0)
    x = rng.normal(size=22).astype(np.float32)
    m, v = np.zeros(22), np.full(22, 1e-6)
    for _ in range(3):  # three rounds: the moments carry over
        deltas = [rng.normal(size=22) * 0.1 for _ in range(3)]
        ups = updates(x, deltas, [5, 50, 500])  # sizes must not matter (uniform average)
        d = np.mean([u.upload["model"].astype(np.float64) - x for u in ups], axis=0)
        m = 0.9 * m + 0.1 * d
        v = 0.99 * v + 0.01 * d * d
        expected = (x + 0.1 * m / (np.sqrt(v) + 1e-3)).astype(np.float32)
        x = algo.aggregate(x, ups)
        np.testing.assert_allclose(x, expected, rtol=0, atol=1e-7)


@pytest.mark.parametrize("name, rule", [
    ("fedadagrad", lambda v, sq: v + sq),
    ("fedyogi", lambda v, sq: v - 0.01 * sq * np.sign(v - sq)),
])
def test_second_moment_recursions(name, rule):
    algo = make(name, beta2=0.99, tau=0.01)
    x = np.zeros(22, dtype=np.float32)
    v = np.full(22, 1e-4)
    for step in range(3):
        d = np.linspace(-1, 1, 22) * (step + 1) / 10
        x = algo.aggregate(x, updates(x, [d], [1]))
        v = rule(v, (np.asarray(d, np.float32).astype(np.float64)) ** 2)
        np.testing.assert_allclose(algo.v, v, rtol=1e-6, atol=1e-12)


def test_fedavgm_with_beta_zero_is_fedavg_and_momentum_accumulates():
    rng = np.random.default_rng(1)
    x = rng.normal(size=22).astype(np.float32)
    deltas, sizes = [rng.normal(size=22) for _ in range(3)], [3, 1, 6]
    plain = Algorithm(Params(), make("fedavg").ctx)
    np.testing.assert_array_equal(make("fedavgm", beta=0.0).aggregate(x, updates(x, deltas, sizes)),
                                  plain.aggregate(x, updates(x, deltas, sizes)))
    algo = make("fedavgm", beta=0.5, server_lr=1.0)
    d = sum(n * dd for dd, n in zip(deltas, sizes, strict=True)) / 10
    x1 = algo.aggregate(x, updates(x, deltas, sizes))
    x2 = algo.aggregate(x1, updates(x1, deltas, sizes))  # the same delta again: velocity = 1.5 d
    np.testing.assert_allclose(x2, x1 + 1.5 * d, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["fedadam", "fedyogi", "fedadagrad", "fedavgm"])
def test_server_moments_survive_a_resume_bit_for_bit(tmp_path, name):
    whole = run(small_config(tmp_path / "a", f"algorithm.name={name}", "rounds=4"), progress=False)
    cut = small_config(tmp_path / "b", f"algorithm.name={name}", "rounds=4")
    first = run(cut, progress=False, stop_after=2)
    again = resume(first.run_id, cut.checkpoint_dir, progress=False)
    assert metrics_history(again) == metrics_history(whole)
    assert whole.final["personal_acc"] > 0.15  # they learn (10 classes)
