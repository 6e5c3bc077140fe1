"""pFedSim: the similarity rule and the body aggregation by hand on crafted classifiers, the warm-up that is FedAvg bit
for bit, the client starting from (received body, own head), and identical numbers in-process, on Ray, with the disk
store and after a resume."""

from __future__ import annotations

import math

import numpy as np
import pytest

from algorithms import registry
from algorithms.base import AlgoContext, ClientJob, ClientUpdate
from algorithms.pfedsim import PFedSim, PFedSimParams, classifier_similarity, similarity_weights, weighted_body
from harness.engine import run
from harness.engine.worker import Worker, build_algorithm
from harness.models import build_model
from partitions import build_federated_dataset
from protocol.params import ParamSpec
from protocol.specs import TrainSpec
from tests.conftest import metrics_history, runs_everywhere, small_config


def tiny(warmup: int = 2, classes: int = 2, hidden: int = 2) -> PFedSim:
    model = build_model("mlp", (1, 2, 2), classes, hidden=hidden)
    ctx = AlgoContext(spec=ParamSpec.of(model), train=TrainSpec(), num_clients=8, num_classes=classes, seed=0)
    return PFedSim(PFedSimParams(warmup_rounds=warmup), ctx)


def with_head(algo: PFedSim, body_value: float, head: list[list[float]]) -> np.ndarray:
    """A model whose body is `body_value` everywhere and whose classifier weight is `head` (bias 0.5)."""
    vec = np.full(algo.spec.size, body_value, dtype=np.float32)
    vec[~algo.shared] = 0.5
    s = algo.classifier
    vec[s.start : s.stop] = np.asarray(head, dtype=np.float32).reshape(-1)
    return vec


# ----- registration -------------------------------------------------------------------------------------------------
def test_registered_with_documented_defaults():
    cls = registry.get("pfedsim")
    assert cls is PFedSim and cls.source and all(f.description for f in cls.Params.model_fields.values())
    assert {k: f.default for k, f in cls.Params.model_fields.items()} == {"warmup_rounds": 50,
                                                                        "self_similarity": 0.9999}
    assert cls.needs_split and cls.has_global_model


def test_a_model_without_a_body_is_refused():
    model = build_model("logreg", (1, 2, 2), 3)
    ctx = AlgoContext(spec=ParamSpec.of(model), train=TrainSpec(), num_clients=2, num_classes=3, seed=0)
    with pytest.raises(ValueError, match="leaves the shared part empty"):
        PFedSim(PFedSimParams(), ctx)


# ----- the rule -----------------------------------------------------------------------------------------------------
def test_similarity_is_the_clipped_mean_row_cosine_and_weights_are_normalised_minus_log_one_minus_s():
    mine = np.array([[1.0, 0.0], [0.0, 1.0]])
    others = np.array([[[1.0, 1.0], [0.0, 3.0]],      # rows: cos 1/sqrt(2) and 1 -> mean 0.853553
                       [[-1.0, 0.0], [0.0, -2.0]],    # rows: cos -1, -1 -> mean -1 -> clipped to 0
                       [[0.0, 1.0], [0.0, 0.0]]])     # rows: cos 0 and a zero row (cos 0) -> 0
    s = classifier_similarity(mine, others)
    np.testing.assert_allclose(s, [(1 / math.sqrt(2) + 1) / 2, 0.0, 0.0], rtol=1e-12)
    own, peers = similarity_weights(s, 0.9999)
    a_self, a_1 = math.log(1e4), -math.log(1 - (1 / math.sqrt(2) + 1) / 2)  # -log(1 - 0.9999), -log(1 - s)
    assert own == pytest.approx(a_self / (a_self + a_1), rel=1e-9)
    np.testing.assert_allclose(peers, [a_1 / (a_self + a_1), 0.0, 0.0], rtol=1e-9)
    assert own + peers.sum() == pytest.approx(1.0)
    # a cosine of 1 (or 1 + rounding) is capped at self_similarity: the peer weighs as much as the client, not inf
    own, peers = similarity_weights(np.array([1.0, 1.0 + 1e-12]), 0.9999)
    np.testing.assert_allclose([own, *peers], [1 / 3] * 3, rtol=1e-9)
    # nothing similar: the client keeps its own body exactly
    own, peers = similarity_weights(np.zeros(4), 0.9999)
    assert own == 1.0 and not peers.any()
    body = np.array([0.1, -0.3, 7.0], np.float32)
    np.testing.assert_array_equal(weighted_body(body, own, np.ones((4, 3), np.float32), peers), body)


