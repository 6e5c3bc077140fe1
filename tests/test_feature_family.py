"""FedDBE (and the other representation-feature algorithms of issue 13): each test pins a defining mechanism with
numbers (hand computations on a tiny MLP), then the algorithm runs end to end with identical numbers in-process, on
Ray, with the disk store, with one worker and after a resume."""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F

from algorithms.base import ClientJob, ClientUpdate
from harness.engine.worker import Worker, build_algorithm
from partitions import build_federated_dataset
from protocol.rng import rng
from tests.conftest import runs_everywhere, small_config


class Setup:
    """One algorithm on digits (a tiny MLP) with one in-process worker and the initial global vector."""

    def __init__(self, tmp_path, algo: str, *overrides: str):
        self.cfg = small_config(tmp_path, f"algorithm.name={algo}", "model.options.hidden=4", *overrides)
        self.data = build_federated_dataset(self.cfg.data, self.cfg.partition, self.cfg.seed)
        self.worker = Worker(self.cfg.model_dump(mode="json"), self.data)
        self.algo, self.trainer = self.worker.algo, self.worker.trainer
        _, _, self.init = build_algorithm(self.cfg, self.data)
        self.batch = self.cfg.train.batch_size

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
