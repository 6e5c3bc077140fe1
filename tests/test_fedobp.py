"""FedOBP: the mask, its corner cases, its logs, and its two limits (q=1 is FedAvg, q=0 is Local-only)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from algorithms import registry
from algorithms.base import AlgoContext, Algorithm, ClientJob, ClientUpdate
from algorithms.fedobp import (
    FedOBP,
    FedOBPParams,
    importance,
    normalize,
    num_personal,
    quantile_linear,
    threshold_mask,
    top_k_mask,
)
from harness.engine import run
from harness.models import build_model
from protocol.params import ParamSpec
from protocol.specs import TrainSpec
from tests.conftest import small_config

# mlp((1,4,4), 3, hidden=5): body.1 (16*5+5), body.3 (5*5+5), head (5*3+3) = 133 elements
D = 133


def make(**params) -> FedOBP:
    model = build_model("mlp", (1, 4, 4), 3, hidden=5)
    ctx = AlgoContext(spec=ParamSpec.of(model), train=TrainSpec(), num_clients=8, num_classes=3, seed=0)
    return FedOBP(FedOBPParams(**params), ctx)


def prep(algo, cid, rnd, global_vec, state, notes=None):
    """(payload, state) of algo.server_prepare; its note goes into `notes` when given."""
    sent = algo.server_prepare(cid, rnd, global_vec, state)
    if notes is not None:
        notes[cid] = sent.note
    return sent.payload, sent.state


def unpack(state, n):
    return np.unpackbits(state["mask"], count=n).astype(bool)


def reference_top_k(score: np.ndarray, k: int) -> np.ndarray:
    """Sort by (score descending, index ascending) and take k: the rule top_k_mask must follow."""
    order = np.lexsort((np.arange(score.size), -score.astype(np.float64)))
    mask = np.zeros(score.size, dtype=bool)
    mask[order[:k]] = True
    return mask


# ----- registration and hyperparameters ---------------------------------------------------------------
def test_registered_with_documented_defaults():
    cls = registry.get("fedobp")
    assert cls is FedOBP
    assert FedOBP.__doc__.strip().splitlines()[0].startswith("FedOBP: ")
    assert "2604.16574" in FedOBP.source and "FedOBP_CODE" in FedOBP.source
    p = FedOBPParams()
    assert (p.q, p.score, p.candidates, p.ema, p.ema_alpha, p.norm) == (0.9999, "delta_sq", "all", False, 0.5, "global")
    assert (p.selection, p.exclude_personal_from_aggregation) == ("topk", False)
    assert all(f.description for f in FedOBPParams.model_fields.values())


# ----- how many elements, and which ---------------------------------------------------------------------
@pytest.mark.parametrize(("n", "q", "k"), [
    (100, 0.99, 1), (100, 0.995, 1), (10, 0.85, 2), (10, 0.95, 1), (133, 0.9, 13), (878_538, 0.9999, 88),
    (878_538, 0.99505, 4349), (100, 0.0, 100), (100, 1.0, 0), (3, 0.5, 2),
])
def test_num_personal_is_round_half_up(n, q, k):
    assert num_personal(n, q) == k


def test_top_k_is_exact_under_ties_and_breaks_them_by_index():
    rng = np.random.default_rng(1)
    score = rng.integers(0, 5, size=1000).astype(np.float32)  # heavy ties
    for k in (0, 1, 7, 199, 200, 201, 500, 999, 1000):
        mask = top_k_mask(score, k)
        assert mask.sum() == k
        np.testing.assert_array_equal(mask, reference_top_k(score, k))


def test_exactly_round_1_minus_q_personal_elements_even_when_all_scores_tie():
    algo = make(q=0.9, norm="none")
    theta_g = np.zeros(D, dtype=np.float32)
    theta_k = theta_g.copy()
    tied = np.arange(3, 93, 3)  # 30 elements with the same score 1.0, k = 13
    theta_k[tied] = 1.0
    payload, state = prep(algo, 0, 1, theta_g, {"theta": theta_k})
    mask = unpack(state, D)
    assert algo.k == 13 and mask.sum() == 13
    np.testing.assert_array_equal(np.flatnonzero(mask), tied[:13])  # ties: lower index first
    # the authors' rule `score > quantile` personalizes none of them: tau equals the tied value
    assert threshold_mask(importance(theta_k, theta_g), 0.9).sum() == 0
    algo_thr = make(q=0.9, norm="none", selection="threshold")
    assert unpack(prep(algo_thr, 0, 1, theta_g, {"theta": theta_k})[1], D).sum() == 0


def test_threshold_rule_matches_torch_quantile():
    rng = np.random.default_rng(2)
    score = rng.random(1001).astype(np.float32)
    for q in (0.0, 0.5, 0.9, 0.99, 0.9999, 1.0):
        tau = torch.quantile(torch.from_numpy(score).double(), q).item()
        assert quantile_linear(score, q) == pytest.approx(tau, rel=1e-12, abs=0)
        np.testing.assert_array_equal(threshold_mask(score, q), score > tau)
    # with distinct scores the authors' count is |C| - 1 - floor(q(|C|-1)): within one of round((1-q)|C|)
    for q in (0.5, 0.9, 0.99, 0.995):
        assert abs(int(threshold_mask(score, q).sum()) - num_personal(score.size, q)) <= 1


def test_selection_on_twelve_million_elements_is_exact_and_fast():
    rng = np.random.default_rng(3)
    n = 12_000_000
    score = (rng.integers(0, 200_000, size=n) / 1e5).astype(np.float32)  # many ties
    k = num_personal(n, 0.9999)
    t0 = time.perf_counter()
    mask = top_k_mask(score, k)
    elapsed = time.perf_counter() - t0
    assert k == 1200 and mask.sum() == k
    v = score[mask].min()
    assert v >= score[~mask].max()  # the k largest
    tied = np.flatnonzero(score == v)
    assert mask[tied].sum() >= 1 and np.all(np.diff(mask[tied].astype(np.int8)) <= 0)  # ties: lowest index first
    print(f"\ntop-k of {n:,} float32 scores: {elapsed:.3f} s")


def test_threshold_rule_beyond_torch_quantile_size_limit():
    n = 2**24 + 1_000_000  # torch.quantile refused inputs over 2^24 elements until recent releases (pytorch#64947)
    score = np.random.default_rng(4).random(n, dtype=np.float32)
    t0 = time.perf_counter()
    tau = quantile_linear(score, 0.9999)
    elapsed = time.perf_counter() - t0
    assert tau == pytest.approx(float(np.quantile(score, 0.9999)), rel=1e-7)
    assert abs(int((score > tau).sum()) - num_personal(n, 0.9999)) <= 1
    print(f"\nquantile of {n:,} float32 scores: {elapsed:.3f} s")


# ----- the start model: stored theta_k against the current theta_g -----------------------------------
def test_mask_comes_from_stored_theta_k_and_current_global_elementwise():
    algo = make(q=0.97, norm="none")  # k = round(0.03 * 133) = 4
    rng = np.random.default_rng(5)
    theta_g = rng.normal(size=D).astype(np.float32)
    theta_k = theta_g.copy()
    moved = {7: 3.0, 90: -2.5, 120: 2.0, 131: 1.5, 40: 0.5, 60: -0.25}  # index -> theta_k - theta_g
    for i, d in moved.items():
        theta_k[i] += d
    payload, state = prep(algo, 2, 4, theta_g, {"theta": theta_k})
    expected = theta_g.copy()
    for i in (7, 90, 120, 131):  # the 4 largest |delta|
        expected[i] = theta_k[i]
    np.testing.assert_array_equal(payload["model"], expected)
    np.testing.assert_array_equal(np.flatnonzero(unpack(state, D)), [7, 90, 120, 131])
    assert "theta" not in state  # theta_k stays in the store; the worker writes the new one
    # against another global model the same stored theta_k gives another mask
    theta_g2 = theta_g.copy()
    theta_g2[40] -= 10.0
    payload2, state2 = prep(algo, 2, 5, theta_g2, {"theta": theta_k})
    assert 40 in np.flatnonzero(unpack(state2, D)) and payload2["model"][40] == theta_k[40]
    # the general case against the sorting reference
    theta_k = theta_g + rng.normal(size=D).astype(np.float32)
    payload, state = prep(algo, 2, 6, theta_g, {"theta": theta_k})
    ref = reference_top_k((theta_k - theta_g) ** 2, algo.k)
    np.testing.assert_array_equal(unpack(state, D), ref)
    np.testing.assert_array_equal(payload["model"], np.where(ref, theta_k, theta_g))


def test_both_score_variants():
    theta_g = np.zeros(D, dtype=np.float32)
    theta_k = np.zeros(D, dtype=np.float32)
    theta_g[10], theta_k[10] = -0.9, 0.1  # delta 1.0:  delta^2 = 1.0,  |delta * theta_k| = 0.1
    theta_g[20], theta_k[20] = 4.5, 5.0  # delta 0.5:  delta^2 = 0.25, |delta * theta_k| = 2.5
    np.testing.assert_allclose(importance(theta_k, theta_g, "delta_sq")[[10, 20]], [1.0, 0.25], rtol=1e-6)
    np.testing.assert_allclose(importance(theta_k, theta_g, "delta_times_local")[[10, 20]], [0.1, 2.5], rtol=1e-6)
    for kind, chosen in (("delta_sq", 10), ("delta_times_local", 20)):
        algo = make(q=0.995, norm="none", score=kind)  # k = 1
        payload, state = prep(algo, 0, 1, theta_g, {"theta": theta_k})
        assert np.flatnonzero(unpack(state, D)).tolist() == [chosen]
        other = 30 - chosen
        assert payload["model"][chosen] == theta_k[chosen] and payload["model"][other] == theta_g[other]


def test_classifier_only_candidates_leave_the_body_at_global():
    algo = make(q=0.0, candidates="classifier")
    head = algo.spec.head_mask()
    assert algo.num_candidates == int(head.sum()) == 18
    rng = np.random.default_rng(6)
    theta_g = rng.normal(size=D).astype(np.float32)
    theta_k = rng.normal(size=D).astype(np.float32)
    payload, state = prep(algo, 1, 1, theta_g, {"theta": theta_k})
    np.testing.assert_array_equal(payload["model"][~head], theta_g[~head])
    np.testing.assert_array_equal(payload["model"][head], theta_k[head])
    assert unpack(state, 18).all()
    algo = make(q=0.5, candidates="classifier")  # k = 9 of the 18 head elements
    payload, state = prep(algo, 1, 1, theta_g, {"theta": theta_k})
    np.testing.assert_array_equal(payload["model"][~head], theta_g[~head])
    mask = unpack(state, 18)
    assert mask.sum() == 9
    np.testing.assert_array_equal(payload["model"][head], np.where(mask, theta_k[head], theta_g[head]))


def test_ema_of_the_score_changes_the_choice():
    theta_g1 = np.zeros(D, dtype=np.float32)
    theta_k = np.zeros(D, dtype=np.float32)
    theta_k[5] = 2.0  # round 1 scores: [5] = 4, [50] = 0
    theta_g2 = theta_k.copy()
    theta_g2[5], theta_g2[50] = 1.0, -1.5  # round 2 scores: [5] = 1, [50] = 2.25
    chosen = {}
    for ema in (False, True):
        algo = make(q=0.995, norm="none", ema=ema, ema_alpha=0.5)  # k = 1
        _, state = prep(algo, 3, 1, theta_g1, {"theta": theta_k})
        if ema:
            np.testing.assert_array_equal(state["ema"], importance(theta_k, theta_g1))  # first value: s itself
        else:
            assert "ema" not in state
        _, state2 = prep(algo, 3, 2, theta_g2, {**state, "theta": theta_k})
        chosen[ema] = np.flatnonzero(unpack(state2, D)).tolist()
        if ema:  # I = (1-a) s + a I_prev: [5] = 0.5*1 + 0.5*4 = 2.5 > [50] = 0.5*2.25 = 1.125
            s2 = importance(theta_k, theta_g2)
            np.testing.assert_allclose(state2["ema"], 0.5 * s2 + 0.5 * state["ema"], rtol=1e-7)
            assert state2["ema"][5] == 2.5 and state2["ema"][50] == 1.125
    assert chosen == {False: [50], True: [5]}


def test_normalisations_and_the_zero_over_zero_guard():
    segments = [(0, 3), (3, 6)]
    s = np.array([1.0, 3.0, 5.0, 0.2, 0.2, 0.2], dtype=np.float32)
    np.testing.assert_array_equal(normalize(s, "none", segments), s)
    np.testing.assert_allclose(normalize(s, "global", segments), (s - 0.2) / 4.8, rtol=1e-6)
    np.testing.assert_array_equal(normalize(s, "layer", segments), [0.0, 0.5, 1.0, 0.0, 0.0, 0.0])  # 0/0 -> 0

    algo_none, algo_global, algo_layer = (make(q=0.9, norm=n) for n in ("none", "global", "layer"))
    spec = algo_none.spec
    body = spec.mask(["body.1.weight"])
    head = spec.mask(["head.weight"])
    rng = np.random.default_rng(7)
    theta_g = rng.normal(size=D).astype(np.float32)
    theta_k = theta_g.copy()
    theta_k[body] += 10 * rng.normal(size=int(body.sum())).astype(np.float32)
    theta_k[head] += 0.01 * rng.normal(size=int(head.sum())).astype(np.float32)
    masks = {a.params.norm: unpack(prep(a, 0, 1, theta_g, {"theta": theta_k})[1], D)
             for a in (algo_none, algo_global, algo_layer)}
    assert all(m.sum() == 13 for m in masks.values())
    assert not masks["none"][head].any()  # raw scores: the body's large moves win every slot
    np.testing.assert_array_equal(masks["global"], masks["none"])  # global min-max keeps the ranking
    assert masks["layer"][head].any()  # per-tensor min-max: each moved tensor's maximum scores 1

    # theta_k == theta_g: all scores zero, min-max would be 0/0; no NaN, exactly k, the model is theta_g
    for algo in (algo_global, algo_layer):
        payload, state = prep(algo, 0, 1, theta_g, {"theta": theta_g.copy()})
        assert np.isfinite(payload["model"]).all() and unpack(state, D).sum() == 13
        np.testing.assert_array_equal(payload["model"], theta_g)


def test_client_without_stored_model_starts_from_global_and_is_evaluated_with_it():
    algo = make(q=0.5, ema=True)
    theta_g = np.random.default_rng(8).normal(size=D).astype(np.float32)
    notes = {}
    payload, state = prep(algo, 4, 7, theta_g, {}, notes)
    np.testing.assert_array_equal(payload["model"], theta_g)
    assert state == {}
    metrics = algo.round_metrics(notes)
    assert metrics["fedobp_personal_count"] == 0 and metrics["fedobp_first_participation"] == 1
    assert "fedobp_mask_overlap" not in metrics
    np.testing.assert_array_equal(algo.eval_vector(ClientJob(4, 7, {"model": theta_g}, {}), None), theta_g)


def test_evaluation_uses_the_start_model_construction_without_changing_state():
    algo = make(q=0.8, ema=True, norm="layer")
    rng = np.random.default_rng(9)
    theta_g = rng.normal(size=D).astype(np.float32)
    stored = {"theta": theta_g + rng.normal(size=D).astype(np.float32),
              "ema": rng.random(D).astype(np.float32), "mask": np.packbits(np.zeros(D, dtype=bool))}
    before = {k: v.copy() for k, v in stored.items()}
    vec = algo.eval_vector(ClientJob(1, 3, {"model": theta_g}, stored), None)
    payload, _ = prep(algo, 1, 3, theta_g, stored)
    np.testing.assert_array_equal(vec, payload["model"])
    for key in before:
        np.testing.assert_array_equal(stored[key], before[key])


def test_local_update_stores_the_uploaded_model_as_theta():
    class FakeTrainer:
        def set_vector(self, vec):
            self.vec = vec + 1.0

        def train(self, job, **phase):
            pass

        def get_vector(self):
            return self.vec

        def update(self, job, upload, state):
            return ClientUpdate(job.cid, 10, upload, state)

    algo = make(q=0.5)
    job = ClientJob(3, 2, {"model": np.zeros(D, dtype=np.float32)}, {"mask": np.zeros(17, dtype=np.uint8)})
    u = algo.local_update(job, FakeTrainer())
    np.testing.assert_array_equal(u.upload["model"], np.ones(D))
    assert u.state["theta"] is u.upload["model"] and "mask" in u.state


# ----- aggregation ---------------------------------------------------------------------------------------
def _prepared_updates(algo, theta_g, uploads, sizes, thetas):
    """(updates, notes) of one round: the notes carry each client's mask to aggregate()."""
    updates, notes = [], {}
    for cid, (up, n, th) in enumerate(zip(uploads, sizes, thetas, strict=True)):
        _, state = prep(algo, cid, 1, theta_g, {"theta": th} if th is not None else {}, notes)
        updates.append(ClientUpdate(cid, n, {"model": up}, {**state, "theta": up}))
    return updates, notes


