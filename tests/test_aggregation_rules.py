"""FedNova's normalised averaging and the robust rules (median, trimmed mean, Krum) by hand."""

from __future__ import annotations

import numpy as np
import pytest

from algorithms import registry
from algorithms.base import AlgoContext, Algorithm, ClientUpdate, Params
from algorithms.fednova import a_norm
from algorithms.robust import krum_select, trimmed_mean
from harness.engine import run
from harness.models import build_model
from protocol.params import ParamSpec
from protocol.specs import TrainSpec
from tests.conftest import small_config


def make(name: str, momentum: float = 0.0, **params):
    model = build_model("mlp", (1, 2, 2), 2, hidden=2)  # 22 elements
    ctx = AlgoContext(spec=ParamSpec.of(model), train=TrainSpec(momentum=momentum), num_clients=5, num_classes=2,
                      seed=0)
    cls = registry.get(name)
    return cls(cls.Params(**params), ctx)


def ups(models, sizes, steps=None):
    steps = steps or [1] * len(models)
    return [ClientUpdate(cid, n, {"model": np.asarray(m, np.float32)}, {}, steps=s)
            for cid, (m, n, s) in enumerate(zip(models, sizes, steps, strict=True))]


def test_a_norm_is_tau_for_sgd_and_the_momentum_formula_otherwise():
    assert a_norm(7, 0.0) == 7.0
    rho, tau = 0.7, 5
    # heavy-ball: the coefficient of the j-th gradient is sum_{k<=tau-1-j} rho^k; their sum
    expected = sum(sum(rho ** k for k in range(tau - j)) for j in range(tau))
    assert a_norm(tau, rho) == pytest.approx(expected)


def test_fednova_equals_fedavg_for_equal_steps_and_normalises_unequal_ones():
    x = np.zeros(22, dtype=np.float32)
    rng = np.random.default_rng(0)
    models = [rng.normal(size=22) for _ in range(3)]
    sizes = [10, 20, 30]
    fedavg = Algorithm(Params(), make("fedavg").ctx).aggregate(x, ups(models, sizes))
    np.testing.assert_allclose(make("fednova").aggregate(x, ups(models, sizes, [4, 4, 4])), fedavg, atol=1e-6)
    # unequal steps, plain SGD: d_i = (x - y_i)/tau_i, x' = x - tau_eff * sum p_i d_i
    steps = [1, 2, 4]
    p = np.array(sizes) / 60
    d = [(x - np.float32(m).astype(np.float64)) / t for m, t in zip(models, steps, strict=True)]
    tau_eff = float((p * np.array(steps)).sum())
    expected = x - tau_eff * sum(pi * di for pi, di in zip(p, d, strict=True))
    np.testing.assert_allclose(make("fednova").aggregate(x, ups(models, sizes, steps)), expected, atol=1e-6)


def test_median_and_trimmed_mean_by_hand_and_robust_to_an_outlier():
    models = [np.full(22, v) for v in (1.0, 2.0, 3.0, 4.0, 1000.0)]
    x = np.zeros(22, dtype=np.float32)
    np.testing.assert_array_equal(make("fedmedian").aggregate(x, ups(models, [1, 1, 1, 1, 99])), 3.0)
    np.testing.assert_allclose(make("fedtrimmedavg", beta=0.2).aggregate(x, ups(models, [1] * 5)), 3.0)
    np.testing.assert_allclose(trimmed_mean(np.array([[5.0], [1.0], [9.0], [2.0]]), 0.25), [3.5])
    with pytest.raises(ValueError, match="leaves nothing"):
        trimmed_mean(np.ones((2, 3)), 0.49 + 0.01)


def test_krum_keeps_the_central_models_and_drops_the_outlier():
    rng = np.random.default_rng(1)
    honest = [rng.normal(scale=0.1, size=22) for _ in range(4)]
    values = np.stack(honest + [np.full(22, 50.0)])
    assert 4 not in krum_select(values, byzantine=1, keep=3)
    x = np.zeros(22, dtype=np.float32)
    out = make("krum", byzantine=1, keep=1).aggregate(x, ups(list(values), [1] * 5))
    assert np.abs(out).max() < 1.0  # one of the honest models, not the outlier


@pytest.mark.parametrize("name", ["fednova", "fedmedian", "fedtrimmedavg", "krum"])
def test_they_learn_end_to_end(tmp_path, name):
    """Slower than FedAvg on non-IID clients (Krum keeps one client's model a round), but they learn."""
    result = run(small_config(tmp_path, f"algorithm.name={name}", "rounds=6"), progress=False)
    assert result.final["personal_acc"] > result.history[0]["personal_acc"] + 0.05


def _q_ups(models, losses):
    return [ClientUpdate(cid, 1, {"model": np.asarray(m, np.float32), "loss_before": np.array([f])}, {})
            for cid, (m, f) in enumerate(zip(models, losses, strict=True))]


def test_qffl_with_q_zero_is_the_uniform_average_and_q_one_follows_algorithm_two():
    rng = np.random.default_rng(3)
    x = rng.normal(size=22).astype(np.float32)
    models = [rng.normal(size=22) for _ in range(3)]
    losses = [0.5, 1.0, 2.0]
    np.testing.assert_allclose(make("qffl", q=0.0).aggregate(x, _q_ups(models, losses)),
                               np.mean([np.float32(m) for m in models], axis=0), atol=1e-6)
    lr = TrainSpec().lr  # L = 1/lr
    big_l = 1 / lr
    dws = [big_l * (x.astype(np.float64) - np.float32(m)) for m in models]
    delta = sum(f * dw for f, dw in zip(losses, dws, strict=True))
    h = sum(1.0 * (dw @ dw) + big_l * f for f, dw in zip(losses, dws, strict=True))  # q F^0 ||dw||^2 + L F
    np.testing.assert_allclose(make("qffl", q=1.0).aggregate(x, _q_ups(models, losses)), x - delta / h, atol=1e-6)


def test_qffl_learns_end_to_end(tmp_path):
    result = run(small_config(tmp_path, "algorithm.name=qffl", "rounds=6"), progress=False)
    assert result.final["personal_acc"] > result.history[0]["personal_acc"] + 0.05
    assert "client_loss_before_mean" in result.history[0]


def test_dpfedavg_clips_each_update_and_adds_reproducible_noise_of_the_stated_scale():
    from algorithms.dpfedavg import clip

    x = np.zeros(22, dtype=np.float32)
    big, small = np.full(22, 10.0), np.full(22, 0.01)
    algo = make("dpfedavg", clip_norm=1.0, noise_multiplier=0.0)
    out = algo.aggregate(x, ups([big, small], [1, 100]))
    expected = (clip(big, 1.0) + small) / 2  # equal weights whatever the sizes; the big one is clipped to norm 1
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert np.linalg.norm(clip(big, 1.0)) == pytest.approx(1.0)
    noisy = make("dpfedavg", clip_norm=1.0, noise_multiplier=2.0)
    notes = {0: {"round": 3}, 1: {"round": 3}}
    a = noisy.aggregate(x, ups([small, small], [1, 1]), notes)
    b = noisy.aggregate(x, ups([small, small], [1, 1]), notes)
    np.testing.assert_array_equal(a, b)  # same (seed, round): same noise
    big_sample = make("dpfedavg", clip_norm=1.0, noise_multiplier=2.0)
    noise = np.concatenate([big_sample.aggregate(x, ups([np.zeros(22)] * 2, [1, 1]), {0: {"round": r}})
                            for r in range(200)])
    assert noise.std() == pytest.approx(2.0 * 1.0 / 2, rel=0.05)  # sigma = z S / |S_t|
