"""Floco, FLUTE and pFedFDA: each test pins a defining mechanism with numbers (it fails when the mechanism is
broken, not only when the code crashes); the last one runs all three end to end in-process, on Ray, with the disk
store and through a resume, and asks for identical numbers."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from algorithms import floco, flute, pfedfda
from algorithms.base import AlgoContext, ClientJob
from harness.engine import resume, run
from harness.engine.store import DiskStore
from harness.models import build_model
from protocol.params import ParamSpec
from protocol.rng import rng
from tests.conftest import OneWorker, metrics_history, small_config


class Setup(OneWorker):
    """One algorithm on one in-process worker (model + trainer), the initial global vector."""

    def __init__(self, tmp_path, algo: str, *overrides: str, data=None):
        super().__init__(tmp_path, algo, *overrides, data=data)

    def train(self, cid: int, rnd: int, global_vec: np.ndarray, state: dict | None = None, max_steps=None):
        sent = self.algo.server_prepare(cid, rnd, global_vec, dict(state or {}))
        return self.worker.train([ClientJob(cid, rnd, sent.payload, sent.state, max_steps)])[0]

    def eval_vector(self, cid: int, rnd: int, global_vec: np.ndarray, state: dict | None = None) -> np.ndarray:
        job = ClientJob(cid, rnd, {"model": global_vec}, dict(state or {}))
        self.trainer.start(job)
        return self.algo.eval_vector(job, self.trainer)

    def part(self, vec: np.ndarray, name: str) -> np.ndarray:
        s = self.spec.slot(name)
        return vec[s.start : s.stop].reshape(s.shape)

    def batches_per_epoch(self, cid: int) -> int:
        return math.ceil(len(self.data.train_of(cid)) / self.cfg.train.batch_size)


# ----- Floco -------------------------------------------------------------------------------------------------------
def in_region(points: np.ndarray, center: np.ndarray, rho: float, tol: float = 1e-9) -> np.ndarray:
    points = np.atleast_2d(points)
    return ((points >= 0).all(1) & (np.abs(points.sum(1) - 1) < tol)
            & (np.abs(points - center).sum(1) <= rho + tol))


def test_floco_simplex_helpers_on_hand_examples():
    np.testing.assert_allclose(floco.project_to_simplex([1.0, 0.2, -1.0])[0], [0.9, 0.1, 0.0], atol=1e-12)
    np.testing.assert_allclose(floco.project_to_simplex([0.5, 0.5, 0.5])[0], [1 / 3] * 3, atol=1e-12)
    np.testing.assert_allclose(floco.project_to_simplex([0.2, 0.3, 0.5])[0], [0.2, 0.3, 0.5], atol=1e-12)
    pair = np.array([[0.0, 1.0], [0.6, 0.2]])  # distance 1: mean energy 1/1^2 -> log 0
    assert floco.riesz_log_energy(pair) == pytest.approx(0.0, abs=1e-12)
    assert floco.riesz_log_energy(np.array([[0.0, 0.0], [0.3, 0.4]])) == pytest.approx(-2 * math.log(0.5))


def test_floco_region_sampler_is_uniform_and_never_leaves_the_region():
    gen = np.random.default_rng(0)
    for center in (np.full(10, 0.1), np.r_[0.5, 0.5, np.zeros(8)], np.eye(10)[3],
                   np.r_[0.393, 0.0, 0.093, 0.005, 0.001, 0.231, 0.277, 0.0, 0.0, 0.0]):
        region = floco.Region(center, 0.1, 10)
        draws = np.array([region.sample(gen) for _ in range(300)])
        assert in_region(draws, center, 0.1).all() and len(np.unique(draws, axis=0)) == 300
    whole = np.array([floco.Region(None, 0.1, 10).sample(gen) for _ in range(100)])
    assert ((whole >= 0).all() and np.allclose(whole.sum(1), 1) and (np.abs(whole - 0.1).sum(1) > 0.1).any())
    # uniform on R: both proposals give the moments of brute-force rejection from the uniform simplex
    center, rho = np.array([0.6, 0.25, 0.15, 0.0]), 0.3
    brute = gen.dirichlet(np.ones(4), size=3_000_000)
    brute = brute[np.abs(brute - center).sum(1) <= rho]
    for use_t in (True, False):
        region = floco.Region(center, rho, 4)
        region.use_t = use_t
        draws = np.array([region.sample(gen) for _ in range(20_000)])
        assert in_region(draws, center, rho).all()
        np.testing.assert_allclose(draws.mean(0), brute.mean(0), atol=3e-3)
        np.testing.assert_allclose(draws.std(0), brute.std(0), atol=3e-3)


def test_floco_placement_follows_the_gradient_signature():
    gen = np.random.default_rng(1)
    signatures = gen.normal(0, 1, (12, 40)) * np.linspace(3, 0.5, 40)  # 12 clients, distinct spreads per axis
    placement, centers = floco.fit_placement(signatures, endpoints=10)
    assert (centers >= 0).all() and np.allclose(centers.sum(1), 1.0) and len(np.unique(centers, axis=0)) > 6
    mean, comps = placement["map_mean"].astype(np.float64), placement["map_components"].astype(np.float64)
    np.testing.assert_allclose(comps @ comps.T, np.eye(10), atol=1e-5)  # 10 principal directions
    for j in range(10):  # a signature along principal direction j is placed at vertex j ...
        np.testing.assert_allclose(floco.locate(mean + 50 * comps[j], placement), np.eye(10)[j], atol=1e-6)
    np.testing.assert_allclose(floco.locate(mean, placement), np.full(10, 0.1), atol=1e-6)  # ... the mean at the center
    for i, sig in enumerate(signatures):  # the map reproduces each client's center; a twin lands on it
        np.testing.assert_allclose(floco.locate(sig, placement), centers[i], atol=1e-5)
    perm = gen.permutation(12)  # the order of the clients does not matter, a common shift neither
    np.testing.assert_allclose(floco.fit_placement(signatures[perm], 10)[1], centers[perm], atol=1e-5)
    np.testing.assert_allclose(floco.fit_placement(signatures + 3.0, 10)[1], centers, atol=1e-5)
    # the scale z is the energy minimiser of the authors' grid
    kappa = (signatures - placement["map_mean"]) @ placement["map_components"].T.astype(np.float64)
    grid = np.linspace(1e-4, 1, 1000)
    energies = [floco.riesz_log_energy(floco.project_to_simplex(kappa / z)) for z in grid]
    assert placement["map_scale"][0] == np.float32(grid[int(np.argmin(energies))])
    few, few_centers = floco.fit_placement(signatures[:4], 10)  # 4 clients: 3 directions, the rest zero
    assert (np.abs(few["map_components"]).sum(1) > 0).sum() == 3 and np.allclose(few_centers.sum(1), 1)


def test_floco_clients_train_at_points_of_their_own_region(tmp_path):
    s = Setup(tmp_path, "floco", "algorithm.tau=1", "algorithm.rho=0.2")
    m = s.algo.params.endpoints
    r0 = [s.train(c, 0, s.init) for c in (0, 1, 2, 3)]  # round tau-1: the whole simplex, signatures kept
    assert all(u.state["signature"].shape == (m * 10 * 32,) for u in r0)
    g1 = s.algo.aggregate(s.init, r0, {u.cid: {"round": 0} for u in r0})
    placement = s.algo.server_state()
    np.testing.assert_array_equal(placement["anchor"], s.init)
    np.testing.assert_array_equal(s.part(g1, "head.alpha"), np.full(m, 1 / m, dtype=np.float32))
    drawn = []
    hook = s.trainer.model.head.register_forward_pre_hook(lambda mod, _: drawn.append(mod.alpha.numpy().copy()))
    try:
        u = s.train(0, 1, g1, r0[0].state)
        center = u.state["center"].astype(np.float64)
        np.testing.assert_array_equal(u.state["center"],
                                      floco.locate(r0[0].state["signature"], placement).astype(np.float32))
        assert "signature" not in u.state and len(drawn) == s.batches_per_epoch(0)
        assert in_region(np.array(drawn, dtype=np.float64), center, 0.2, tol=1e-6).all()  # float32 buffer
        assert len(np.unique(np.array(drawn), axis=0)) == len(drawn)  # a fresh point every batch
        drawn.clear()
        # a client absent in round tau-1 replays it from theta(tau-1): the center it would have had
        late = s.train(7, 2, g1, {})
        fresh = Setup(tmp_path / "ref", "floco", "algorithm.tau=1", "algorithm.rho=0.2").train(7, 0, s.init)
        np.testing.assert_array_equal(late.state["center"],
                                      floco.locate(fresh.state["signature"], placement).astype(np.float32))
        assert in_region(np.array(drawn[-s.batches_per_epoch(7):], dtype=np.float64),
                         late.state["center"].astype(np.float64), 0.2, tol=1e-6).all()
        assert late.steps == 2 * s.batches_per_epoch(7)  # the replay is counted work
    finally:
        hook.remove()
    personal = s.eval_vector(0, 2, g1, u.state)
    np.testing.assert_array_equal(s.part(personal, "head.alpha"), u.state["center"])
    np.testing.assert_array_equal(personal[s.algo.shared], g1[s.algo.shared])  # W(beta_k) of the global simplex
    assert s.algo.bytes_down({"model": g1}) == 4 * int(s.algo.shared.sum())


def test_floco_plus_trains_a_personal_simplex_pulled_to_the_received_one(tmp_path):
    dist = {}
    for lam in (0.0, 10.0):
        s = Setup(tmp_path / f"l{lam}", "floco", "algorithm.pers_epoch=2", f"algorithm.lamda={lam}")
        u = s.train(0, 0, s.init)
        assert u.steps == 3 * s.batches_per_epoch(0)  # 1 epoch of the shared simplex + 2 personal epochs
        dist[lam] = float(np.linalg.norm((u.state["v"] - s.init)[s.algo.shared]))
        personal = s.eval_vector(0, 1, s.init, u.state)  # the personal simplex at the (not yet placed) center
        np.testing.assert_array_equal(personal[s.algo.shared], u.state["v"][s.algo.shared])
        np.testing.assert_array_equal(s.part(personal, "head.alpha"), np.full(10, 0.1, dtype=np.float32))
        assert not np.array_equal(u.state["v"][s.algo.shared], u.upload["model"][s.algo.shared])
    assert 0 < dist[10.0] < dist[0.0]


def test_floco_endpoints_size_the_model_when_build_model_sees_the_hyperparameters(tmp_path):
    s = Setup(tmp_path, "floco", "algorithm.endpoints=4")  # build_algorithm gives the probe the hyperparameters
    assert s.algo.spec.slot("head.endpoints").shape[0] == 4
    probe = floco.Floco.__new__(floco.Floco)  # what build_algorithm does
    probe.params = floco.FlocoParams(endpoints=4)
    model = probe.build_model(build_model("mlp", (1, 8, 8), 10, hidden=8))
    spec = ParamSpec.of(model)
    assert spec.slot("head.endpoints").shape == (4, 10, 8)
    algo = floco.Floco(probe.params, AlgoContext(spec, small_config(tmp_path).train, 10, 10, 0))
    assert not algo.shared[spec.slot("head.alpha").start] and algo.shared.sum() == spec.size - 4


# ----- FLUTE -------------------------------------------------------------------------------------------------------
def test_flute_regularisers_equal_their_formulas_on_a_hand_example(tmp_path):
    w = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    y = torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64)
    gram = np.array([[1, 0, 1], [0, 1, 1], [1, 1, 2]]) / math.sqrt(10)  # W W^T / ||W W^T||_F
    target = np.array([[2, -1, 0], [-1, 2, 0], [0, 0, 0]]) / 3 / math.sqrt(2)  # (I - 11^T/3) * yy^T / sqrt(2)
    np.testing.assert_allclose(flute.etf_target(y).numpy(), target, atol=1e-15)
    r1 = math.sqrt(((gram - target) ** 2).sum())
    assert float(flute.nc_term(w, y)) == pytest.approx(r1, rel=1e-12)
    feats = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64)
    s = Setup(tmp_path, "flute")
    expected = 0.25 * r1 + 0.0025 * 4.0 + 0.0005 * 30.0
    assert float(s.algo.regularisers(w, y, feats)) == pytest.approx(expected, rel=1e-12)
    assert float(s.algo.regularisers(w, y)) == pytest.approx(0.25 * r1 + 0.0025 * 4.0, rel=1e-12)
    # in training: a one-batch representation epoch records CE + lamda1 R1 + lamda2 R2 + lamda3 R3 of that batch
    u = s.train(0, 0, s.init, max_steps=1)
    job = ClientJob(0, 0, {"model": s.init}, {})
    s.trainer.start(job)
    x, t = next(iter(s.trainer.batches(job, 1, purpose="flute-rep")))
    s.trainer.set_vector(s.init)
    model = s.trainer.model
    present = torch.zeros(10)
    present[np.unique(s.data.y[s.data.train_of(0)])] = 1.0
    with torch.no_grad():
        z = model.body(x)
        total = (F.cross_entropy(model.head(z), t) + 0.25 * flute.nc_term(model.head.weight, present)
                 + 0.0025 * model.head.weight.pow(2).sum() + 0.0005 * z.pow(2).sum())
    assert u.loss == pytest.approx(float(total), rel=1e-5) and present.sum() < 10
    np.testing.assert_array_equal(u.upload["labels"], present.numpy())


def test_flute_head_epochs_leave_the_body_and_representation_epochs_train_both(tmp_path):
    s = Setup(tmp_path, "flute", "train.local_epochs=3", "train.momentum=0.9", "train.weight_decay=0.01")
    head, body = s.spec.head_mask(), ~s.spec.head_mask()
    nb = s.batches_per_epoch(0)
    heads_only = s.train(0, 0, s.init, max_steps=2 * nb).upload["model"]  # exactly the two head epochs
    np.testing.assert_array_equal(heads_only[body], s.init[body])
    assert not np.array_equal(heads_only[head], s.init[head])
    full = s.train(0, 0, s.init)
    assert full.steps == 3 * nb and not np.array_equal(full.upload["model"][body], s.init[body])
    np.testing.assert_array_equal(full.state["personal"], full.upload["model"][head])


def test_flute_classifier_step_is_one_sgd_step_on_the_mean_collapse_term(tmp_path):
    s = Setup(tmp_path, "flute", "algorithm.nc2_lr=0.5")
    ups = [s.train(c, 0, s.init) for c in (0, 1, 3)]
    before = {u.cid: u.state["personal"].copy() for u in ups}
    heads = {u.cid: s.part(u.upload["model"], "head.weight").astype(np.float64) for u in ups}
    labels = {u.cid: u.upload["labels"].astype(np.float64) for u in ups}
    g1 = s.algo.aggregate(s.init, ups)
    body = ~s.spec.head_mask()
    total = sum(u.num_samples * u.upload["model"][body].astype(np.float64) for u in ups)
    np.testing.assert_allclose(g1[body], total / sum(u.num_samples for u in ups), rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(g1[~body], s.init[~body])

    def mean_nc(cid, w):  # (1/m) R1(W_cid): the only term of the server's loss that depends on W_cid
        return float(flute.nc_term(torch.tensor(w), torch.tensor(labels[cid]))) / len(ups)

    h = 1e-6
    for u in ups:
        w = heads[u.cid]
        grad = np.zeros_like(w)  # central finite differences, independent of autograd
        for idx in np.ndindex(w.shape):
            e = np.zeros_like(w)
            e[idx] = h
            grad[idx] = (mean_nc(u.cid, w + e) - mean_nc(u.cid, w - e)) / (2 * h)
        stepped = u.state["personal"][s.algo.weight_in_personal].reshape(w.shape)
        np.testing.assert_allclose(stepped, w - 0.5 * grad, rtol=1e-5, atol=1e-7)
        assert not np.allclose(stepped, w) and mean_nc(u.cid, stepped.astype(np.float64)) < mean_nc(u.cid, w)
        bias = np.setdiff1d(np.arange(len(before[u.cid])), s.algo.weight_in_personal)
        np.testing.assert_array_equal(u.state["personal"][bias], before[u.cid][bias])  # the bias is untouched
    off = Setup(tmp_path / "off", "flute", "algorithm.nc2_lr=0")
    plain = [off.train(c, 0, off.init) for c in (0, 1)]
    kept = [u.state["personal"].copy() for u in plain]
    off.algo.aggregate(off.init, plain)
    assert all(np.array_equal(u.state["personal"], k) for u, k in zip(plain, kept, strict=True))


def test_flute_engine_commits_the_stepped_heads(tmp_path):
    store = tmp_path / "store"
    result = run(small_config(tmp_path / "run", "algorithm.name=flute", "rounds=1", "join_ratio=1.0",
                              "store.backend=disk", f"store.path={store}"), progress=False)
    assert result.history[0]["clients_kept"] == 10
    s = Setup(tmp_path / "ref", "flute")
    ups = [s.train(c, 0, s.init) for c in range(10)]
    weights = np.stack([s.part(u.upload["model"], "head.weight") for u in ups])
    stepped = flute.classifier_step(weights, np.stack([u.upload["labels"] for u in ups]), 0.5)
    states = DiskStore(store).get_many(range(10))
    for c in range(10):
        np.testing.assert_allclose(states[c]["personal"][s.algo.weight_in_personal], stepped[c].reshape(-1),
                                   rtol=1e-6, atol=1e-7)


# ----- pFedFDA -----------------------------------------------------------------------------------------------------
def test_pfedfda_gaussian_estimates_and_lda_head_equal_a_hand_computation():
    feats = np.array([[0, 0], [2, 0], [0, 2], [2, 2], [5, 5], [6, 5], [7, 8], [9, 9]], dtype=np.float64)
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 2])
    gmeans, gcov = np.array([[9.0, 9.0], [8.0, 8.0], [-1.0, 3.0]]), np.eye(2) * 3
    means, cov = pfedfda.gaussian_stats(feats, labels, gmeans, gcov, eps=1e-4, min_samples=2)
    hand_means = np.array([[1.0, 1.0], [6.0, 6.0], [-1.0, 3.0]])  # class 2 has 1 <= 2 samples: global mean
    np.testing.assert_allclose(means, hand_means, atol=1e-12)
    # within-class scatter by hand: class 0 [[4, 0], [0, 4]], class 1 [[2, 3], [3, 6]], class 2 (10, 6)(10, 6)^T
    scatter = np.array([[4 + 2 + 100, 0 + 3 + 60], [0 + 3 + 60, 4 + 6 + 36]], dtype=np.float64)
    np.testing.assert_allclose(cov, scatter / 7 + 1e-4 + np.eye(2), atol=1e-12)
    priors = pfedfda.label_priors(labels, 3, 1e-4)
    np.testing.assert_allclose(priors, (np.array([4, 3, 1]) / 8 + 1e-4) / (1 + 3e-4), atol=1e-15)
    w, b = pfedfda.lda(torch.tensor(means), torch.tensor(cov), torch.tensor(priors), 1e-4)
    reg = (1 - 1e-4) * cov + 1e-4 * np.trace(cov) / 2 * np.eye(2)
    hand_w = np.linalg.inv(reg) @ means.T
    np.testing.assert_allclose(w.numpy(), hand_w.T, rtol=1e-12)
    np.testing.assert_allclose(b.numpy(), [-0.5 * means[c] @ hand_w[:, c] + math.log(priors[c]) for c in range(3)],
                               rtol=1e-12)
    assert pfedfda.gaussian_stats(feats[:1], labels[:1], gmeans, gcov, 1e-4, 2)[1] is not gcov  # n < 2: a copy
    np.testing.assert_array_equal(pfedfda.gaussian_stats(feats[:1], labels[:1], gmeans, gcov, 1e-4, 2)[1], gcov)


def test_pfedfda_beta_prefers_local_estimates_when_the_global_ones_are_wrong():
    gen = np.random.default_rng(3)
    true = np.array([[0.0, 0.0, 4.0], [4.0, 0.0, 0.0], [0.0, 4.0, 0.0]])
    labels = np.repeat([0, 1, 2], 20)
    feats = true[labels] + gen.normal(0, 0.5, (60, 3))
    priors = pfedfda.label_priors(labels, 3, 1e-4)
    wrong = pfedfda.estimate_beta(feats, labels, true[[1, 2, 0]], np.eye(3), priors, 1e-4, 2, False,
                                  np.random.default_rng(0))
    assert wrong.shape == (2,) and ((0 <= wrong) & (wrong <= 1)).all() and wrong[0] > 0.9
    single = pfedfda.estimate_beta(feats, labels, true[[1, 2, 0]], np.eye(3), priors, 1e-4, 2, True,
                                   np.random.default_rng(0))
    assert single[0] == single[1] > 0.9
    too_few = pfedfda.estimate_beta(feats[:3], labels[:3], true, np.eye(3), priors, 1e-4, 2, False,
                                    np.random.default_rng(0))
    np.testing.assert_array_equal(too_few, [0.0, 0.0])  # no CV possible: the global estimates (authors)


class RecordingTrainer:
    """The worker's trainer, recording every split and every explicit index the algorithm asks for."""

    def __init__(self, inner):
        self.inner, self.splits, self.indices, self.batch_labels = inner, [], [], []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def split_of(self, cid, split="train"):
        self.splits.append(split)
        return self.inner.split_of(cid, split)

    def labels(self, cid, split="train"):
        self.splits.append(split)
        return self.inner.labels(cid, split)

    def batches(self, job, epochs, purpose="batches", split="train", cost=1):
        self.splits.append(split)
        for x, y in self.inner.batches(job, epochs, purpose, split, cost):
            self.batch_labels.append(y.numpy().copy())
            yield x, y

    def batches_from(self, job, index, cost=1):
        self.indices.append(np.array(index))
        yield from self.inner.batches_from(job, index, cost)

    def evaluate(self, vec, cid, split="test"):
        self.splits.append(split)
        return self.inner.evaluate(vec, cid, split)