def test_exclude_personal_from_aggregation_weights_each_element_by_the_clients_that_shared_it():
    theta_g = np.zeros(D, dtype=np.float32)
    thetas = [np.zeros(D, dtype=np.float32) for _ in range(3)]
    thetas[0][[1, 2]] = [5.0, 4.0]  # client 0 keeps 1, 2 personal (k = 2)
    thetas[1][[1, 3]] = [5.0, 4.0]  # client 1 keeps 1, 3
    thetas[2] = None  # client 2 never uploaded: nothing personal
    rng = np.random.default_rng(10)
    uploads = [rng.integers(-8, 8, size=D).astype(np.float32) for _ in range(3)]
    sizes = [10, 20, 30]
    algo = make(q=0.985, norm="none", exclude_personal_from_aggregation=True)  # k = round(1.995) = 2
    new = algo.aggregate(theta_g, *_prepared_updates(algo, theta_g, uploads, sizes, thetas))
    expected = (10 * uploads[0] + 20 * uploads[1] + 30 * uploads[2]) / 60
    expected[1] = uploads[2][1]  # personal for clients 0 and 1
    expected[2] = (20 * uploads[1][2] + 30 * uploads[2][2]) / 50
    expected[3] = (10 * uploads[0][3] + 30 * uploads[2][3]) / 40
    np.testing.assert_allclose(new, expected.astype(np.float32), rtol=1e-7)

    # an element every client kept personal keeps its global value
    algo = make(q=0.985, norm="none", exclude_personal_from_aggregation=True)
    new = algo.aggregate(theta_g + 0.5, *_prepared_updates(algo, theta_g + 0.5, uploads[:2], sizes[:2], thetas[:2]))
    assert new[1] == 0.5 and new[2] == uploads[1][2] and new[3] == uploads[0][3]

    # default (the authors' code): FedAvg over all elements, personal ones included
    algo = make(q=0.985, norm="none")
    new = algo.aggregate(theta_g, *_prepared_updates(algo, theta_g, uploads, sizes, thetas))
    fedavg = Algorithm(FedOBPParams(), algo.ctx)
    np.testing.assert_array_equal(new, fedavg.aggregate(theta_g, *_prepared_updates(algo, theta_g, uploads, sizes,
                                                                                    thetas)))
    # and with nothing personal (q=1) the per-element variant is FedAvg exactly
    algo = make(q=1.0, exclude_personal_from_aggregation=True)
    np.testing.assert_array_equal(algo.aggregate(theta_g, *_prepared_updates(algo, theta_g, uploads, sizes, thetas)),
                                  fedavg.aggregate(theta_g, *_prepared_updates(algo, theta_g, uploads, sizes, thetas)))


