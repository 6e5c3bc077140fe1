"""FedDPA, FedCAC and FedSelect: element-wise personalization by Fisher information, by sensitivity with
overlap-gated collaboration, and by a growing lottery-ticket-like subnetwork. Each test pins a defining mechanism
with numbers (hand computations on tiny models, crafted masks), then every algorithm runs end to end with identical
numbers in-process, on Ray and with the disk store."""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import torch

from algorithms import registry
from algorithms.base import AlgoContext, ClientJob, ClientUpdate
from algorithms.fedcac import FedCAC, FedCACParams, collaboration_threshold, collaborators, critical_mask, overlaps
from algorithms.feddpa import fisher_sums, personal_mask, tensor_distance
from algorithms.fedselect import FedSelect, FedSelectParams, grow_mask, unpack
from harness.engine import resume, run
from harness.models import build_model
from protocol.params import ParamSpec
from protocol.specs import TrainSpec
from tests.conftest import OneWorker, metrics_history, small_config

NAMES = ("feddpa", "fedcac", "fedselect")
# mlp((1,4,4), 3, hidden=5): body.1 (80 + 5), body.3 (25 + 5), head (15 + 3) = 133 elements
D = 133
SIZES = (80, 5, 25, 5, 15, 3)


def tiny(cls, params_cls, **params):
    model = build_model("mlp", (1, 4, 4), 3, hidden=5)
    ctx = AlgoContext(spec=ParamSpec.of(model), train=TrainSpec(), num_clients=8, num_classes=3, seed=0)
    return cls(params_cls(**params), ctx)


class Setup(OneWorker):
    """One algorithm on digits with one in-process worker (model + trainer) and the initial global vector."""

    def __init__(self, tmp_path, algo: str, *overrides: str):
        super().__init__(tmp_path, algo, *overrides)

    def train(self, cid: int, rnd: int, global_vec: np.ndarray, state: dict | None = None, notes: dict | None = None):
        sent = self.algo.server_prepare(cid, rnd, global_vec, dict(state or {}))
        if notes is not None:
            notes[cid] = sent.note
        return self.worker.train([ClientJob(cid, rnd, sent.payload, sent.state)])[0]

    def job(self, cid: int, rnd: int, global_vec: np.ndarray, state: dict | None = None) -> ClientJob:
        job = ClientJob(cid, rnd, {"model": global_vec}, dict(state or {}))
        self.trainer.start(job)
        return job

    def batches_per_epoch(self, cid: int) -> int:
        return math.ceil(len(self.data.train_of(cid)) / self.cfg.train.batch_size)


# ----- registration -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_registered_with_documented_defaults(name):
    cls = registry.get(name)
    assert cls.source and all(f.description for f in cls.Params.model_fields.values())
    assert len(inspect.getsource(inspect.getmodule(cls)).splitlines()) < 400
    defaults = {k: f.default for k, f in cls.Params.model_fields.items()}
    expected = {"feddpa": {"fisher_threshold": 0.4, "lambda_1": 0.1, "lambda_2": 0.05, "clipping_bound": 0.5,
                           "clip": False, "noise_multiplier": 0.0, "selection": "threshold"},
                "fedcac": {"tau": 0.5, "beta": 100},
                "fedselect": {"p": 0.25, "alpha": 0.8, "candidates": "all"}}[name]
    assert defaults == expected


