"""Elastic aggregation: the server's rule ζ = 1 + τ - Ω/max(Ω) on a hand-computed example (each choice of max), its
edge cases (ζ = 1 is FedAvgM with β = 0 bit for bit), the client's online sensitivity against a hand computation
(both signals, continued from the stored Ω_i) with training left FedAvg's, and the run identical in-process, on Ray,
with the disk store and after a resume."""

from __future__ import annotations

import copy
import inspect

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from algorithms import registry
from algorithms.base import AlgoContext, ClientJob, ClientUpdate
from algorithms.elastic import Elastic, ElasticParams, elastic_coefficients
from algorithms.fedopt import FedAvgM, FedAvgMParams
from protocol.params import ParamSpec
from protocol.rng import rng
from protocol.specs import TrainSpec
from tests.conftest import OneWorker, metrics_history, runs_everywhere


def tiny(**params) -> Elastic:
    """Elastic on a Linear(2, 1): the flat vector is [w_0, w_1, b]."""
    spec = ParamSpec.of(nn.Linear(2, 1))
    return Elastic(ElasticParams(**params), AlgoContext(spec, TrainSpec(), num_clients=2, num_classes=1, seed=0))


def upload(cid: int, n: int, model, omega) -> ClientUpdate:
    return ClientUpdate(cid, n, {"model": np.asarray(model, np.float32), "omega": np.asarray(omega, np.float32)}, {})


# two clients, n = 1 and 3 (p = 1/4, 3/4), from x_t = 0: Δ = [-0.5, 2, 6], Ω = [3, 2, 1]
TWO = [upload(0, 1, [1, 2, 3], [0, 2, 4]), upload(1, 3, [-1, 2, 7], [4, 2, 0])]


def test_registered_with_documented_defaults():
    cls = registry.get("elastic")
    assert cls is Elastic and cls.source and all(f.description for f in cls.Params.model_fields.values())
    assert len(inspect.getsource(inspect.getmodule(cls)).splitlines()) < 400
    assert {k: f.default for k, f in cls.Params.model_fields.items()} == {
        "tau": 0.5, "mu": 0.95, "signal": "output", "max_over": "model"}


def test_coefficients_follow_one_plus_tau_minus_normalised_sensitivity():
    np.testing.assert_allclose(elastic_coefficients(np.array([0.0, 1, 2, 4]), 4.0, 0.5), [1.5, 1.25, 1.0, 0.5])
    np.testing.assert_allclose(elastic_coefficients(np.array([0.0, 1, 2, 4]), 4.0, 0.0), [1.0, 0.75, 0.5, 0.0])
    # no sensitivity measured (scale 0): FedAvg's coefficient 1, never a division by zero
    np.testing.assert_array_equal(elastic_coefficients(np.zeros(3), np.array([0.0, 0, 2]), 0.5), [1.0, 1.0, 1.5])


@pytest.mark.parametrize(("max_over", "expected"), [
    ("model", [-0.5 * 0.5, 2 * (1.5 - 2 / 3), 6 * (1.5 - 1 / 3)]),  # max(Ω) = 3
    ("tensor", [-0.5 * 0.5, 2 * (1.5 - 2 / 3), 6 * 0.5]),  # weight: max 3; bias: max 1
    ("clients", [-0.5 * (1.5 - 3 / 4), 2 * (1.5 - 2 / 2), 6 * (1.5 - 1 / 4)]),  # element-wise max [4, 2, 4]
])
def test_server_scales_the_sample_weighted_update_elementwise(max_over, expected):
    algo = tiny(max_over=max_over)
    new = algo.aggregate(np.zeros(3, np.float32), list(reversed(TWO)))
    np.testing.assert_allclose(new, expected, rtol=1e-6)
    m = algo.round_metrics({})
    assert 0.5 - 1e-12 <= m["elastic_zeta_min"] <= m["elastic_zeta_mean"] <= m["elastic_zeta_max"] <= 1.5 + 1e-12
    assert algo.bytes_up(TWO[0]) == 4 * (3 + 3)


def test_unit_coefficients_are_fedavgm_without_momentum_bit_for_bit():
    rs = np.random.default_rng(0)
    x = rs.normal(size=3).astype(np.float32)
    fedavgm = FedAvgM(FedAvgMParams(beta=0.0), tiny().ctx)
    one = [upload(3, 7, rs.normal(size=3), rs.random(3))]
    # one client, max over clients, τ = 1: Ω/max = 1 on every element, ζ = 1
    np.testing.assert_array_equal(tiny(tau=1.0, max_over="clients").aggregate(x, one), fedavgm.aggregate(x, one))
    # no sensitivity anywhere: ζ = 1 whatever τ
    flat = [upload(u.cid, u.num_samples, u.upload["model"], np.zeros(3)) for u in TWO]
    np.testing.assert_array_equal(tiny(tau=0.3).aggregate(x, flat), fedavgm.aggregate(x, flat))
    # and ζ ≠ 1 really changes the step
    assert not np.array_equal(tiny().aggregate(x, TWO), fedavgm.aggregate(x, TWO))
    # nothing kept: the global model stays
    assert tiny().aggregate(x, []) is x


