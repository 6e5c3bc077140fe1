"""CFL: the split criterion, the paper's optimal bipartition, per-cluster averaging and the clients' cluster models,
each pinned with hand-computed numbers; FedAvg exactly before any split; identical numbers in-process, on Ray,
with the disk store and after a resume (with splits in the run)."""

from __future__ import annotations

import inspect
import itertools

import numpy as np
import pytest
import torch

from algorithms import registry
from algorithms.base import AlgoContext, ClientJob, ClientUpdate
from algorithms.cfl import CFL, CFLParams, cosine_matrix, optimal_bipartition, update_norms
from algorithms.clusters import ClusterCopies
from harness.engine import run
from harness.engine.training import LocalTrainer
from harness.models import build_model
from partitions import build_federated_dataset
from protocol.params import ParamSpec, model_to_vector
from tests.conftest import metrics_history, runs_everywhere, small_config


def test_registered_with_documented_defaults():
    cls = registry.get("cfl")
    assert cls is CFL and cls.source and cls.__doc__ and not cls.has_global_model
    assert all(f.description for f in cls.Params.model_fields.values())
    assert len(inspect.getsource(inspect.getmodule(cls)).splitlines()) < 400
    assert {k: f.default for k, f in cls.Params.model_fields.items()} == {
        "eps_1": 0.4, "eps_2": 1.6, "start_round": 20, "min_cluster_size": 2, "weighting": "samples",
        "gamma_max": None, "max_clusters": 8}


# ----- the pure mechanism -------------------------------------------------------------------------------------------
def test_norms_and_cosines_by_hand():
    deltas = np.array([[3.0, 4.0], [-3.0, -4.0], [0.0, 1.0]])
    mean_norm, max_norm = update_norms(deltas, np.array([0.25, 0.25, 0.5]))
    assert mean_norm == pytest.approx(0.5) and max_norm == pytest.approx(5.0)  # ||(0, 0.5)||, ||(3, 4)||
    alpha = cosine_matrix(deltas)
    np.testing.assert_allclose(alpha, [[1, -1, 0.8], [-1, 1, -0.8], [0.8, -0.8, 1]])
    assert cosine_matrix(np.array([[0.0, 0.0], [1.0, 0.0]]))[0, 1] == 0.0  # a zero update: no similarity


def test_optimal_bipartition_cuts_the_weakest_link_not_complete_linkage():
    # a chain 0-1-2-3: the optimal cut is between 1 and 2 (cross max 0.8); every other cut crosses a 0.9
    alpha = np.array([[1.0, 0.9, 0.1, -0.5], [0.9, 1.0, 0.8, 0.1], [0.1, 0.8, 1.0, 0.9], [-0.5, 0.1, 0.9, 1.0]])
    c1, c2, cross = optimal_bipartition(alpha)
    assert c1.tolist() == [0, 1] and c2.tolist() == [2, 3] and cross == pytest.approx(0.8)
    # complete linkage of -alpha (authors' code, FL-bench; sklearn) cuts {0,1,3,4} | {2} here; the optimal cut is
    # {0,1,2} | {3,4}, whose largest cross similarity is the 0.3 link
    alpha = np.eye(5)
    for (i, j), a in {(0, 1): 0.9, (1, 2): 0.85, (0, 2): -0.9, (2, 3): 0.3, (3, 4): 0.95}.items():
        alpha[i, j] = alpha[j, i] = a
    c1, c2, cross = optimal_bipartition(alpha)
    assert c1.tolist() == [0, 1, 2] and c2.tolist() == [3, 4] and cross == pytest.approx(0.3)
    assert optimal_bipartition(np.array([[1.0, 0.2], [0.2, 1.0]]))[2] == pytest.approx(0.2)


def test_optimal_bipartition_minimises_the_max_cross_similarity_by_brute_force():
    gen = np.random.default_rng(0)
    for m in (3, 4, 5, 6, 7):
        for _ in range(20):
            alpha = cosine_matrix(gen.normal(size=(m, 3)))
            c1, c2, cross = optimal_bipartition(alpha)
            assert sorted([*c1, *c2]) == list(range(m)) and len(c1) and len(c2) and 0 in c1
            best = min(alpha[np.ix_(list(s), [i for i in range(m) if i not in s])].max()
                       for r in range(1, m) for s in itertools.combinations(range(m), r))
            assert cross == pytest.approx(best, abs=1e-12)