# ----- FedDPA -------------------------------------------------------------------------------------------------------
def test_feddpa_fisher_split_matches_a_hand_computation_on_a_tiny_model():
    torch.manual_seed(0)
    model = build_model("mlp", (1, 4, 4), 3, hidden=5).eval()
    spec = ParamSpec.of(model)
    x, y = torch.randn(7, 1, 4, 4), torch.tensor([0, 1, 2, 2, 1, 0, 2])
    hand = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in model.named_parameters()}
    for i in range(len(y)):  # one sample at a time, plain autograd
        logp = torch.log_softmax(model(x[i : i + 1]), dim=1)[0, y[i]]
        for (n, _), g in zip(model.named_parameters(), torch.autograd.grad(logp, list(model.parameters())),
                             strict=True):
            hand[n] += g.double() ** 2
    sums = fisher_sums(model, x, y)
    for n in hand:
        torch.testing.assert_close(sums[n], hand[n], rtol=1e-6, atol=1e-12)
    fisher = np.concatenate([(hand[s.name] / len(y)).reshape(-1).numpy() for s in spec.slots])
    segments = [(s.start, s.stop) for s in spec.slots]
    mask = personal_mask(fisher, segments, 0.4)
    expected = 0
    for a, b in segments:  # min-max within the tensor, then > 0.4, counted by hand
        z = (fisher[a:b] - fisher[a:b].min()) / (fisher[a:b].max() - fisher[a:b].min())
        expected += int(sum(1 for v in z if v > 0.4))
        np.testing.assert_array_equal(mask[a:b], z > 0.4)
    assert mask.sum() == expected and 0 < expected < D
    # crafted values: per tensor (0, 1, 2, 3, 4) -> (0, .25, .5, .75, 1): three above 0.4; a constant tensor: none
    crafted = np.array([0, 1, 2, 3, 4, 7, 7, 7], dtype=np.float64)
    assert personal_mask(crafted, [(0, 5), (5, 8)], 0.4).tolist() == [False, False, True, True, True] + [False] * 3
    # the FL-bench fork's rule: above the tau-quantile of the normalised values (3 of 5 at tau 0.4 on 0..4)
    skew = np.array([0, 0, 0, 1, 10], dtype=np.float64)
    assert personal_mask(skew, [(0, 5)], 0.4).tolist() == [False, False, False, False, True]
    assert personal_mask(skew, [(0, 5)], 0.4, "quantile").tolist() == [False, False, False, True, True]


def test_feddpa_personal_elements_stay_personal_and_each_phase_trains_only_its_part(tmp_path):
    s = Setup(tmp_path, "feddpa")
    u = s.train(0, 0, s.init)
    mask = unpack(u.state["mask"], s.spec.size)
    assert 0 < mask.sum() < s.spec.size and u.upload["model"].dtype == np.float32
    # the stored mask is the split of the model the client keeps: Fisher of theta_k over its training data
    job = s.job(0, 1, s.init, {})
    np.testing.assert_array_equal(s.algo.mask_from(s.algo.fisher(job, s.trainer, u.state["theta"])), mask)
    # evaluation and the next start: own values on personal elements, the current global model elsewhere
    g1 = s.algo.aggregate(s.init, [u, s.train(1, 0, s.init)])
    ev = s.algo.eval_vector(s.job(0, 1, g1, u.state), s.trainer)
    np.testing.assert_array_equal(ev[mask], u.state["theta"][mask])
    np.testing.assert_array_equal(ev[~mask], g1[~mask])
    np.testing.assert_array_equal(s.algo.eval_vector(s.job(5, 1, g1, {}), s.trainer), g1)  # never trained
    # phase 1 moves only personal elements, phase 2 only shared ones (bit-exact, with momentum and weight decay)
    t = Setup(tmp_path / "wd", "feddpa", "train.momentum=0.9", "train.weight_decay=0.01")
    job = t.job(0, 1, g1, u.state)
    start = np.where(mask, u.state["theta"], g1)
    t.trainer.set_vector(start)
    steps = t.algo.personal_phase(job, t.trainer, g1, mask).steps
    mid = t.trainer.get_vector()
    assert steps == t.batches_per_epoch(0)
    np.testing.assert_array_equal(mid[~mask], start[~mask])
    assert not np.array_equal(mid[mask], start[mask])
    t.algo.shared_phase(job, t.trainer, g1, mask)
    end = t.trainer.get_vector()
    np.testing.assert_array_equal(end[mask], mid[mask])
    assert not np.array_equal(end[~mask], mid[~mask])