def test_server_aggregates_each_body_by_classifier_similarity_and_keeps_its_pool_across_a_resume():
    algo = tiny(warmup=2)
    init = np.linspace(-1, 1, algo.spec.size).astype(np.float32)
    # warm-up: the global model goes out, FedAvg (sample-weighted) comes back on every element, the head included
    sent = algo.server_prepare(3, 1, init, {})
    assert set(sent.payload) == {"model"} and sent.note == {"personalized": False}
    a, b = init + 1, init - 3
    new = algo.aggregate(init, [ClientUpdate(1, 30, {"model": a}, {}), ClientUpdate(0, 10, {"model": b}, {})],
                         {0: sent.note, 1: sent.note})
    np.testing.assert_allclose(new, (30 * a.astype(np.float64) + 10 * b) / 40, rtol=1e-6)
    assert not algo.pool and algo.round_metrics({3: sent.note}) == {}
    # personalization: a client not in the pool receives the warm-up body and head
    first = algo.server_prepare(4, 2, new, {})
    np.testing.assert_array_equal(first.payload["body"], new[algo.shared])
    np.testing.assert_array_equal(first.payload["head"], new[~algo.shared])
    models = {2: with_head(algo, 1.0, [[1, 0], [0, 1]]), 5: with_head(algo, 2.0, [[1, 1], [0, 3]]),
              7: with_head(algo, 100.0, [[-1, 0], [0, -2]])}
    notes = {c: algo.server_prepare(c, 2, new, {}).note for c in models}
    kept = algo.aggregate(new, [ClientUpdate(c, 10, {"model": m}, {"w": m}) for c, m in models.items()], notes)
    np.testing.assert_array_equal(kept, new)  # the global vector stays the warm-up model
    # client 2: similar to 5 (s = 0.853553), dissimilar to 7 (s clipped to 0): 7's body has no weight at all
    sent = algo.server_prepare(2, 3, new, {"w": models[2]})
    a_self, a_5 = math.log(1e4), -math.log(1 - (1 / math.sqrt(2) + 1) / 2)
    expected = (a_self * 1.0 + a_5 * 2.0) / (a_self + a_5)
    np.testing.assert_allclose(sent.payload["body"], np.full(int(algo.shared.sum()), expected), rtol=1e-6)
    assert "head" not in sent.payload  # the client has its own
    assert sent.note["peers"] == 1.0 and sent.note["self_weight"] == pytest.approx(a_self / (a_self + a_5))
    # the client starts from that body and its own head
    start = algo.start_vector(ClientJob(2, 3, sent.payload, {"w": models[2]}))
    np.testing.assert_array_equal(start[~algo.shared], models[2][~algo.shared])
    np.testing.assert_array_equal(start[algo.shared], sent.payload["body"])
    # client 7 is similar to nobody: its own body, exactly
    np.testing.assert_array_equal(algo.server_prepare(7, 3, new, {"w": models[7]}).payload["body"],
                                  models[7][algo.shared])
    metrics = algo.round_metrics({2: sent.note, 4: first.note})
    assert metrics["pfedsim_peers_mean"] == 0.5 and metrics["pfedsim_pool_size"] == 3.0
    restored = tiny(warmup=2)
    restored.load_server_state(algo.server_state())
    np.testing.assert_array_equal(restored.server_prepare(2, 3, new, {"w": models[2]}).payload["body"],
                                  sent.payload["body"])