def test_exclude_variant_refuses_updates_it_did_not_prepare():
    algo = make(q=0.5, exclude_personal_from_aggregation=True)
    u = ClientUpdate(0, 5, {"model": np.zeros(D, dtype=np.float32)}, {})
    with pytest.raises(RuntimeError, match="no mask for client 0"):
        algo.aggregate(np.zeros(D, dtype=np.float32), [u])


# ----- per-round logs ------------------------------------------------------------------------------------
def test_round_metrics_count_fraction_per_layer_and_overlap_with_previous_mask():
    algo = make(q=0.9, norm="none")  # k = 13
    rng = np.random.default_rng(11)
    theta_g = rng.normal(size=D).astype(np.float32)
    theta_k = theta_g + rng.normal(size=D).astype(np.float32)
    notes = {}
    _, s1 = prep(algo, 0, 0, theta_g, {"theta": theta_k}, notes)
    prep(algo, 1, 0, theta_g, {}, notes)  # a first-time client
    m = algo.round_metrics(notes)
    layers = {name: (a, b) for name, a, b in algo._layers}
    assert set(layers) == {"body.1", "body.3", "head"}
    mask1 = unpack(s1, D)
    assert m["fedobp_personal_count"] == 13 / 2 and m["fedobp_personal_frac"] == 13 / (2 * D)
    assert m["fedobp_first_participation"] == 1
    for name, (a, b) in layers.items():
        assert m[f"fedobp_personal_count/{name}"] == mask1[a:b].sum() / 2
        assert m[f"fedobp_personal_frac/{name}"] == mask1[a:b].sum() / (2 * (b - a))
    assert "fedobp_mask_overlap" not in m
    assert algo.round_metrics({}) == {}  # a round without clients reports nothing

    theta_g2 = theta_g + 0.3 * rng.normal(size=D).astype(np.float32)
    notes = {}
    _, s2 = prep(algo, 0, 1, theta_g2, {**s1, "theta": theta_k}, notes)
    mask2 = unpack(s2, D)
    inter = int((mask1 & mask2).sum())
    assert 0 < inter < 13  # the crafted rounds share some elements, not all
    m = algo.round_metrics(notes)
    assert m["fedobp_mask_overlap"] == inter / 13
    assert m["fedobp_mask_jaccard"] == inter / (26 - inter)
    assert s2["mask"].dtype == np.uint8 and s2["mask"].size == (D + 7) // 8  # packed: one bit per candidate