def test_pfedfda_beta_and_the_personal_model_never_read_test_data(tmp_path):
    s = Setup(tmp_path, "pfedfda")
    for cid in (0, 1, 2):
        spy = RecordingTrainer(s.trainer)
        job = ClientJob(cid, 0, {"model": s.init}, {})
        spy.start(job)
        update = s.algo.local_update(job, spy)
        eval_job = ClientJob(cid, 1, {"model": s.init}, update.state)
        spy.start(eval_job)
        s.algo.eval_vector(eval_job, spy)
        assert set(spy.splits) == {"train"} and spy.indices
        train = set(s.data.train_of(cid).tolist())
        assert all(set(ix.tolist()) <= train for ix in spy.indices)
        assert 0.0 <= update.metrics["beta_means"] <= 1.0 and 0.0 <= update.metrics["beta_cov"] <= 1.0
    # garbage test pixels and labels: beta, the upload, the state and the personal model do not change
    broken = copy.deepcopy(s.data)
    test = broken.index["test"]
    broken.x[test] = np.random.default_rng(0).permutation(broken.x[test].reshape(-1)).reshape(broken.x[test].shape)
    broken.y[test] = (broken.y[test] + 3) % broken.num_classes
    b = Setup(tmp_path / "broken", "pfedfda", data=broken)
    ups, bad = [s.train(c, 0, s.init) for c in (0, 1, 2)], [b.train(c, 0, b.init) for c in (0, 1, 2)]
    for u, v in zip(ups, bad, strict=True):
        np.testing.assert_array_equal(u.upload["model"], v.upload["model"])
        np.testing.assert_array_equal(u.state["beta"], v.state["beta"])
    g1, g1_bad = s.algo.aggregate(s.init, ups), b.algo.aggregate(b.init, bad)
    np.testing.assert_array_equal(g1, g1_bad)
    for cid in (0, 4):
        np.testing.assert_array_equal(s.eval_vector(cid, 1, g1), b.eval_vector(cid, 1, g1))
    assert s.trainer.evaluate(s.eval_vector(0, 1, g1), 0)[0] != b.trainer.evaluate(b.eval_vector(0, 1, g1), 0)[0]