def test_the_client_trains_from_received_body_and_own_head_and_is_evaluated_with_its_trained_model(tmp_path):
    cfg = small_config(tmp_path, "algorithm.name=pfedsim", "algorithm.warmup_rounds=1", "model.options.hidden=4")
    data = build_federated_dataset(cfg.data, cfg.partition, cfg.seed)
    worker = Worker(cfg.model_dump(mode="json"), data)
    algo, trainer = worker.algo, worker.trainer
    _, _, init = build_algorithm(cfg, data)
    own = (init + 0.5).astype(np.float32)
    sent = algo.server_prepare(0, 1, init, {"w": own})  # not in the pool: the warm-up body, its own head
    frozen = worker.train([ClientJob(0, 1, sent.payload, sent.state, max_steps=0)])[0]  # a budget of 0 steps
    expected = init.copy()
    expected[~algo.shared] = own[~algo.shared]
    np.testing.assert_array_equal(frozen.upload["model"], expected)
    np.testing.assert_array_equal(frozen.state["w"], expected)
    np.testing.assert_array_equal(algo.received_vector(ClientJob(0, 1, sent.payload, sent.state), trainer), expected)
    trained = worker.train([ClientJob(0, 1, sent.payload, sent.state)])[0]
    assert not np.array_equal(trained.upload["model"], expected) and trained.steps > 0
    np.testing.assert_array_equal(trained.state["w"], trained.upload["model"])
    assert algo.bytes_down(sent.payload) == 4 * int(algo.shared.sum()) and algo.bytes_up(trained) == 4 * init.size
    job = ClientJob(0, 2, {"model": init}, trained.state)
    np.testing.assert_array_equal(algo.eval_vector(job, trainer), trained.upload["model"])
    np.testing.assert_array_equal(algo.eval_vector(ClientJob(1, 2, {"model": init}, {}), trainer), init)
    # warm-up round: FedAvg's client, state untouched
    warm = worker.train([ClientJob(0, 0, {"model": init}, {})])[0]
    assert warm.state == {} and set(warm.upload) == {"model"}


# ----- runs ---------------------------------------------------------------------------------------------------------
def test_warm_up_covering_the_run_is_fedavg_exactly(tmp_path):
    common = ("rounds=2", "train.lr=0.1")
    fedavg = run(small_config(tmp_path / "a", "algorithm.name=fedavg", *common), progress=False)
    pfedsim = run(small_config(tmp_path / "b", "algorithm.name=pfedsim", "algorithm.warmup_rounds=2", *common),
                  progress=False)
    assert metrics_history(pfedsim) == metrics_history(fedavg)
    np.testing.assert_array_equal(pfedsim.global_vec, fedavg.global_vec)


def test_end_to_end_identical_in_process_on_ray_with_disk_store_and_after_resume(tmp_path, actors):
    # stopped after round 2 and resumed: the pool is filled in round 2 and used in round 3
    out = runs_everywhere(tmp_path, "algorithm.name=pfedsim", "algorithm.warmup_rounds=1", "rounds=3", "train.lr=0.1",
                          actors=actors)
    history = metrics_history(out["local"])
    assert {p.name.split(".", 1)[1] for p in (tmp_path / "store").rglob("*.npy")} == {"w.npy"}
    assert "pfedsim_peers_mean" not in history[0] and history[1]["pfedsim_pool_size"] == 0
    assert history[2]["pfedsim_peers_mean"] > 0 and history[2]["pfedsim_self_weight_mean"] < 1
    assert history[0]["global_acc"] == history[1]["global_acc"] == history[2]["global_acc"]  # frozen warm-up model
    assert history[2]["personal_acc"] > history[0]["personal_acc"]