# ----- whole runs: the two limits -------------------------------------------------------------------------
def _without(history, prefix=("fedobp_",), keys=("wall_round_time",)):
    return [{k: (None if v != v else v) for k, v in h.items() if k not in keys and not k.startswith(prefix)}
            for h in history]


def test_q1_equals_fedavg(tmp_path):
    obp = run(small_config(tmp_path / "obp", "algorithm.name=fedobp", "algorithm.q=1.0"), progress=False)
    avg = run(small_config(tmp_path / "avg", "algorithm.name=fedavg"), progress=False)
    assert _without(obp.history) == _without(avg.history)
    np.testing.assert_array_equal(obp.global_vec, avg.global_vec)
    assert obp.clients.equals(avg.clients)
    assert all(h["fedobp_personal_count"] == 0 for h in obp.history)


def test_q0_equals_local_only(tmp_path):
    # q=0: every element is personal, so each client continues from its own theta_k, as Local-only does.
    # join_ratio=1 makes every client's first start theta_0 (a later first-timer would start from theta_g).
    common = ("join_ratio=1.0", "rounds=3")
    obp = run(small_config(tmp_path / "obp", "algorithm.name=fedobp", "algorithm.q=0.0", *common), progress=False)
    loc = run(small_config(tmp_path / "loc", "algorithm.name=local", *common), progress=False)
    personal = [c for c in obp.clients.columns if c.startswith("personal")]
    assert obp.clients[personal].equals(loc.clients[personal])  # per client: correct, loss, accuracy
    keys = ("train_loss", "personal_acc", "personal_acc_mean", "personal_acc_worst10", "personal_loss")
    assert [h["train_loss"] for h in obp.history] == [h["train_loss"] for h in loc.history]
    # every round, including round 1 (evaluation sees the round's fresh client states)
    assert [{k: h[k] for k in keys} for h in obp.history] == [{k: h[k] for k in keys} for h in loc.history]
    n_params = obp.global_vec.size
    assert [h["fedobp_personal_count"] for h in obp.history] == [0.0, n_params, n_params]
    assert obp.history[0]["fedobp_first_participation"] == 10