def test_pfedfda_trains_under_the_global_lda_head_and_aggregates_the_interpolated_estimates(tmp_path):
    s = Setup(tmp_path, "pfedfda", "train.local_epochs=2")
    head = s.spec.head_mask()
    spy, feats = RecordingTrainer(s.trainer), []
    hook = s.trainer.model.body.register_forward_hook(lambda m, i, out: feats.append(out.detach().double().numpy()))
    try:
        job = ClientJob(0, 0, {"model": s.init}, {})
        spy.start(job)
        u = s.algo.local_update(job, spy)
    finally:
        hook.remove()
    labels = s.data.y[s.data.train_of(0)]
    priors = pfedfda.label_priors(labels, 10, 1e-4)
    gm, gc = s.algo.stats_of(s.init)
    start = s.algo.with_head(s.init, gm, gc, priors)
    np.testing.assert_array_equal(u.upload["model"][head], start[head])  # head frozen at LDA(global, local prior)
    # the uploaded estimates: beta by CV on the LAST epoch's batch features, then the interpolation formula
    nb = s.batches_per_epoch(0)
    assert len(feats) == len(spy.batch_labels) == 2 * nb
    last_f, last_y = np.concatenate(feats[-nb:]), np.concatenate(spy.batch_labels[-nb:])
    assert sorted(last_y.tolist()) == sorted(labels.tolist())  # each training sample once
    beta = pfedfda.estimate_beta(last_f, last_y, gm, gc, priors, 1e-4, 2, False, rng(0, "pfedfda-folds", 0, 0))
    means, cov = pfedfda.gaussian_stats(last_f, last_y, gm, gc, 1e-4, 2)
    np.testing.assert_array_equal(u.state["beta"], beta.astype(np.float32))
    assert ((0 <= beta) & (beta <= 1)).all() and not np.isin(beta, (0.0, 1.0)).all()
    up_means, up_cov = s.algo.stats_of(u.upload["model"])
    np.testing.assert_allclose(up_means, beta[0] * means + (1 - beta[0]) * gm, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(up_cov, beta[1] * cov + (1 - beta[1]) * gc, rtol=1e-6, atol=1e-6)
    # the server: sample-weighted mean of the interpolated estimates; global head = LDA(global, uniform prior)
    ups = [u, s.train(1, 0, s.init)]
    g1 = s.algo.aggregate(s.init, ups)
    n = np.array([v.num_samples for v in ups], dtype=np.float64)
    mean = sum(w * s.algo.stats_of(v.upload["model"])[0] for w, v in zip(n / n.sum(), ups, strict=True))
    np.testing.assert_allclose(s.algo.stats_of(g1)[0], mean, rtol=1e-5, atol=1e-6)
    expected = s.algo.with_head(g1, *s.algo.stats_of(g1), np.full(10, 0.1))
    np.testing.assert_array_equal(g1[head], expected[head])


# ----- all three, end to end ---------------------------------------------------------------------------------------
E2E = {"floco": ("algorithm.tau=2",), "flute": ("train.local_epochs=2",), "pfedfda": ()}


@pytest.mark.parametrize("name", sorted(E2E))
def test_end_to_end_identical_in_process_on_ray_with_disk_store_and_after_resume(tmp_path, ray_session, name):
    common = (f"algorithm.name={name}", "rounds=4", *E2E[name])
    local = run(small_config(tmp_path / "local", *common), progress=False)
    on_ray = run(small_config(tmp_path / "ray", *common, "workers.use_ray=true"), progress=False)
    disk = run(small_config(tmp_path / "disk", *common, "store.backend=disk"), progress=False)
    cfg = small_config(tmp_path / "cut", *common, "tracking.enabled=true")
    first = run(cfg, progress=False, stop_after=2)
    resumed = resume(first.run_id, cfg.checkpoint_dir, progress=False)
    history = metrics_history(local)
    assert history == metrics_history(on_ray) == metrics_history(disk) == metrics_history(resumed)
    for other in (on_ray, disk, resumed):
        np.testing.assert_array_equal(local.global_vec, other.global_vec)
    assert local.final["personal_acc"] > 0.1 and np.isfinite(local.global_vec).all()
    if name == "floco":
        assert [h["floco_placed"] for h in history][:2] == [0.0, 0.0] and history[2]["floco_placed"] > 0


def test_cli_lists_the_three_algorithms_with_their_options(capsys):
    from harness.cli.main import main

    assert main(["algorithms"]) == 0
    lines = capsys.readouterr().out.splitlines()
    expected = {"floco": ("endpoints = 10", "tau = 10", "rho = 0.1", "pers_epoch = 0", "lamda = 1.0"),
                "flute": ("rep_round = 1", "lamda1 = 0.25", "lamda2 = 0.0025", "lamda3 = 0.0005", "gamma1 = 1.0",
                          "gamma2 = 1.0", "nc2_lr = 0.5"),
                "pfedfda": ("eps = 0.0001", "num_cv_folds = 2", "single_beta = False")}
    for name, options in expected.items():
        start = next(i for i, line in enumerate(lines) if line.startswith(f"{name}  —"))
        block = []
        for line in lines[start + 1 :]:
            if not line.startswith("    "):
                break
            block.append(line.strip())
        assert block[0].startswith("defaults from: ") and "logged runs" in block[0]
        listed = [line.split("    ")[0] for line in block[1:]]
        assert all(option in listed for option in options), (name, listed)
        assert all(len(line.split("    ", 1)) == 2 for line in block[1:] if line.split(" = ")[0] in str(options))