# ----- the server: criterion, split, per-cluster averages ------------------------------------------------------------
class Bench:
    """CFL over a tiny MLP (digits, hidden 4), crafted uploads around the initial cluster model."""

    def __init__(self, tmp_path, **params):
        cfg = small_config(tmp_path, "algorithm.name=cfl")
        self.data = build_federated_dataset(cfg.data, cfg.partition, cfg.seed)
        p = CFLParams(**params)
        self.model = ClusterCopies(build_model("mlp", self.data.input_shape, self.data.num_classes, hidden=4),
                                   p.max_clusters)
        self.spec = ParamSpec.of(self.model)
        self.algo = CFL(p, AlgoContext(self.spec, cfg.train, self.data.num_clients, self.data.num_classes, 0))
        self.trainer = LocalTrainer(self.model, self.spec, self.data, cfg.train, torch.device("cpu"), 0)
        self.vec = model_to_vector(self.model, self.spec)
        a, b = self.algo.ranges[0]
        self.theta = self.vec[a:b]
        v = np.zeros(self.algo.size)
        v[self.algo.trainable] = np.random.default_rng(1).normal(size=int(self.algo.trainable.sum()))
        self.v = (2.0 * v / np.linalg.norm(v)).astype(np.float32)  # ||v|| = 2 > eps_2 = 1.6

    def round(self, rnd: int, groups: list[tuple[float, int, int]], vec=None, states=None):
        """groups: (sign of v, samples, clients) in client-id order; returns (new vector, updates, metrics)."""
        vec = self.vec if vec is None else vec
        ups, notes, cid = [], {}, 0
        for sign, n, count in groups:
            for _ in range(count):
                state = (states or {}).get(cid, {})
                notes[cid] = self.algo.server_prepare(cid, rnd, vec, state).note
                j = notes[cid]["cluster"]
                a, b = self.algo.ranges[j]
                up = {"model": vec[a:b] + sign * self.v, "cluster": np.array([j], dtype=np.int64)}
                ups.append(ClientUpdate(cid, n, up, {"cluster": np.array([j], dtype=np.int64)}))
                cid += 1
        new = self.algo.aggregate(vec, ups[::-1], notes)
        return new, ups, self.algo.round_metrics(notes)


def test_a_stationary_cluster_with_divergent_clients_splits_and_each_child_averages_its_own(tmp_path):
    s = Bench(tmp_path)
    # 2 clients move by +v (30 samples each), 3 by -v (20 each): the |D_i|-weighted mean update is 0 < eps_1, the
    # largest update 2 > eps_2, 5 > 2 clients, round 20 >= start_round: split; the larger part (-v) keeps index 0
    new, ups, m = s.round(20, [(1, 30, 2), (-1, 20, 3)])
    assert m["cfl_clusters"] == 2 and m["cfl_splits"] == 1 and m["cfl_mean_norm_min"] < 1e-5
    assert m["cfl_max_norm_max"] == pytest.approx(2.0, rel=1e-6)
    (a0, b0), (a1, b1) = s.algo.ranges[:2]
    np.testing.assert_array_equal(new[a0:b0], s.theta - s.v)  # theta + the mean update of the -v part
    np.testing.assert_array_equal(new[a1:b1], s.theta + s.v)
    assert [int(u.state["cluster"][0]) for u in ups] == [1, 1, 0, 0, 0]
    unchanged = np.ones(new.size, bool)
    unchanged[a0:b1] = False
    np.testing.assert_array_equal(new[unchanged], s.vec[unchanged])  # other slots, select untouched
    assert s.algo.server_state()["count"].tolist() == [2]
    # next round: clients train their own cluster's model (the note), a never-seen client is in cluster 0
    states = {u.cid: u.state for u in ups}
    assert [s.algo.server_prepare(c, 21, new, states.get(c, {})).note["cluster"] for c in range(6)] == [
        1, 1, 0, 0, 0, 0]


@pytest.mark.parametrize("case", ["warm_up", "uniform_mean_not_small", "too_few", "small_updates", "full"])
def test_no_split_without_every_condition(tmp_path, case):
    params = {"uniform_mean_not_small": {"weighting": "uniform", "eps_1": 0.3},  # uniform mean: ||v||/5 = 0.4
              "too_few": {"min_cluster_size": 5}, "small_updates": {"eps_2": 2.5}, "full": {"max_clusters": 1}}
    s = Bench(tmp_path, **params.get(case, {}))
    new, ups, m = s.round(19 if case == "warm_up" else 20, [(1, 30, 2), (-1, 20, 3)])
    assert m["cfl_clusters"] == 1 and m["cfl_splits"] == 0 and m["cfl_splits_refused"] == (case == "full")
    a, b = s.algo.ranges[0]
    models = [u.upload["model"].astype(np.float64) for u in ups]
    w = np.array([30.0, 30, 20, 20, 20]) if case != "uniform_mean_not_small" else np.ones(5)
    np.testing.assert_allclose(new[a:b], w @ np.stack(models) / w.sum(), rtol=0, atol=1e-6)
    assert all(int(u.state["cluster"][0]) == 0 for u in ups)