def test_feddpa_constraints_pull_the_right_part(tmp_path):
    # the regulariser's norm and gradient: sum_l ||theta_l - g_l||, gradient (theta_l - g_l) / ||theta_l - g_l||
    model = build_model("mlp", (1, 4, 4), 3, hidden=5)
    anchors = {n: p.detach() + 0.1 * torch.randn_like(p) for n, p in model.named_parameters()}
    dist = tensor_distance(anchors)(model)
    dist.backward()
    expected = sum(float(torch.linalg.vector_norm(p.detach() - anchors[n])) for n, p in model.named_parameters())
    assert float(dist.detach()) == pytest.approx(expected, rel=1e-6)
    for n, p in model.named_parameters():
        diff = p.detach() - anchors[n]
        torch.testing.assert_close(p.grad, diff / torch.linalg.vector_norm(diff))
    # R1: a larger lambda_1 keeps the personal elements closer to the global model; the shared ones never move
    # (plain SGD with a small step: the pull of an unsquared norm has a constant size and overshoots big steps)
    sgd = ("train.local_epochs=3", "train.lr=0.01", "train.momentum=0")
    s = Setup(tmp_path, "feddpa", *sgd)
    g = s.init
    local = g + np.random.default_rng(0).normal(0, 0.2, g.shape).astype(np.float32)
    mask = s.algo.mask_from(s.algo.fisher(s.job(0, 0, g), s.trainer, local))
    pulled = {}
    for lam in (0.0, 0.5, 2.0):
        t = Setup(tmp_path / f"l1_{lam}", "feddpa", *sgd, f"algorithm.lambda_1={lam}")
        job = t.job(0, 0, g)
        t.trainer.set_vector(np.where(mask, local, g))
        t.algo.personal_phase(job, t.trainer, g, mask)
        after = t.trainer.get_vector()
        np.testing.assert_array_equal(after[~mask], g[~mask])
        pulled[lam] = float(np.linalg.norm(after[mask] - g[mask]))
    assert pulled[0.0] > pulled[0.5] > pulled[2.0]
    # R2: a larger lambda_2 brings the update's norm sum_l ||theta_l - g_l|| towards the bound C
    gaps = {}
    for lam in (0.0, 5.0):
        t = Setup(tmp_path / f"l2_{lam}", "feddpa", "train.local_epochs=3", f"algorithm.lambda_2={lam}",
                  "algorithm.clipping_bound=0.2")
        job = t.job(0, 0, g)
        t.trainer.set_vector(g)
        t.algo.shared_phase(job, t.trainer, g, mask)
        norm = sum(float(np.linalg.norm(t.trainer.get_vector()[a:b] - g[a:b])) for a, b in t.algo.segments)
        gaps[lam] = abs(norm - 0.2)
    assert gaps[5.0] < 0.5 * gaps[0.0]


def test_feddpa_dp_clipping_and_noise_are_options_off_by_default(tmp_path):
    s = Setup(tmp_path, "feddpa")
    u = s.train(0, 0, s.init)
    np.testing.assert_array_equal(u.upload["model"], u.state["theta"])  # default: the trained model as it is
    c = Setup(tmp_path / "clip", "feddpa", "algorithm.clip=true", "algorithm.clipping_bound=0.05")
    uc = c.train(0, 0, c.init)
    delta = uc.upload["model"] - c.init
    assert float(np.linalg.norm(delta.astype(np.float64))) == pytest.approx(0.05, rel=1e-4)
    np.testing.assert_array_equal(uc.state["theta"], u.state["theta"])  # the client keeps its noise-free model
    n = Setup(tmp_path / "noise", "feddpa", "algorithm.clip=true", "algorithm.noise_multiplier=2.0")
    un, again = n.train(0, 0, n.init), n.train(0, 0, n.init)
    np.testing.assert_array_equal(un.upload["model"], again.upload["model"])  # noise from (seed, purpose, round, cid)
    assert not np.array_equal(un.upload["model"], n.train(1, 0, n.init).upload["model"])
    clip_only = Setup(tmp_path / "c5", "feddpa", "algorithm.clip=true").algo
    noise = (un.upload["model"].astype(np.float64) - clip_only.privatize(ClientJob(0, 0, {}, {}), n.init,
                                                                         un.state["theta"]))[n.algo.trainable]
    std = 2.0 * 0.5 / math.sqrt(n.cfg.partition.num_clients)  # z C / sqrt(N), the authors' code
    assert abs(noise.std() - std) < 0.05 * std and abs(noise.mean()) < 0.05 * std


