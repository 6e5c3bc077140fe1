"""GPFL, FedDBE and FedAS (representation-feature algorithms): each test pins a defining mechanism with
numbers (hand computations on a tiny MLP), then the algorithm runs end to end with identical numbers in-process, on
Ray, with the disk store, with one worker and after a resume."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from algorithms.base import ClientJob, ClientUpdate
from algorithms.fedas import fisher_weights
from algorithms.gpfl import conditional_inputs
from protocol.rng import rng
from tests.conftest import OneWorker, runs_everywhere


class Setup(OneWorker):
    """One algorithm on digits (a tiny MLP) with one in-process worker and the initial global vector."""

    def __init__(self, tmp_path, algo: str, *overrides: str):
        super().__init__(tmp_path, algo, "model.options.hidden=4", *overrides)

    def train(self, cid: int, rnd: int, global_vec: np.ndarray, state=None, max_steps=None) -> ClientUpdate:
        sent = self.algo.server_prepare(cid, rnd, global_vec, dict(state or {}))
        return self.worker.train([ClientJob(cid, rnd, sent.payload, sent.state, max_steps)])[0]

    def first_batch(self, purpose: str, cid: int, rnd: int):
        index = self.data.train_of(cid)
        order = index[rng(self.cfg.seed, purpose, rnd, cid).permutation(len(index))]
        return self.trainer.tensors(order[: self.batch])

    def put(self, vec: np.ndarray, name: str, value) -> np.ndarray:
        out = vec.copy()
        slot = self.algo.spec.slot(name)
        out[slot.start : slot.stop] = np.asarray(value, dtype=np.float32).reshape(-1)
        return out

    def get(self, vec: np.ndarray, name: str) -> np.ndarray:
        slot = self.algo.spec.slot(name)
        return vec[slot.start : slot.stop]


# ----- FedDBE -------------------------------------------------------------------------------------------------------
def test_feddbe_one_step_is_ce_with_prbm_plus_kappa_mean_regulariser(tmp_path):
    s = Setup(tmp_path, "feddbe", "train.momentum=0")
    cid, rnd, d = 2, 5, s.algo.mean_slot.size
    g = np.linspace(-0.5, 0.5, d, dtype=np.float32)
    prbm = np.full(d, 0.1, dtype=np.float32)
    glob = s.put(s.put(s.init, "dbe_mean", g), "dbe_ready", [1.0])
    update = s.train(cid, rnd, glob, {"personal": prbm}, max_steps=1)
    # by hand: the model with the client's PRBM, one SGD step on CE(head(z + prbm)) + κ · mean ½ (μ mean(z) − g)²
    model = copy.deepcopy(s.trainer.model)
    s.trainer.set_vector(s.put(glob, "prbm", prbm))
    model.load_state_dict(s.trainer.model.state_dict())
    x, y = s.first_batch("batches", cid, rnd)
    z = model.body(x)
    running = 1.0 * z.mean(0)  # μ = 1, restarted at 0 each round
    loss = F.cross_entropy(model.head(z + model.prbm), y) + 50.0 * (0.5 * (running - torch.tensor(g)) ** 2).mean()
    loss.backward()
    lr = s.cfg.train.lr
    for name, p in model.named_parameters():
        np.testing.assert_allclose(s.get(update.upload["model"], name), (p - lr * p.grad).detach().reshape(-1),
                                   rtol=1e-5, atol=1e-7, err_msg=name)
    np.testing.assert_allclose(update.state["personal"], (model.prbm - lr * model.prbm.grad).detach(), atol=1e-7)
    assert not np.array_equal(update.state["personal"], prbm)  # the PRBM was trained ...
    assert "mean" not in update.upload  # ... and after the initialization round no statistics travel


def test_feddbe_initialization_round_then_fixed_sample_weighted_global_mean_and_local_prbm(tmp_path):
    s = Setup(tmp_path, "feddbe")
    d = s.algo.mean_slot.size
    first = [s.train(c, 1, s.init) for c in (1, 4)]
    for u, c in zip(first, (1, 4), strict=True):  # plain FedAvg: PRBM untouched, mean over every training sample
        np.testing.assert_array_equal(u.state["personal"], np.zeros(d, dtype=np.float32))
        assert u.upload["count"][0] == len(s.data.train_of(c)) and u.upload["mean"].shape == (d,)
    new = s.algo.aggregate(s.init, first)
    n = [float(u.upload["count"][0]) for u in first]
    expected = (n[0] * first[0].upload["mean"].astype(np.float64) + n[1] * first[1].upload["mean"]) / sum(n)
    np.testing.assert_allclose(s.get(new, "dbe_mean"), expected, rtol=1e-6)
    assert s.get(new, "dbe_ready")[0] == 1.0
    np.testing.assert_array_equal(s.get(new, "prbm"), np.zeros(d))
    # later rounds: the PRBM is trained but stays on the client (never averaged), the global mean never moves
    later = [s.train(c, 2, new, u.state) for c, u in zip((1, 4), first, strict=True)]
    assert all(np.abs(u.state["personal"]).sum() > 0 for u in later)
    after = s.algo.aggregate(new, later + [s.train(7, 2, new)])
    np.testing.assert_array_equal(s.get(after, "dbe_mean"), s.get(new, "dbe_mean"))
    np.testing.assert_array_equal(s.get(after, "prbm"), np.zeros(d))
    # evaluation: the personal model adds the client's PRBM, the global one does not
    vec = s.algo.eval_vector(ClientJob(1, 3, {"model": after}, later[0].state), s.trainer)
    np.testing.assert_array_equal(s.get(vec, "prbm"), later[0].state["personal"])


def test_feddbe_end_to_end_identical_everywhere(tmp_path, actors):
    out = runs_everywhere(tmp_path, "algorithm.name=feddbe", "rounds=3", "eval_every=1", actors=actors,
                          one_worker=False)
    assert out["local"].final["client_mr_loss_mean"] >= 0.0


# ----- GPFL ---------------------------------------------------------------------------------------------------------
def test_gpfl_conditional_valve_follows_its_gating_formula(tmp_path):
    s = Setup(tmp_path, "gpfl")
    cov = s.trainer.model.cov
    torch.manual_seed(0)
    with torch.no_grad():
        for p in cov.parameters():
            p.normal_()
    d = cov.gamma[0].in_features
    z, c = torch.randn(5, d), torch.randn(d)

    def branch(seq, v):  # LayerNorm(ReLU(W v + b)) by hand
        h = np.maximum(seq[0].weight.detach().numpy() @ v + seq[0].bias.detach().numpy(), 0.0)
        h = (h - h.mean()) / np.sqrt(h.var() + seq[2].eps)
        return h * seq[2].weight.detach().numpy() + seq[2].bias.detach().numpy()

    gamma, beta = branch(cov.gamma, c.numpy()), branch(cov.beta, c.numpy())
    expected = np.maximum(z.numpy() * (gamma + 1.0) + beta, 0.0)
    np.testing.assert_allclose(cov(z, c).detach().numpy(), expected, rtol=1e-5, atol=1e-6)


def test_gpfl_conditional_inputs_and_personal_route(tmp_path):
    s = Setup(tmp_path, "gpfl")
    table = np.arange(6, dtype=np.float32).reshape(3, 2)
    g, p = conditional_inputs(table, np.array([0.5, 0.5, 0.0]))
    np.testing.assert_allclose(g, [2.0, 3.0])
    np.testing.assert_allclose(p, [1.0, 2.0])
    cid = 3
    vec = s.algo.eval_vector(ClientJob(cid, 1, {"model": s.init}, {}), s.trainer)
    counts = np.bincount(s.data.y[s.data.train_of(cid)], minlength=10).astype(np.float64)
    expected = (counts / counts.sum()) @ s.get(s.init, "gce.weight").reshape(10, -1).astype(np.float64)
    np.testing.assert_allclose(s.get(vec, "cond"), expected, rtol=1e-6)
    s.trainer.set_vector(vec)
    model = s.trainer.model.eval()
    x, _ = s.trainer.tensors(s.data.split_of(cid, "test"))
    with torch.no_grad():  # the personalized prediction is head(CoV(body(x), p))
        np.testing.assert_allclose(model(x).numpy(), model.head(model.cov(model.body(x), torch.tensor(
            expected, dtype=torch.float32))).numpy(), rtol=1e-6)


def test_gpfl_one_step_by_hand(tmp_path):
    s = Setup(tmp_path, "gpfl", "train.momentum=0")
    cid, rnd = 1, 2
    update = s.train(cid, rnd, s.init, max_steps=1)
    vec = s.algo.eval_vector(ClientJob(cid, rnd, {"model": s.init}, {}), s.trainer)
    model = copy.deepcopy(s.trainer.model)
    s.trainer.set_vector(vec)
    model.load_state_dict(s.trainer.model.state_dict())
    table = model.gce.weight.detach().clone()
    x, y = s.first_batch("batches", cid, rnd)
    z = model.body(x)
    f_g = model.cov(z, table.mean(0))
    cos = F.normalize(f_g) @ F.normalize(model.gce.weight).T
    loss = F.cross_entropy(model.head(model.cov(z, model.cond)), y) + F.cross_entropy(cos, y) \
        + 0.01 * torch.sqrt(((f_g - table[y]) ** 2).sum())
    loss.backward()
    lr = s.cfg.train.lr
    for name, p in model.named_parameters():
        decay = 0.1 * p if name.startswith(("gce.", "cov.")) else 0.0  # μ on GCE and CoV only
        np.testing.assert_allclose(s.get(update.upload["model"], name), (p - lr * (p.grad + decay)).detach()
                                   .reshape(-1), rtol=1e-5, atol=1e-7, err_msg=name)
    head = s.algo.spec.head_mask()
    np.testing.assert_array_equal(s.algo.aggregate(s.init, [update])[head], s.init[head])  # the head stays local


# ----- FedAS --------------------------------------------------------------------------------------------------------
def test_fedas_synchronisation_weights_are_proportional_to_fisher_traces(tmp_path):
    s = Setup(tmp_path, "fedas")
    a, b = np.full(s.init.size, 1.0, dtype=np.float32), np.full(s.init.size, 5.0, dtype=np.float32)
    ups = [ClientUpdate(4, 10, {"model": b, "fisher": np.array([3.0])}, {}),
           ClientUpdate(2, 90, {"model": a, "fisher": np.array([1.0])}, {})]
    np.testing.assert_allclose(s.algo.aggregate(s.init, ups), 0.25 * 1.0 + 0.75 * 5.0)  # not 0.9 / 0.1 by samples
    np.testing.assert_allclose(fisher_weights([0.0, 0.0], [1, 3]), [0.25, 0.75])


def test_fedas_fisher_trace_by_hand(tmp_path):
    s = Setup(tmp_path, "fedas")
    cid = 5
    update = s.train(cid, 1, s.init)
    s.trainer.set_vector(update.upload["model"])
    model = s.trainer.model.eval()
    index = s.data.train_of(cid)
    total = 0.0
    for start in range(0, len(index), s.batch):
        x, y = s.trainer.tensors(index[start : start + s.batch])
        grads = torch.autograd.grad(-F.log_softmax(model(x), 1)[torch.arange(len(y)), y].mean(),
                                    list(model.parameters()))
        total += sum(float((g.double() ** 2).sum()) for g in grads)
    assert update.upload["fisher"][0] == pytest.approx(total, rel=1e-9)
    assert update.metrics["fisher_trace"] == pytest.approx(total, rel=1e-9)


def test_fedas_aligns_the_received_body_to_the_clients_own_prototypes(tmp_path):
    s = Setup(tmp_path, "fedas")
    cid, rnd = 6, 3
    own = s.train(cid, 1, s.init).state["model"]
    received = s.init + np.float32(0.01)
    index = s.data.train_of(cid)
    steps = -(-len(index) // s.batch)  # the budget ends with the alignment epoch: the upload IS the aligned model
    update = s.train(cid, rnd, received, {"model": own}, max_steps=steps)
    # by hand: prototypes of the client's OWN model, then plain SGD (lr 0.01) on the received body, own head
    s.trainer.set_vector(own)
    model = copy.deepcopy(s.trainer.model)
    x_all, y_all = s.trainer.tensors(index)
    with torch.no_grad():
        feats = model.body(x_all)
    protos = {int(c): feats[y_all == c].mean(0) for c in torch.unique(y_all)}
    head = s.algo.spec.head_mask()
    start = own.copy()
    start[~head] = received[~head]
    s.trainer.set_vector(start)
    model.load_state_dict(s.trainer.model.state_dict())
    order = index[rng(s.cfg.seed, "fedas-align", rnd, cid).permutation(len(index))]
    for i in range(steps):
        x, y = s.trainer.tensors(order[i * s.batch : (i + 1) * s.batch])
        z = model.body(x)
        loss = sum(((z[y == c] - protos[int(c)]) ** 2).mean() for c in torch.unique(y))
        model.zero_grad()
        loss.backward()
        with torch.no_grad():
            for n, p in model.named_parameters():
                if not n.startswith("head."):
                    p -= 0.01 * p.grad
    for name, p in model.named_parameters():
        np.testing.assert_allclose(s.get(update.upload["model"], name), p.detach().reshape(-1), rtol=1e-5,
                                   atol=1e-6, err_msg=name)
    np.testing.assert_array_equal(update.upload["model"][head], own[head])  # the head is the client's own
    assert not np.allclose(update.upload["model"][~head], received[~head], atol=1e-6)  # the body did move


def test_fedas_end_to_end_identical_everywhere(tmp_path, actors):
    out = runs_everywhere(tmp_path, "algorithm.name=fedas", "rounds=3", "eval_every=1", actors=actors,
                          one_worker=False)
    assert out["local"].final["personal_acc"] > out["local"].final["global_acc"]