def test_gamma_max_blocks_a_split_whose_parts_are_not_separated_enough(tmp_path):
    # parts at 60 degrees: cross similarity 0.5, sqrt((1 - 0.5)/2) = 0.5: gamma_max 0.51 blocks, 0.49 allows
    for gamma, splits in ((0.51, 0), (0.49, 1)):
        s = Bench(tmp_path, eps_1=100.0, gamma_max=gamma)
        u = s.v / np.linalg.norm(s.v)
        # w = cos60 u + sin60 e, e orthogonal to u (Gram-Schmidt on a basis vector inside the trainable part)
        e = np.zeros_like(u)
        e[np.flatnonzero(s.algo.trainable)[0]] = 1.0
        e = e - (e @ u) * u
        e /= np.linalg.norm(e)
        other = (2.0 * (0.5 * u + np.sqrt(0.75) * e)).astype(np.float32)
        ups, notes = [], {}
        for cid, d in enumerate([s.v, s.v, other, other]):
            notes[cid] = s.algo.server_prepare(cid, 20, s.vec, {}).note
            ups.append(ClientUpdate(cid, 10, {"model": s.theta + d, "cluster": np.array([0])}, {}))
        s.algo.aggregate(s.vec, ups, notes)
        assert s.algo.round_metrics(notes)["cfl_splits"] == splits


# ----- the client: trains its cluster's copy, is evaluated with it ---------------------------------------------------
def test_client_trains_and_is_evaluated_with_its_cluster_model(tmp_path):
    s = Bench(tmp_path, max_clusters=3)
    (a1, b1), (a2, b2) = s.algo.ranges[1:3]
    vec = s.vec.copy()
    vec[a1:b1] = s.theta + s.v  # cluster 1 differs from cluster 0
    cid = 0
    job = ClientJob(cid, 0, {"model": vec}, {"cluster": np.array([1], dtype=np.int64)})
    s.trainer.start(job)
    u = s.algo.local_update(job, s.trainer)
    assert int(u.upload["cluster"][0]) == 1 and u.upload["model"].size == s.algo.size
    assert not np.array_equal(u.upload["model"], vec[a1:b1])
    assert s.algo.bytes_down(job.payload) == s.algo.bytes_up(u) == 4 * s.algo.size
    trained = s.algo.trained_vector(job, u, s.trainer)
    np.testing.assert_array_equal(trained[a1:b1], u.upload["model"])
    outside = np.ones(vec.size, bool)
    outside[a1:b1] = False
    outside[s.algo.sel.start : s.algo.sel.stop] = False
    np.testing.assert_array_equal(trained[outside], vec[outside])  # only the cluster's copy trained
    # the personalized model runs copy 1: the same numbers as copy 1's parameters placed in copy 0
    personal = s.algo.eval_vector(ClientJob(cid, 1, {"model": vec}, {"cluster": np.array([1])}), s.trainer)
    moved = s.algo.selected(vec, 0)
    moved[s.algo.ranges[0][0] : s.algo.ranges[0][1]] = vec[a1:b1]
    assert s.trainer.evaluate(personal, cid) == s.trainer.evaluate(moved, cid)
    assert s.trainer.evaluate(personal, cid) != s.trainer.evaluate(s.algo.selected(vec, 0), cid)
    with pytest.raises(ValueError, match="max_clusters=2 but the model was built with 3"):
        CFL(CFLParams(max_clusters=2), s.algo.ctx)


# ----- end to end ---------------------------------------------------------------------------------------------------
def test_before_any_split_the_cluster_model_is_fedavg_bit_for_bit(tmp_path):
    common = ("rounds=2", "train.lr=0.1")
    cfl = run(small_config(tmp_path / "cfl", "algorithm.name=cfl", *common), progress=False)
    fedavg = run(small_config(tmp_path / "fedavg", "algorithm.name=fedavg", *common), progress=False)
    a = 8  # `select` (8 floats) comes first in the flat vector, then cluster 0
    np.testing.assert_array_equal(cfl.global_vec[a : a + fedavg.global_vec.size], fedavg.global_vec)
    assert [h["personal_acc"] for h in cfl.history] == [h["personal_acc"] for h in fedavg.history]
    assert all(h["cfl_clusters"] == 1 for h in cfl.history)


def test_end_to_end_identical_in_process_on_ray_with_disk_store_and_after_resume(tmp_path, actors):
    # splits from round 2 on (eps_1 large, eps_2 0): the resumed run must restore the cluster count
    common = ("algorithm.name=cfl", "rounds=3", "train.lr=0.1", "algorithm.start_round=1", "algorithm.eps_1=10",
              "algorithm.eps_2=0", "algorithm.max_clusters=4")
    out = runs_everywhere(tmp_path, *common, actors=actors, one_worker=False)
    local, history = out["local"], metrics_history(out["local"])
    assert {p.name.split(".", 1)[1] for p in (tmp_path / "store").rglob("*.npy")} == {"cluster.npy"}
    assert [h["cfl_clusters"] for h in history] == [1, 2, 3] and history[-1]["cfl_splits"] == 1
    assert np.isfinite(local.global_vec).all() and local.final["personal_acc"] > 0.1