# ----- FedCAC -------------------------------------------------------------------------------------------------------
def test_fedcac_critical_set_is_exactly_floor_tau_n_per_tensor_of_largest_sensitivity(tmp_path):
    rng = np.random.default_rng(1)
    segments = [(a - n, a) for n, a in zip(SIZES, np.cumsum(SIZES), strict=True)]
    score = np.round(rng.random(D), 1)  # many ties
    for tau in (0.3, 0.5, 0.29):
        mask = critical_mask(score, segments, tau)
        for a, b in segments:
            k = math.floor(round(tau * 100) * (b - a) / 100)
            assert mask[a:b].sum() == k
            if 0 < k < b - a:
                assert score[a:b][mask[a:b]].min() >= score[a:b][~mask[a:b]].max()
    s = Setup(tmp_path, "fedcac", "algorithm.tau=0.3")
    u = s.train(0, 0, s.init)
    counts = [math.floor(0.3 * sl.size + 1e-9) for sl in s.spec.slots if sl.trainable]
    crit = unpack(u.upload["mask"], s.spec.size)
    assert crit.sum() == sum(counts)
    np.testing.assert_array_equal(u.state["mask"], u.upload["mask"])
    score = np.abs((u.state["theta"] - s.init) * u.state["theta"])
    np.testing.assert_array_equal(crit, critical_mask(score, s.algo.segments, 0.3))


def craft_masks() -> dict[int, np.ndarray]:
    """Four clients, four critical elements each among the first eight (overlaps in quarters)."""
    bits = {10: "11110000", 11: "11101000", 12: "11001100", 13: "00001111"}
    out = {}
    for cid, b in bits.items():
        m = np.zeros(D, dtype=bool)
        m[:8] = [c == "1" for c in b]
        out[cid] = m
    return out


def test_fedcac_collaboration_only_between_clients_whose_critical_sets_overlap_beyond_the_threshold():
    masks = craft_masks()
    packed = {c: np.packbits(m) for c, m in masks.items()}
    pool = np.stack([packed[c] for c in sorted(packed)])
    # |M_i & M_j| / 4 by hand: AB .75, AC .5, AD 0, BC .75, BD .25, CD .5
    hand = np.array([[1, .75, .5, 0], [.75, 1, .75, .25], [.5, .75, 1, .5], [0, .25, .5, 1]])
    for i, c in enumerate(sorted(packed)):
        np.testing.assert_allclose(overlaps(packed[c], pool), hand[i])
    avg, top = 2 * 2.75 / 12, 0.75
    assert collaboration_threshold(pool, 0, 2) == pytest.approx(avg + 0.5 * (top - avg))  # 0.604
    cids = np.array(sorted(packed))
    algo = tiny(FedCAC, FedCACParams, beta=2)
    rng = np.random.default_rng(2)
    thetas = {c: rng.normal(size=D).astype(np.float32) for c in cids}
    ups = [ClientUpdate(int(c), 10 + int(c), {"model": thetas[c], "mask": packed[c]}, {}) for c in cids]
    g = rng.normal(size=D).astype(np.float32)
    g1 = algo.aggregate(g, ups, {int(c): {"round": 0} for c in cids})
    weights = sum(u.num_samples * u.upload["model"].astype(np.float64) for u in ups) / sum(u.num_samples for u in ups)
    np.testing.assert_allclose(g1, weights.astype(np.float32), rtol=1e-6)  # the global model: FedAvg of everything
    # threshold 0.604: 10 <-> 11 and 11 <-> 12 collaborate; 13 overlaps at most .5 and stays alone
    expected = {10: [10, 11], 11: [10, 11, 12], 12: [11, 12], 13: [13]}
    matrix = np.zeros((4, 4))
    for i, c in enumerate(cids):
        chosen = collaborators(int(c), packed[c], cids, pool, algo.pool_threshold)
        peers = sorted([int(c)] + [int(cids[j]) for j in chosen])
        assert peers == expected[int(c)]
        matrix[i, [list(cids).index(p) for p in peers]] = 1.0 / len(peers)
        sent = algo.server_prepare(int(c), 1, g1, {"theta": thetas[c], "mask": packed[c]})
        start, crit = sent.payload["model"], masks[c]
        mean = np.mean([thetas[p].astype(np.float64) for p in peers], axis=0).astype(np.float32)
        np.testing.assert_allclose(start[crit], mean[crit], rtol=1e-6)
        np.testing.assert_array_equal(start[~crit], g1[~crit])  # non-critical: the global model
        assert sent.note["collaborators"] == len(peers) and sent.state == {}
    off = ~np.eye(4, dtype=bool)
    assert ((matrix[off] > 0) == (hand[off] >= algo.pool_threshold)).all()  # non-zero exactly beyond the threshold
    # a client outside the pool with A's critical set: collaborates with 10 (overlap 1) and 11 (.75)
    mine = rng.normal(size=D).astype(np.float32)
    start = algo.server_prepare(20, 1, g1, {"theta": mine, "mask": packed[10]}).payload["model"]
    np.testing.assert_allclose(start[masks[10]], ((mine + thetas[10] + thetas[11]) / 3)[masks[10]], rtol=1e-6)
    np.testing.assert_array_equal(algo.server_prepare(21, 1, g1, {}).payload["model"], g1)  # never trained
    # cautious later: at (t+1)/beta = 1 the threshold is the largest overlap, beyond it nobody collaborates
    assert collaboration_threshold(pool, 1, 2) == pytest.approx(top)
    assert collaboration_threshold(pool, 2, 2) > top
    at_max = tiny(FedCAC, FedCACParams, beta=2)
    at_max.aggregate(g, ups, {int(c): {"round": 1} for c in cids})  # only the pairs at the largest overlap (>=)
    assert [[int(cids[j]) for j in collaborators(int(c), packed[c], cids, pool, at_max.pool_threshold)]
            for c in cids] == [[11], [10, 12], [11], []]
    later = tiny(FedCAC, FedCACParams, beta=2)
    later.aggregate(g, ups, {int(c): {"round": 2} for c in cids})
    assert all(len(collaborators(int(c), packed[c], cids, pool, later.pool_threshold)) == 0 for c in cids)
    # the pool is server state: it survives a checkpoint round trip
    restored = tiny(FedCAC, FedCACParams, beta=2)
    restored.load_server_state(algo.server_state())
    np.testing.assert_array_equal(restored.server_prepare(11, 1, g1, {"theta": thetas[11], "mask": packed[11]})
                                  .payload["model"], algo.server_prepare(11, 1, g1, {"theta": thetas[11],
                                                                                     "mask": packed[11]})
                                  .payload["model"])


