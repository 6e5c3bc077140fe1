"""FedFomo: the weight w_n = (L_i(theta_i) - L_i(theta_n)) / ||theta_n - theta_i|| and the positive-weight update
by hand, on a real client's validation split; the epsilon-greedy download over the affinity row; the server's P
update and candidate pool across a resume; M = 0 is Local-only exactly; end to end identical in-process, on Ray,
with the disk store and after a resume."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from algorithms import registry
from algorithms.base import AlgoContext, ClientJob, ClientUpdate
from algorithms.fedfomo import FedFomo, FedFomoParams, add_to_row, egreedy_select, epsilon_at, fomo_update, fomo_weights
from harness.engine import run
from harness.models import build_model
from protocol.params import ParamSpec, vector_to_model
from protocol.rng import rng
from protocol.specs import TrainSpec
from tests.conftest import OneWorker, metrics_history, runs_everywhere, small_config


class Setup(OneWorker):
    """FedFomo on digits (a tiny MLP) with one in-process worker and the initial global vector."""

    def __init__(self, tmp_path, *overrides: str):
        super().__init__(tmp_path, "fedfomo", "model.options.hidden=4", *overrides)

    def loss(self, vec: np.ndarray, index: np.ndarray) -> float:
        """Mean cross-entropy of `vec` on `index`, computed here (not through the algorithm)."""
        model = self.trainer.model
        vector_to_model(vec, model, self.algo.spec)
        model.eval()
        with torch.no_grad():
            x, y = self.trainer.tensors(index)
            return float(F.cross_entropy(model(x), y))


def small_algo(m: int = 2, **params) -> FedFomo:
    model = build_model("mlp", (1, 4, 4), 3, hidden=5)
    ctx = AlgoContext(spec=ParamSpec.of(model), train=TrainSpec(), num_clients=10, num_classes=3, seed=0)
    return FedFomo(FedFomoParams(M=m, **params), ctx)


# ----- registration -------------------------------------------------------------------------------------------------
def test_registered_with_documented_defaults():
    cls = registry.get("fedfomo")
    assert cls is FedFomo and cls.source and not cls.has_global_model
    assert all(f.description for f in cls.Params.model_fields.values())
    assert len(inspect.getsource(inspect.getmodule(cls)).splitlines()) < 400
    defaults = {k: f.default for k, f in cls.Params.model_fields.items()}
    assert defaults == {"M": 5, "epsilon": 0.3, "epsilon_decay": 0.05, "val_fraction": 0.2}


# ----- the defining rule, by hand -----------------------------------------------------------------------------------
def test_weights_are_loss_gain_per_distance_and_only_positive_ones_move_the_model():
    w = fomo_weights(1.0, np.array([0.5, 1.2, 0.8, 1.0, 0.7]), np.array([2.0, 1.0, 0.5, 0.0, 0.0]))
    np.testing.assert_allclose(w, [0.25, -0.2, 0.4, 0.0, 0.0], rtol=1e-12)  # a peer at distance 0 weighs 0 (0/0, 0.3/0)
    own = np.array([1.0, -1.0], dtype=np.float32)
    peers = np.array([[3.0, -1.0], [100.0, 100.0], [1.0, 3.0], [1.0, -1.0], [1.0, -1.0]], dtype=np.float32)
    new, updated = fomo_update(own, peers, w)
    # theta_i + (0.25 (theta_1 - theta_i) + 0.4 (theta_3 - theta_i)) / 0.65: the harmful peer 2 is left out
    expected = own + (0.25 * (peers[0] - own) + 0.4 * (peers[2] - own)) / 0.65
    assert updated
    np.testing.assert_allclose(new, expected, rtol=1e-6)
    same, changed = fomo_update(own, peers[:2], np.array([-0.1, 0.0]))  # no positive weight: no update
    assert not changed and same is own
    assert fomo_weights(1.0, np.array([np.inf, np.nan]), np.array([1.0, 1.0])).tolist() == [0.0, 0.0]


def test_client_weighs_its_downloads_on_its_own_held_out_validation_split(tmp_path):
    s = Setup(tmp_path, "algorithm.M=3", "train.lr=0.1", "train.local_epochs=3")
    cid = 0
    train = s.data.train_of(cid)
    # the held-out validation share: fixed per client, floor(0.2 n), never trained on
    fit, val = s.algo.splits(cid, s.trainer)
    held = np.sort(train[rng(s.cfg.seed, "fedfomo-val", cid).permutation(len(train))[: int(0.2 * len(train))]])
    np.testing.assert_array_equal(val, held)
    assert len(np.intersect1d(fit, val)) == 0 and len(fit) + len(val) == len(train)
    # peers: the client's own data trained further (helps), the init (worse), a noisy copy (harms)
    own = s.worker.train([ClientJob(cid, 0, s.algo.server_prepare(cid, 0, s.init, {}).payload, {})])[0].upload["model"]
    better = s.worker.train([ClientJob(cid, 1, {"model": own, "peer_ids": np.zeros(0, np.int64),
                                                "peers": np.zeros((0, own.size), np.float32)}, {"model": own})])[0]
    noisy = own + np.random.default_rng(0).normal(scale=0.5, size=own.size).astype(np.float32)
    peers = {7: better.upload["model"], 3: s.init, 5: noisy}
    s.algo.aggregate(s.init, [ClientUpdate(c, 10, {"model": m, "peer_ids": np.zeros(0, np.int64),
                                                   "weights": np.zeros(0)}, {}) for c, m in peers.items()])
    sent = s.algo.server_prepare(cid, 1, s.init, {"model": own})
    assert sent.payload["peer_ids"].tolist() == [3, 5, 7] and "model" not in sent.payload  # ids sorted, no init
    job = ClientJob(cid, 1, sent.payload, sent.state)
    start = s.algo.received_vector(job, s.trainer)
    update = s.worker.train([job])[0]
    # by hand: losses on the held-out split, L2 distances over the parameters
    own_loss = s.loss(own, val)
    rows = [peers[j] for j in (3, 5, 7)]
    w = np.array([(own_loss - s.loss(r, val)) / np.linalg.norm(r.astype(np.float64) - own) for r in rows])
    np.testing.assert_allclose(update.upload["weights"], w, rtol=1e-4, atol=1e-7)
    assert w[2] > 0 > w[1]  # the construction gives a helpful and a harmful peer
    pos = np.maximum(w, 0)
    expected = own + sum(p * (r.astype(np.float64) - own) for p, r in zip(pos, rows, strict=True)) / pos.sum()
    np.testing.assert_allclose(start, expected, rtol=1e-5, atol=1e-6)
    assert update.metrics["fomo_updated"] == 1.0 and update.metrics["fomo_positive"] == float((w > 0).sum())
    assert np.abs(update.upload["model"] - start).max() > 0  # then it trains locally from there, never on val
    assert update.samples_processed == 3 * len(fit) and update.num_samples == len(train)
    np.testing.assert_array_equal(update.state["model"], update.upload["model"])


def test_a_partition_val_split_is_used_and_training_keeps_the_whole_training_split(tmp_path):
    s = Setup(tmp_path, "partition.val_fraction=0.2")
    fit, val = s.algo.splits(2, s.trainer)
    assert fit is None
    np.testing.assert_array_equal(val, s.data.split_of(2, "val"))


# ----- the server: epsilon-greedy download, affinity matrix, pool ----------------------------------------------------
def test_epsilon_decays_linearly_per_round_to_zero():
    assert [epsilon_at(0.3, 0.05, t) for t in (0, 1, 2)] == pytest.approx([0.3, 0.25, 0.2])
    assert epsilon_at(0.3, 0.05, 6) == pytest.approx(0.0, abs=1e-12) and epsilon_at(0.3, 0.05, 50) == 0.0


def test_egreedy_takes_the_top_affinities_when_greedy_and_random_ones_when_exploring():
    ids = np.array([4, 9, 1, 6, 2])
    scores = np.array([0.5, -1.0, 2.0, 0.0, 0.5])
    greedy, explored = egreedy_select(ids, scores, 2, 0.0, np.random.default_rng(0))
    assert greedy.tolist() == [1, 4] or greedy.tolist() == [1, 2]  # 2.0, then one of the tied 0.5s
    assert explored == 0
    ties = {tuple(egreedy_select(ids, scores, 2, 0.0, np.random.default_rng(s))[0]) for s in range(20)}
    assert ties == {(1, 4), (1, 2)}  # ties broken at random, never the lower scores
    top3, _ = egreedy_select(ids, scores, 3, 0.0, np.random.default_rng(1))
    assert top3.tolist() == [1, 2, 4]
    picks = [egreedy_select(ids, scores, 2, 1.0, np.random.default_rng(s)) for s in range(40)]
    assert all(e == 2 and len(set(p)) == 2 for p, e in picks)
    assert 9 in {int(j) for p, _ in picks for j in p}  # exploration reaches the worst-scored candidate
    assert egreedy_select(ids[:2], scores[:2], 5, 0.0, np.random.default_rng(0))[0].tolist() == [4, 9]  # all


def test_server_sends_the_top_m_of_the_last_rounds_uploads_and_updates_the_affinity_row():
    algo = small_algo(m=2)
    d = algo.spec.size
    gen = np.random.default_rng(0)
    init = gen.normal(size=d).astype(np.float32)
    models = {c: gen.normal(size=d).astype(np.float32) for c in (0, 2, 3, 5, 8)}
    algo.aggregate(init, [ClientUpdate(c, 10, {"model": m, "peer_ids": np.zeros(0, np.int64),
                                               "weights": np.zeros(0)}, {}) for c, m in models.items()])
    row = {"model": models[3], "affinity_ids": np.array([0, 5, 7]), "affinity": np.array([-0.5, 0.2, 9.0])}
    sent = algo.server_prepare(3, 10, init, row)  # eps_10 = 0: greedy; itself and the absent client 7 excluded
    assert sent.payload["peer_ids"].tolist() == [2, 5] or sent.payload["peer_ids"].tolist() == [5, 8]
    assert 0 not in sent.payload["peer_ids"]  # negative affinity ranks below never-evaluated peers (0)
    assert all(3 not in algo.server_prepare(3, r, init, {}).payload["peer_ids"] for r in range(12))  # never itself
    np.testing.assert_array_equal(sent.payload["peers"], np.stack([models[j] for j in sent.payload["peer_ids"]]))
    assert "model" not in sent.payload and algo.bytes_down(sent.payload) == 4 * 2 * d
    assert sent.note == {"peers": 2.0, "explored": 0.0, "epsilon": 0.0}
    fresh = algo.server_prepare(1, 10, init, {})  # a client without a model also gets the initial model
    np.testing.assert_array_equal(fresh.payload["model"], init)
    assert algo.bytes_down(fresh.payload) == 4 * 3 * d
    # P_in += w_n (signed) in the uploader's row; the round's uploads replace the pool
    up = ClientUpdate(3, 10, {"model": models[3], "peer_ids": np.array([5, 8]), "weights": np.array([0.3, -0.1])},
                      dict(row))
    algo.aggregate(init, [up])
    assert up.state["affinity_ids"].tolist() == [0, 5, 7, 8]
    np.testing.assert_allclose(up.state["affinity"], [-0.5, 0.5, 9.0, -0.1])
    assert algo.pool_ids.tolist() == [3]
    assert algo.aggregate(init, []) is init and algo.pool_ids.tolist() == [3]  # a round without uploads keeps it
    restored = small_algo(m=2)
    restored.load_server_state(algo.server_state())
    a, b = restored.server_prepare(6, 1, init, {}), algo.server_prepare(6, 1, init, {})
    assert a.payload["peer_ids"].tolist() == b.payload["peer_ids"].tolist() == [3]
    np.testing.assert_array_equal(a.payload["peers"], b.payload["peers"])
    ids, values = add_to_row(np.zeros(0, np.int64), np.zeros(0), np.array([4, 1]), np.array([1.0, 2.0]))
    assert ids.tolist() == [1, 4] and values.tolist() == [2.0, 1.0]


# ----- reductions and end to end -------------------------------------------------------------------------------------
def test_m_zero_is_local_only_exactly(tmp_path):
    common = ("rounds=3", "train.lr=0.1", "partition.val_fraction=0.2")
    fomo = run(small_config(tmp_path / "fomo", "algorithm.name=fedfomo", "algorithm.M=0", *common), progress=False)
    local = run(small_config(tmp_path / "local", "algorithm.name=local", *common), progress=False)
    keys = ("personal_acc", "personal_loss", "personal_acc_mean", "train_loss")
    assert [{k: h[k] for k in keys} for h in fomo.history] == [{k: h[k] for k in keys} for h in local.history]
    assert all(h["fedfomo_peers_mean"] == 0 for h in fomo.history)


def test_end_to_end_identical_in_process_on_ray_with_disk_store_and_after_resume(tmp_path, actors):
    local = runs_everywhere(tmp_path, "algorithm.name=fedfomo", "rounds=3", "train.lr=0.1", "algorithm.M=2",
                            actors=actors)["local"]
    history = metrics_history(local)
    assert {p.name.split(".", 1)[1] for p in (tmp_path / "store").rglob("*.npy")} == {
        "model.npy", "affinity_ids.npy", "affinity.npy"}
    assert history[0]["fedfomo_peers_mean"] == 0 and history[-1]["fedfomo_peers_mean"] > 0
    assert history[1]["fedfomo_epsilon"] == pytest.approx(0.25)
    assert local.final["personal_acc"] > 0.3