# ----- client side --------------------------------------------------------------------------------------------------
class Setup(OneWorker):
    def __init__(self, tmp_path, algo: str, *overrides: str):
        super().__init__(tmp_path, algo, "model.options.hidden=4", *overrides)

    def train(self, cid, vec, state=None, max_steps=None) -> ClientUpdate:
        return self.worker.train([ClientJob(cid, 0, {"model": vec}, dict(state or {}), max_steps)])[0]


def measure(model, params: dict, x, y, signal: str) -> dict:
    leaves = {n: t.detach().clone().requires_grad_() for n, t in params.items()}
    out = functional_call(model, leaves, (x.double(),))
    target = out.pow(2).sum(dim=1).mean() if signal == "output" else F.cross_entropy(out, y)
    return dict(zip(leaves, torch.autograd.grad(target, list(leaves.values())), strict=True))


@pytest.mark.parametrize("signal", ["output", "loss"])
def test_client_sensitivity_is_the_momentum_average_of_gradient_magnitudes(tmp_path, signal):
    s = Setup(tmp_path, "elastic", f"algorithm.signal={signal}", "algorithm.mu=0.8", "train.momentum=0")
    fedavg = Setup(tmp_path / "fedavg", "fedavg", "train.momentum=0")
    cid = next(c for c in range(s.data.num_clients) if len(s.data.train_of(c)) >= 2 * s.cfg.train.batch_size)
    stored = np.full(int(s.algo.trainable.sum()), 0.5, np.float32)
    u = s.train(cid, s.init, {"omega": stored}, max_steps=2)
    # training is FedAvg's, bit for bit: the sensitivity pass never touches the gradients that step
    np.testing.assert_array_equal(u.upload["model"], fedavg.train(cid, s.init, max_steps=2).upload["model"])
    np.testing.assert_array_equal(u.upload["omega"], u.state["omega"])
    # by hand, in float64: Ω = μ²·Ω_stored + μ(1-μ)|g(θ_0; B_0)| + (1-μ)|g(θ_1; B_1)|, θ_1 = θ_0 - lr ∇CE(θ_0; B_0)
    index = s.data.train_of(cid)
    order = index[rng(s.cfg.seed, "batches", 0, cid).permutation(len(index))]
    bs, lr, mu = s.cfg.train.batch_size, s.cfg.train.lr, 0.8
    (x0, y0), (x1, y1) = (s.trainer.tensors(order[i * bs : (i + 1) * bs]) for i in range(2))
    model, spec = copy.deepcopy(s.trainer.model).double(), s.algo.spec
    theta0 = {n: torch.tensor(s.init[spec.slot(n).start : spec.slot(n).stop], dtype=torch.float64)
              .view(spec.slot(n).shape) for n, _ in model.named_parameters()}
    ce = measure(model, theta0, x0, y0, "loss")
    theta1 = {n: theta0[n] - lr * ce[n] for n in theta0}
    g0, g1 = measure(model, theta0, x0, y0, signal), measure(model, theta1, x1, y1, signal)
    expected = np.zeros(spec.size)
    for n in theta0:
        sl = spec.slot(n)
        expected[sl.start : sl.stop] = (mu * mu * 0.5 + mu * (1 - mu) * g0[n].abs() + (1 - mu) * g1[n].abs()) \
            .reshape(-1).numpy()
    np.testing.assert_allclose(u.upload["omega"], expected[s.algo.trainable], rtol=1e-4, atol=1e-7)
    assert (u.upload["omega"] > mu * mu * 0.5).any()


# ----- end to end ---------------------------------------------------------------------------------------------------
def test_end_to_end_identical_in_process_on_ray_with_disk_store_and_after_resume(tmp_path, actors):
    local = runs_everywhere(tmp_path, "algorithm.name=elastic", "rounds=3", "train.lr=0.1",
                            actors=actors)["local"]
    history = metrics_history(local)
    assert {p.name.split(".", 1)[1] for p in (tmp_path / "store").rglob("*.npy")} == {"omega.npy"}
    assert np.isfinite(local.global_vec).all() and local.final["personal_acc"] > 0.1
    for h in history:
        assert 0.5 - 1e-9 <= h["elastic_zeta_min"] <= h["elastic_zeta_mean"] <= h["elastic_zeta_max"] <= 1.5 + 1e-9
        assert h["elastic_zeta_min"] < h["elastic_zeta_max"]  # the coefficients really differ by element