def test_fedcac_evaluates_own_critical_elements_with_the_global_rest(tmp_path):
    s = Setup(tmp_path, "fedcac")
    u = s.train(0, 0, s.init)
    g1 = s.algo.aggregate(s.init, [u, s.train(1, 0, s.init)], {0: {"round": 0}, 1: {"round": 0}})
    crit = unpack(u.state["mask"], s.spec.size)
    ev = s.algo.eval_vector(s.job(0, 1, g1, u.state), s.trainer)
    np.testing.assert_array_equal(ev[crit], u.state["theta"][crit])
    np.testing.assert_array_equal(ev[~crit], g1[~crit])
    assert s.algo.bytes_up(u) == 4 * s.spec.size + (s.spec.size + 7) // 8


# ----- FedSelect ----------------------------------------------------------------------------------------------------
def test_fedselect_personal_set_only_grows_by_the_rate_up_to_the_limit():
    rng = np.random.default_rng(3)
    segments = [(a - n, a) for n, a in zip(SIZES, np.cumsum(SIZES), strict=True)]
    mask = np.zeros(D, dtype=bool)
    for _ in range(12):
        delta = rng.random(D)
        new = grow_mask(mask, delta, segments, 0.25, 0.8)
        assert (new | mask == new).all()  # never shrinks
        for a, b in segments:
            n, c = b - a, int(mask[a:b].sum())
            added = new[a:b] & ~mask[a:b]
            assert added.sum() == min(math.floor(0.25 * (n - c) + 0.5), math.floor(0.8 * n) - c)
            if added.any() and (~new[a:b]).any():  # the largest changes among the still-shared elements
                assert delta[a:b][added].min() >= delta[a:b][~new[a:b]].max()
            assert new[a:b].sum() <= math.floor(0.8 * n)
        mask = new
    assert [int(mask[a:b].sum()) for a, b in segments] == [math.floor(0.8 * n) for n in SIZES]  # saturated at alpha