def test_disk_store_gives_the_same_run_and_keeps_theta_and_mask_per_client(tmp_path):
    args = ("algorithm.name=fedobp", "algorithm.q=0.9", "algorithm.ema=true")
    mem = run(small_config(tmp_path / "mem", *args), progress=False)
    disk = run(small_config(tmp_path / "disk", *args, "store.backend=disk", f"store.path={tmp_path}/store"),
               progress=False)
    assert _without(mem.history, prefix=()) == _without(disk.history, prefix=())
    files = sorted(p.name.split(".", 1)[1] for p in (tmp_path / "store").rglob("*.npy"))
    assert {"theta.npy", "mask.npy", "ema.npy"} <= set(files)


def test_exclude_variant_runs_and_changes_the_global_model(tmp_path):
    base = ("algorithm.name=fedobp", "algorithm.q=0.5", "rounds=2")
    a = run(small_config(tmp_path / "a", *base), progress=False)
    b = run(small_config(tmp_path / "b", *base, "algorithm.exclude_personal_from_aggregation=true"), progress=False)
    np.testing.assert_array_equal(a.history[0]["fedobp_personal_count"], b.history[0]["fedobp_personal_count"])
    assert not np.array_equal(a.global_vec, b.global_vec)


def test_ray_workers_give_the_same_run(tmp_path, ray_session):
    args = ("algorithm.name=fedobp", "algorithm.q=0.8", "algorithm.ema=true", "rounds=2")
    a = run(small_config(tmp_path / "ray", *args, "workers.use_ray=true"), progress=False)
    b = run(small_config(tmp_path / "proc", *args, "workers.use_ray=false"), progress=False)
    assert _without(a.history, prefix=()) == _without(b.history, prefix=())
    np.testing.assert_array_equal(a.global_vec, b.global_vec)
