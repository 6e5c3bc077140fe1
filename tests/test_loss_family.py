"""MOON, FedLC, FedNTD and FedProto: each test pins a defining mechanism with numbers (its loss term by hand, the
neutral setting that must give FedAvg or Local bit for bit, FedProto's prototype aggregation and bytes); the last
ones run all four end to end in-process, on Ray, with the disk store and through a resume, and ask for identical
numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from algorithms import fedlc, fedntd, fedproto, moon
from algorithms.base import ClientJob, ClientUpdate
from algorithms.functional import frozen_forward
from harness.engine import resume, run
from tests.conftest import OneWorker, metrics_history, small_config


class Setup(OneWorker):
    """One algorithm on one in-process worker (model + trainer) and the initial global vector."""

    def __init__(self, tmp_path, algo: str, *overrides: str):
        super().__init__(tmp_path, algo, *overrides)

    def train(self, cid: int, rnd: int, global_vec: np.ndarray, state: dict | None = None, max_steps=None):
        sent = self.algo.server_prepare(cid, rnd, global_vec, dict(state or {}))
        return self.worker.train([ClientJob(cid, rnd, sent.payload, sent.state, max_steps)])[0]

    def eval_vector(self, cid: int, rnd: int, global_vec: np.ndarray, state: dict | None = None) -> np.ndarray:
        job = ClientJob(cid, rnd, {"model": global_vec}, dict(state or {}))
        self.trainer.start(job)
        return self.algo.eval_vector(job, self.trainer)

    def first_batch(self, cid: int, rnd: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first training batch a client sees in a round (the trainer's own stream, purpose "batches")."""
        job = ClientJob(cid, rnd, {}, {})
        self.trainer.start(job)
        return next(iter(self.trainer.batches(job, 1)))

    def train_xy(self, cid: int, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
        job = ClientJob(cid, 0, {}, {})
        self.trainer.start(job)
        batches = list(self.trainer.batches_from(job, self.trainer.split_of(cid, split)))
        return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def softmax(a: np.ndarray) -> np.ndarray:
    e = np.exp(a - a.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def drop(result, *keys: str) -> list[dict]:
    return metrics_history(result, drop=("wall_round_time", *keys))


# ----- MOON ---------------------------------------------------------------------------------------------------------
def test_moon_contrastive_term_is_its_formula_and_falls_as_the_local_model_nears_the_global(tmp_path):
    gen = np.random.default_rng(0)
    z, z_glob, z_prev = (gen.normal(size=(6, 5)) for _ in range(3))
    tau = 0.5
    pos, neg = np.exp(cosine(z, z_glob) / tau), np.exp(cosine(z, z_prev) / tau)
    by_hand = np.mean(-np.log(pos / (pos + neg)))
    t = [torch.tensor(a, dtype=torch.float32) for a in (z, z_glob, z_prev)]
    assert float(moon.model_contrastive(*t, tau)) == pytest.approx(by_hand, rel=1e-5)
    # on hand tensors: moving z from far away to z_glob lowers the term, to its minimum at z == z_glob
    far = -z_glob + 0.3 * gen.normal(size=z_glob.shape)
    terms = [float(moon.model_contrastive(torch.tensor((1 - a) * far + a * z_glob, dtype=torch.float32), t[1], t[2],
                                          tau)) for a in (0.0, 0.5, 0.9, 1.0)]
    assert terms == sorted(terms, reverse=True) and terms[0] - terms[-1] > 1.0
    # on the model: the local model = the global one scores below log 2, the local model = its previous one above
    s = Setup(tmp_path, "moon")
    x, _ = s.first_batch(0, 0)
    prev = s.init + (0.3 * np.random.default_rng(1).normal(size=s.init.size)).astype(np.float32)
    body = s.trainer.model.body

    def term(local: np.ndarray) -> float:
        z = [frozen_forward(body, moon.body_tensors(s.trainer.tensors_of(v)), x) for v in (local, s.init,
                                                                                                         prev)]
        return float(moon.model_contrastive(*z, tau))

    assert term(s.init) < math.log(2) < term(prev)
    assert term(s.init) < term((0.5 * (s.init + prev)).astype(np.float32)) < term(prev)


def test_moon_keeps_the_local_model_and_with_mu_zero_trains_like_fedavg_bit_for_bit(tmp_path):
    prev = Setup(tmp_path / "p", "moon").init
    prev = prev + (0.1 * np.random.default_rng(2).normal(size=prev.size)).astype(np.float32)
    zero = Setup(tmp_path / "m0", "moon", "algorithm.mu=0")
    plain = Setup(tmp_path / "avg", "fedavg").train(1, 0, zero.init)
    ours = zero.train(1, 0, zero.init, {"prev": prev})  # the term is computed, with weight 0
    np.testing.assert_array_equal(ours.upload["model"], plain.upload["model"])
    np.testing.assert_array_equal(ours.state["prev"], ours.upload["model"])  # the next round's previous model
    assert ours.metrics["contrastive_loss"] > 0
    live = Setup(tmp_path / "m5", "moon").train(1, 0, zero.init, {"prev": prev})
    assert not np.array_equal(live.upload["model"], plain.upload["model"])
    first = Setup(tmp_path / "m5b", "moon").train(1, 0, zero.init)  # no previous model yet: no term
    np.testing.assert_array_equal(first.upload["model"], plain.upload["model"])
    # whole runs: μ = 0 is FedAvg
    avg = run(small_config(tmp_path / "ravg", "rounds=2"), progress=False)
    mu0 = run(small_config(tmp_path / "rmoon", "rounds=2", "algorithm.name=moon", "algorithm.mu=0"), progress=False)
    np.testing.assert_array_equal(mu0.global_vec, avg.global_vec)
    assert drop(mu0, "client_contrastive_loss_mean") == drop(avg)


# ----- FedLC --------------------------------------------------------------------------------------------------------
def test_fedlc_calibrated_loss_is_its_formula(tmp_path):
    gen = np.random.default_rng(3)
    logits = gen.normal(size=(8, 5)) * 2
    y = np.array([0, 1, 1, 2, 4, 4, 0, 2])
    counts = np.array([5, 40, 1, 0, 12])  # class 3 absent
    tau = 1.5
    cal = np.where(counts > 0, logits - tau * np.where(counts > 0, counts, 1) ** -0.25, -np.inf)
    by_hand = np.mean(-cal[np.arange(8), y] + np.log(np.exp(cal).sum(1)))
    margin = torch.as_tensor(fedlc.calibration(counts, tau))
    got = float(fedlc.calibrated_cross_entropy(torch.tensor(logits, dtype=torch.float32), torch.tensor(y), margin))
    assert got == pytest.approx(by_hand, rel=1e-5)
    assert abs(got - float(F.cross_entropy(torch.tensor(logits), torch.tensor(y)))) > 0.1
    np.testing.assert_array_equal(fedlc.calibration(counts, 0.0), 0.0)
    # the client trains on it: the first recorded loss is the calibrated loss of its first batch
    s = Setup(tmp_path, "fedlc", "algorithm.tau=1.5")
    u = s.train(0, 0, s.init, max_steps=1)
    x, yb = s.first_batch(0, 0)
    n = np.bincount(s.data.y[s.data.train_of(0)], minlength=10)
    assert (n == 0).any()  # the client lacks classes: their margin is +inf, harmless
    s.trainer.set_vector(s.init)
    with torch.no_grad():
        expected = fedlc.calibrated_cross_entropy(s.trainer.model(x), yb, torch.as_tensor(fedlc.calibration(n, 1.5)))
    assert u.loss == pytest.approx(float(expected), rel=1e-6) and u.finite


def test_fedlc_with_tau_zero_is_fedavg_bit_for_bit(tmp_path):
    avg = run(small_config(tmp_path / "avg", "rounds=2"), progress=False)
    lc0 = run(small_config(tmp_path / "lc", "rounds=2", "algorithm.name=fedlc", "algorithm.tau=0"), progress=False)
    np.testing.assert_array_equal(lc0.global_vec, avg.global_vec)
    assert drop(lc0) == drop(avg)
    lc = run(small_config(tmp_path / "lc1", "rounds=2", "algorithm.name=fedlc"), progress=False)
    assert not np.array_equal(lc.global_vec, avg.global_vec)


# ----- FedNTD -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tau", [1.0, 3.0])
def test_fedntd_not_true_distillation_is_its_formula(tau):
    gen = np.random.default_rng(4)
    f, g = gen.normal(size=(7, 6)) * 2, gen.normal(size=(7, 6)) * 2
    y = np.array([0, 5, 2, 2, 3, 1, 4])
    kl = []
    for i in range(7):
        keep = np.arange(6) != y[i]
        p, q = softmax(f[i : i + 1, keep] / tau)[0], softmax(g[i : i + 1, keep] / tau)[0]
        kl.append(np.sum(q * np.log(q / p)))
    ft, gt, yt = torch.tensor(f, dtype=torch.float32), torch.tensor(g, dtype=torch.float32), torch.tensor(y)
    got = float(fedntd.not_true_distillation(ft, gt, yt, tau))
    assert got == pytest.approx(np.mean(kl), rel=1e-5) and got > 0
    # the true class is excluded: its logits change nothing; the same model as teacher gives zero
    rows = torch.arange(7)
    ft2, gt2 = ft.clone(), gt.clone()
    ft2[rows, yt] += 10.0
    gt2[rows, yt] -= 7.0
    assert float(fedntd.not_true_distillation(ft2, gt2, yt, tau)) == pytest.approx(got, rel=1e-5)
    assert float(fedntd.not_true_distillation(ft, ft.clone(), yt, tau)) == pytest.approx(0.0, abs=1e-7)


def test_fedntd_with_beta_zero_is_fedavg_bit_for_bit(tmp_path):
    s0 = Setup(tmp_path / "b0", "fedntd", "algorithm.beta=0")
    plain = Setup(tmp_path / "avg", "fedavg").train(2, 0, s0.init)
    np.testing.assert_array_equal(s0.train(2, 0, s0.init).upload["model"], plain.upload["model"])
    live = Setup(tmp_path / "b1", "fedntd").train(2, 0, s0.init)
    assert not np.array_equal(live.upload["model"], plain.upload["model"]) and live.metrics["ntd_loss"] > 0
    avg = run(small_config(tmp_path / "ravg", "rounds=2"), progress=False)
    b0 = run(small_config(tmp_path / "rntd", "rounds=2", "algorithm.name=fedntd", "algorithm.beta=0"), progress=False)
    np.testing.assert_array_equal(b0.global_vec, avg.global_vec)
    assert drop(b0, "client_ntd_loss_mean") == drop(avg)


# ----- FedProto -----------------------------------------------------------------------------------------------------
def proto_update(cid: int, protos: np.ndarray, counts: np.ndarray) -> ClientUpdate:
    return ClientUpdate(cid, int(counts.sum()), {"protos": protos.astype(np.float32),
                                                 "counts": counts.astype(np.float32)}, {})


def test_fedproto_server_prototypes_are_the_count_weighted_means(tmp_path):
    s = Setup(tmp_path, "fedproto")
    algo, d = s.algo, s.algo.dim
    gen = np.random.default_rng(5)
    g = s.init.copy()
    before = gen.normal(size=(10, d)).astype(np.float32)  # a previous round's prototypes, class 9 known
    g[algo.means.start : algo.means.stop] = before.reshape(-1)
    g[algo.known.start + 9] = 1.0
    counts = [np.array([3, 0, 5, 1, 0, 0, 0, 0, 0, 0]), np.array([1, 2, 0, 0, 0, 0, 0, 0, 0, 0]),
              np.array([0, 0, 5, 0, 0, 0, 4, 0, 0, 0])]
    protos = [gen.normal(size=(10, d)) * (c[:, None] > 0) for c in counts]
    new = algo.aggregate(g, [proto_update(cid, p, c) for cid, p, c in zip((7, 2, 4), protos, counts, strict=True)])
    means, known = algo.prototypes_of(new)
    n = sum(c.astype(np.float64) for c in counts)
    for c in range(10):
        if n[c] > 0:
            expected = sum(cn[c] * p[c].astype(np.float32).astype(np.float64) for cn, p in zip(counts, protos,
                                                                                              strict=True)) / n[c]
            np.testing.assert_allclose(means[c], expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(means[0], (3 * protos[0][0].astype(np.float32) + protos[1][0].astype(np.float32)) / 4,
                               rtol=1e-6)
    np.testing.assert_array_equal(means[9], before[9])  # held by no client this round: kept
    np.testing.assert_array_equal(means[5], before[5])  # never known: untouched (and marked unknown)
    assert known.tolist() == [True, True, True, True, False, False, True, False, False, True]
    model_part = ~algo.shared
    np.testing.assert_array_equal(new[model_part], g[model_part])  # no model is averaged


def test_fedproto_loss_prototypes_bytes_and_local_models(tmp_path):
    gen = np.random.default_rng(6)
    z, means = gen.normal(size=(6, 4)), gen.normal(size=(3, 4))
    y, known = np.array([0, 1, 2, 2, 1, 0]), np.array([1.0, 0.0, 1.0])
    by_hand = np.sum([known[y[i]] * np.sum((z[i] - means[y[i]]) ** 2) / 4 for i in range(6)]) / 6
    zt, mt, kt = (torch.tensor(a, dtype=torch.float32) for a in (z, means, known))
    got = fedproto.prototype_loss(zt, torch.tensor(y), mt, kt)
    assert float(got) == pytest.approx(by_hand, rel=1e-5)
    # a client's prototypes: its class means of the body's features, each training sample once (2 epochs, a
    # learning rate too small to move the weights), counts = its class counts; only prototypes go up
    s = Setup(tmp_path / "tiny", "fedproto", "train.local_epochs=2", "train.lr=1e-12", "train.momentum=0")
    u = s.train(0, 0, s.init)
    assert set(u.upload) == {"protos", "counts"}
    labels = s.data.y[s.data.train_of(0)]
    np.testing.assert_array_equal(u.upload["counts"], np.bincount(labels, minlength=10))
    s.trainer.set_vector(s.init)
    x, yb = s.train_xy(0)
    with torch.no_grad():
        feats = s.trainer.model.body(x).double().numpy()
    for c in np.unique(labels):
        np.testing.assert_allclose(u.upload["protos"][c], feats[yb.numpy() == c].mean(0), rtol=1e-5, atol=1e-6)
    d, held = s.algo.dim, len(np.unique(labels))
    assert s.algo.bytes_up(u) == 4 * (d + 1) * held
    assert s.algo.bytes_down({"model": s.init}) == 0  # no global prototype yet: nothing to send
    g = s.algo.aggregate(s.init, [u])
    assert s.algo.bytes_down({"model": g}) == 4 * (d + 1) * held < 4 * (~s.algo.shared).sum() / 10
    # λ = 0: the client trains its own model exactly like Local; λ > 0 pulls it to the global prototypes
    lam0 = Setup(tmp_path / "l0", "fedproto", "algorithm.lam=0").train(1, 1, g)
    local = Setup(tmp_path / "loc", "local").train(1, 1, s.init[~s.algo.shared])
    np.testing.assert_array_equal(lam0.state["personal"], local.state["model"])
    lam1 = Setup(tmp_path / "l1", "fedproto").train(1, 1, g)
    assert not np.array_equal(lam1.state["personal"], local.state["model"]) and lam1.metrics["proto_loss"] > 0


@pytest.mark.parametrize("inference", ["prototype", "head"])
def test_fedproto_predicts_by_the_nearest_global_prototype(tmp_path, inference):
    s = Setup(tmp_path, "fedproto", f"algorithm.inference={inference}")
    ups = [s.train(c, 0, s.init) for c in range(4)]
    g = s.algo.aggregate(s.init, ups)
    vec = s.eval_vector(0, 1, g, ups[0].state)
    correct, loss, n = s.trainer.evaluate(vec, 0)
    x, y = s.train_xy(0, "test")
    means, known = (torch.as_tensor(a) for a in s.algo.prototypes_of(g))
    assert known.any()
    with torch.no_grad():
        z = s.trainer.model.body(x)
        if inference == "prototype":
            dist = ((z[:, None, :] - means[None]) ** 2).mean(2)
            pred = torch.where(known[None], dist, torch.inf).argmin(1)
        else:
            pred = s.trainer.model.head(z).argmax(1)
    assert n == len(y) and correct == int((pred == y).sum())
    assert math.isfinite(loss)


# ----- all four end to end ------------------------------------------------------------------------------------------
STORED = {"moon": {"prev.npy"}, "fedlc": set(), "fedntd": set(), "fedproto": {"personal.npy"}}


@pytest.mark.parametrize("name", sorted(STORED))
def test_identical_numbers_in_process_on_ray_with_the_disk_store_and_after_a_resume(tmp_path, ray_session, name):
    args = (f"algorithm.name={name}", "rounds=3", "join_ratio=0.6", "train.lr=0.1")
    ref = run(small_config(tmp_path / "proc", *args), progress=False)
    on_ray = run(small_config(tmp_path / "ray", *args, "workers.use_ray=true", "workers.num_workers=1"), progress=False)
    disk = run(small_config(tmp_path / "disk", *args, "store.backend=disk", f"store.path={tmp_path}/store"),
               progress=False)
    cut = small_config(tmp_path / "cut", *args)
    again = resume(run(cut, progress=False, stop_after=2).run_id, cut.checkpoint_dir, progress=False)
    for other in (on_ray, disk, again):
        assert metrics_history(other) == metrics_history(ref)
        np.testing.assert_array_equal(other.global_vec, ref.global_vec)
    assert {p.name.split(".", 1)[1] for p in (tmp_path / "store").rglob("*.npy")} == STORED[name]
    assert ref.final["personal_acc"] > 0.3  # chance is 0.1
    if name == "fedproto":
        model_bytes = 4 * int((~Setup(tmp_path / "s", name).algo.shared).sum())
        assert all(0 < h["bytes_up"] < model_bytes and 0 <= h["bytes_down"] < model_bytes for h in ref.history)