def test_fedselect_aggregates_each_element_over_the_clients_that_share_it():
    algo = tiny(FedSelect, FedSelectParams)
    rng = np.random.default_rng(4)
    g = rng.normal(size=D).astype(np.float32)
    masks = [np.zeros(D, dtype=bool) for _ in range(3)]
    masks[0][[0, 1, 2]] = True
    masks[1][[1, 2]] = True
    masks[2][[2, 5]] = True
    models = [rng.normal(size=D).astype(np.float32) for _ in range(3)]
    ups = [ClientUpdate(c, 10 * (c + 1), {"model": models[c], "mask": np.packbits(masks[c])}, {}) for c in range(3)]
    new = algo.aggregate(g, ups)
    np.testing.assert_allclose(new[0], (models[1][0] + models[2][0]) / 2, rtol=1e-6)  # client 0 keeps it personal
    np.testing.assert_allclose(new[1], models[2][1], rtol=1e-6)
    assert new[2] == g[2]  # personal for every uploader: the global value stays
    np.testing.assert_allclose(new[5], (models[0][5] + models[1][5]) / 2, rtol=1e-6)
    equal = np.mean(np.array(models, dtype=np.float64), axis=0)  # equal weights, not by samples
    np.testing.assert_allclose(new[10:], equal[10:], rtol=1e-6)
    changed = [m.copy() for m in models]
    for c in range(3):
        changed[c][masks[c]] += 100.0  # personal values never reach the server's average
    again = algo.aggregate(g, [ClientUpdate(u.cid, u.num_samples, {"model": changed[u.cid], "mask": u.upload["mask"]},
                                            {}) for u in ups])
    np.testing.assert_array_equal(again, new)
    assert algo.bytes_up(ups[0]) == 4 * (D - 3) + (D + 7) // 8


def test_fedselect_grows_the_mask_per_participation_and_keeps_personal_values(tmp_path):
    s = Setup(tmp_path, "fedselect")
    segments = s.algo.segments
    g, state, prev = s.init, {}, np.zeros(s.spec.size, dtype=bool)
    for rnd in range(3):
        u = s.train(0, rnd, g, state)
        # first participation: nothing personal yet, so no personal epoch (one shared epoch only)
        assert u.steps == (1 if rnd == 0 else 2) * s.batches_per_epoch(0)
        mask = unpack(u.state["mask"], s.spec.size)
        assert (mask | prev == mask).all() and mask.sum() > prev.sum()
        for a, b in segments:
            n, c = b - a, int(prev[a:b].sum())
            assert mask[a:b].sum() == c + min(math.floor(0.25 * (n - c) + 0.5), math.floor(0.8 * n) - c)
        np.testing.assert_array_equal(u.state["personal"], u.upload["model"][mask])
        g = s.algo.aggregate(g, [u, s.train(1, rnd, g)])
        ev = s.algo.eval_vector(s.job(0, rnd + 1, g, u.state), s.trainer)
        np.testing.assert_array_equal(ev[mask], u.upload["model"][mask])
        np.testing.assert_array_equal(ev[~mask], g[~mask])
        state, prev = u.state, mask


# ----- every algorithm end to end -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_identical_numbers_in_process_on_ray_and_with_the_disk_store(tmp_path, ray_session, name):
    args = (f"algorithm.name={name}", "rounds=3", "join_ratio=0.6", "train.local_epochs=2", "train.lr=0.1")
    ref = run(small_config(tmp_path / "proc", *args), progress=False)
    on_ray = run(small_config(tmp_path / "ray", *args, "workers.use_ray=true"), progress=False)
    disk = run(small_config(tmp_path / "disk", *args, "store.backend=disk", f"store.path={tmp_path}/store"),
               progress=False)
    assert metrics_history(on_ray) == metrics_history(ref)
    assert metrics_history(disk) == metrics_history(ref)
    np.testing.assert_array_equal(on_ray.global_vec, ref.global_vec)
    np.testing.assert_array_equal(disk.global_vec, ref.global_vec)
    assert ref.final["personal_acc"] > 0.3  # chance is 0.1
    keys = {p.name.split(".", 1)[1] for p in (tmp_path / "store").rglob("*.npy")}
    assert keys == {"fedselect": {"mask.npy", "personal.npy"}}.get(name, {"theta.npy", "mask.npy"})
    if name == "fedcac":
        assert any("fedcac_collaborators_mean" in h for h in ref.history[1:])


def test_fedcac_collaboration_pool_survives_a_resume(tmp_path):
    overrides = ["algorithm.name=fedcac", "rounds=4", "store.backend=disk", "tracking.enabled=true"]
    whole = run(small_config(tmp_path / "whole", *overrides), progress=False)
    cfg = small_config(tmp_path / "cut", *overrides)
    first = run(cfg, progress=False, stop_after=2)
    resumed = resume(first.run_id, cfg.checkpoint_dir, progress=False)
    assert metrics_history(resumed) == metrics_history(whole)
    np.testing.assert_array_equal(resumed.global_vec, whole.global_vec)
