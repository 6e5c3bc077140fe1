"""Per-FedAvg (FO, HF), pFedMe, IFCA and FedAMP: each test pins a defining mechanism with numbers (hand computations
on tiny models and crafted examples), then every algorithm runs end to end with identical numbers in-process, on
Ray, with the disk store and after a resume."""

from __future__ import annotations

import copy
import inspect

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from algorithms import registry
from algorithms.base import AlgoContext, ClientJob, ClientUpdate
from algorithms.clusters import ClusterCopies
from algorithms.fedamp import FedAMP, FedAMPParams, attention_weights, cloud_model, heuristic_weights
from algorithms.ifca import IFCA, IFCAParams
from algorithms.perfedavg import hvp_difference, hvp_exact, meta_step, model_loss
from algorithms.pfedme import inner_step, moreau_step, server_mix, solve_inner
from harness.engine import resume, run
from harness.engine.executor import ActorCache, make_executor
from harness.engine.training import LocalTrainer
from harness.models import build_model
from partitions import build_federated_dataset
from protocol.params import ParamSpec
from protocol.rng import rng
from protocol.specs import TrainSpec
from tests.conftest import OneWorker, metrics_history, small_config

NAMES = ("perfedavg_fo", "perfedavg_hf", "pfedme", "ifca", "fedamp")


class Setup(OneWorker):
    """One algorithm on digits (a tiny MLP) with one in-process worker and the initial global vector."""

    def __init__(self, tmp_path, algo: str, *overrides: str):
        super().__init__(tmp_path, algo, "model.options.hidden=4", *overrides)

    def client_with(self, batches: int) -> int:
        return next(c for c in range(self.data.num_clients) if len(self.data.train_of(c)) >= batches * self.batch)

    def train(self, cid: int, rnd: int, global_vec: np.ndarray, state=None, max_steps=None) -> ClientUpdate:
        sent = self.algo.server_prepare(cid, rnd, global_vec, dict(state or {}))
        return self.worker.train([ClientJob(cid, rnd, sent.payload, sent.state, max_steps)])[0]

    def order(self, purpose: str, cid: int, rnd: int) -> np.ndarray:
        """The client's training indices in the order of its first shuffled epoch for `purpose`."""
        index = self.data.train_of(cid)
        return index[rng(self.cfg.seed, purpose, rnd, cid).permutation(len(index))]

    def batch_at(self, order: np.ndarray, i: int):
        return self.trainer.tensors(order[i * self.batch : (i + 1) * self.batch])


def named(model, vec: np.ndarray, spec: ParamSpec) -> dict[str, torch.Tensor]:
    """The model's parameters taken from a flat vector, as float64 leaves."""
    return {n: torch.tensor(vec[spec.slot(n).start : spec.slot(n).stop], dtype=torch.float64).view(spec.slot(n).shape)
            for n, _ in model.named_parameters()}


def flat(params: dict[str, torch.Tensor], spec: ParamSpec, like: np.ndarray) -> np.ndarray:
    out = like.astype(np.float64).copy()
    for n, t in params.items():
        out[spec.slot(n).start : spec.slot(n).stop] = t.detach().reshape(-1).numpy()
    return out


def grad(model, params, x, y) -> dict[str, torch.Tensor]:
    leaves = {n: t.detach().clone().requires_grad_() for n, t in params.items()}
    loss = F.cross_entropy(functional_call(model, leaves, (x.double(),)), y)
    return dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values())), strict=True))


# ----- registration -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_registered_with_documented_defaults(name):
    cls = registry.get(name)
    assert cls.source and all(f.description for f in cls.Params.model_fields.values())
    assert len(inspect.getsource(inspect.getmodule(cls)).splitlines()) < 400
    defaults = {k: f.default for k, f in cls.Params.model_fields.items()}
    fo = {"alpha": 0.005, "beta": 0.001, "eval_steps": 1, "weighting": "uniform"}
    expected = {"perfedavg_fo": fo, "perfedavg_hf": fo | {"delta": 0.001, "hvp": "difference"},
                "pfedme": {"lam": 15.0, "K": 5, "personal_lr": 0.01, "beta": 1.0, "weighting": "uniform"},
                "ifca": {"k": 3, "weighting": "uniform"},
                "fedamp": {"lam": 1.0, "alpha_k": 1.0, "sigma": 1.0, "heuristic": False, "self_weight": None}}[name]
    assert defaults == expected


# ----- Per-FedAvg ---------------------------------------------------------------------------------------------------
def test_perfedavg_fo_step_is_the_first_order_maml_update_and_evaluation_adapts_one_step(tmp_path):
    s = Setup(tmp_path, "perfedavg_fo", "algorithm.alpha=0.3", "algorithm.beta=0.2")
    cid = s.client_with(2)
    u = s.train(cid, 1, s.init, max_steps=2)  # the budget affords exactly one meta-step (two gradient passes)
    assert (u.steps, u.metrics["meta_steps"]) == (2, 1.0)
    order = s.order("perfedavg", cid, 1)
    (x0, y0), (x1, y1) = s.batch_at(order, 0), s.batch_at(order, 1)  # adapt on D, update on D'
    model, spec = copy.deepcopy(s.trainer.model).double(), s.algo.spec
    w = named(model, s.init, spec)
    g0 = grad(model, w, x0, y0)
    adapted = {n: w[n] - 0.3 * g0[n] for n in w}
    g1 = grad(model, adapted, x1, y1)
    expected = flat({n: w[n] - 0.2 * g1[n] for n in w}, spec, s.init)
    np.testing.assert_allclose(u.upload["model"], expected, rtol=1e-4, atol=1e-6)
    plain = flat({n: w[n] - 0.2 * grad(model, w, x1, y1)[n] for n in w}, spec, s.init)  # no adaptation: FedSGD
    assert np.abs(u.upload["model"] - plain).max() > 100 * np.abs(u.upload["model"] - expected).max()
    # personalization at evaluation: one alpha-step on the first batch of the client's evaluation stream
    job = ClientJob(cid, 2, {"model": s.init}, {})
    s.trainer.start(job)
    xe, ye = s.batch_at(s.order("perfedavg-eval", cid, 2), 0)
    one_step = flat({n: w[n] - 0.3 * grad(model, w, xe, ye)[n] for n in w}, spec, s.init)
    np.testing.assert_allclose(s.algo.eval_vector(job, s.trainer), one_step, rtol=1e-4, atol=1e-6)


def test_perfedavg_hf_correction_is_the_hessian_vector_product():
    torch.manual_seed(0)
    model = build_model("mlp", (1, 4, 4), 3, hidden=5).double()
    theta = {n: p.detach().clone() for n, p in model.named_parameters()}
    batches = [(torch.randn(6, 1, 4, 4, dtype=torch.float64), torch.randint(0, 3, (6,))) for _ in range(3)]
    loss_fn = model_loss(model)
    v = {n: torch.randn_like(t) for n, t in theta.items()}
    names = list(theta)

    def f(*params):
        return loss_fn(dict(zip(names, params, strict=True)), batches[2])

    _, reference = torch.autograd.functional.hvp(f, tuple(theta.values()), tuple(v.values()))
    exact, difference = hvp_exact(loss_fn, theta, v, batches[2]), hvp_difference(loss_fn, theta, v, batches[2], 1e-4)
    for n, ref in zip(names, reference, strict=True):
        torch.testing.assert_close(exact[n], ref, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(difference[n], ref, rtol=1e-4, atol=1e-6)  # O(delta^2)
    # the HF step is the FO step plus beta * alpha * H(w; D'') g with g = grad f(w_tilde; D')
    alpha, beta = 0.3, 0.2
    fo, _ = meta_step(loss_fn, theta, batches, alpha, beta)
    hf, _ = meta_step(loss_fn, theta, batches, alpha, beta, hessian="exact")
    g0 = grad(model, theta, *batches[0])
    g1 = grad(model, {n: theta[n] - alpha * g0[n] for n in names}, *batches[1])
    _, h = torch.autograd.functional.hvp(f, tuple(theta.values()), tuple(g1[n] for n in names))
    for n, hn in zip(names, h, strict=True):
        torch.testing.assert_close(hf[n] - fo[n], beta * alpha * hn, rtol=1e-8, atol=1e-12)
        assert hn.abs().max() > 0


def test_perfedavg_hf_client_step_matches_the_hand_formula_and_costs_four_passes(tmp_path):
    s = Setup(tmp_path, "perfedavg_hf", "algorithm.alpha=0.3", "algorithm.beta=0.2", "algorithm.hvp=exact")
    cid = s.client_with(3)
    u = s.train(cid, 0, s.init, max_steps=4)
    assert (u.steps, u.metrics["meta_steps"]) == (4, 1.0)
    order = s.order("perfedavg", cid, 0)
    (x0, y0), (x1, y1), (x2, y2) = (s.batch_at(order, i) for i in range(3))
    model, spec = copy.deepcopy(s.trainer.model).double(), s.algo.spec
    w = named(model, s.init, spec)
    names = list(w)
    g0 = grad(model, w, x0, y0)
    g1 = grad(model, {n: w[n] - 0.3 * g0[n] for n in names}, x1, y1)

    def f(*params):
        return F.cross_entropy(functional_call(model, dict(zip(names, params, strict=True)), (x2.double(),)), y2)

    _, h = torch.autograd.functional.hvp(f, tuple(w.values()), tuple(g1[n] for n in names))
    expected = flat({n: w[n] - 0.2 * (g1[n] - 0.3 * hn) for n, hn in zip(names, h, strict=True)}, spec, s.init)
    np.testing.assert_allclose(u.upload["model"], expected, rtol=1e-4, atol=1e-6)


# ----- pFedMe -------------------------------------------------------------------------------------------------------
def test_pfedme_inner_problem_converges_to_the_proximal_point_of_a_quadratic():
    h, c = torch.tensor([1.0, 4.0, 0.5], dtype=torch.float64), torch.tensor([2.0, -1.0, 3.0], dtype=torch.float64)
    w = [torch.tensor([0.5, 0.5, -1.0], dtype=torch.float64)]
    lam = 15.0
    theta = [w[0].clone()]

    def grad_fn():  # f(theta) = 1/2 sum h (theta - c)^2
        return 0.5 * (h * (theta[0] - c) ** 2).sum(), [h * (theta[0] - c)]

    before = theta[0].clone()
    inner_step(theta, grad_fn()[1], w, lam, 0.01)  # one step: the gradient is grad f + lam (theta - w), by hand
    torch.testing.assert_close(theta[0], before - 0.01 * (h * (before - c) + lam * (before - w[0])))
    solve_inner(theta, w, grad_fn, 2000, lam, 0.01)
    torch.testing.assert_close(theta[0], (h * c + lam * w[0]) / (h + lam), rtol=1e-9, atol=1e-9)
    moved = [w[0].clone()]
    moreau_step(moved, theta, 0.005, lam)  # w <- w - eta lam (w - theta)
    torch.testing.assert_close(moved[0], w[0] - 0.005 * lam * (w[0] - theta[0]))
    g = np.array([1.0, 2.0], np.float32)
    np.testing.assert_allclose(server_mix(g, np.array([3.0, 6.0]), 0.25), 0.75 * g + 0.25 * np.array([3.0, 6.0]))


def test_pfedme_client_runs_k_inner_steps_then_moves_w_towards_theta(tmp_path):
    s = Setup(tmp_path, "pfedme", "algorithm.K=2", "algorithm.personal_lr=0.05", "algorithm.lam=3")
    cid = s.client_with(1)
    u = s.train(cid, 0, s.init, max_steps=2)  # one local iteration (one batch = K = 2 gradient passes)
    assert (u.steps, u.metrics["local_iterations"]) == (2, 1.0)
    x, y = s.batch_at(s.order("batches", cid, 0), 0)
    model, spec = copy.deepcopy(s.trainer.model).double(), s.algo.spec
    w = named(model, s.init, spec)
    theta = dict(w)
    for _ in range(2):
        g = grad(model, theta, x, y)
        theta = {n: theta[n] - 0.05 * (g[n] + 3 * (theta[n] - w[n])) for n in w}
    np.testing.assert_allclose(u.state["theta"], flat(theta, spec, s.init), rtol=1e-4, atol=1e-6)
    eta = s.cfg.train.lr
    np.testing.assert_allclose(u.upload["model"], flat({n: w[n] - eta * 3 * (w[n] - theta[n]) for n in w}, spec,
                                                       s.init), rtol=1e-4, atol=1e-6)
    # the server: (1 - beta) w + beta * uniform mean of the uploads (sample counts ignored)
    s2 = Setup(tmp_path / "b", "pfedme", "algorithm.beta=0.5")
    ups = [ClientUpdate(c, n, {"model": np.full(s.init.size, v, np.float32)}, {}) for c, n, v in ((0, 5, 1.0),
                                                                                                  (1, 50, 3.0))]
    np.testing.assert_allclose(s2.algo.aggregate(np.zeros_like(s.init), ups), 1.0)
    assert s2.algo.eval_vector(ClientJob(0, 0, {"model": s.init}, u.state), s2.trainer) is u.state["theta"]


# ----- IFCA ---------------------------------------------------------------------------------------------------------
def test_ifca_clients_pick_the_lowest_loss_cluster_and_clusters_average_only_their_members(tmp_path):
    cfg = small_config(tmp_path, "algorithm.name=ifca")
    data = build_federated_dataset(cfg.data, cfg.partition, cfg.seed)
    model = ClusterCopies(build_model("mlp", data.input_shape, data.num_classes, hidden=4), 2, fresh_init=True)
    spec = ParamSpec.of(model)
    algo = IFCA(IFCAParams(k=2), AlgoContext(spec, cfg.train, data.num_clients, data.num_classes, 0))
    trainer = LocalTrainer(model, spec, data, cfg.train, torch.device("cpu"), 0)
    # crafted clusters: all weights zero, cluster 0's head bias favours labels 0-4, cluster 1's labels 5-9
    vec = np.zeros(spec.size, np.float32)
    for j in range(2):
        b = spec.slot(f"clusters.{j}.head.bias")
        vec[b.start : b.stop] = np.where(np.arange(10) < 5, 4.0, -4.0) * (1 if j == 0 else -1)
    counts = data.label_counts("train")
    low = (counts[:, :5].sum(1) > counts[:, 5:].sum(1)).astype(int)  # 1: mostly labels 0-4
    clear = counts[:, :5].sum(1) != counts[:, 5:].sum(1)  # no tie between the two clusters' losses
    assert 0 < low[clear].sum() < clear.sum()
    ups = []
    for cid in range(data.num_clients):
        sent = algo.server_prepare(cid, 0, vec, {})
        assert algo.bytes_down(sent.payload) == 2 * algo.bytes_up(ClientUpdate(cid, 1, {"model": vec}, {}))
        job = ClientJob(cid, 0, sent.payload, sent.state)
        trainer.start(job)
        u = algo.local_update(job, trainer)
        if clear[cid]:
            assert int(u.upload["cluster"][0]) == 1 - low[cid]  # the lowest-loss cluster
        assert u.upload["model"].size == algo.size and u.state["cluster"][0] == u.upload["cluster"][0]
        ups.append(u)
    # uploads crafted per cluster: each cluster model becomes the mean of its own members only
    rng_ = np.random.default_rng(0)
    for u in ups:
        u.upload["model"] = rng_.normal(size=algo.size).astype(np.float32)
    new = algo.aggregate(vec, ups[::-1])
    for j, (a, b) in enumerate(algo.ranges):
        members = [u.upload["model"].astype(np.float64) for u in ups if u.upload["cluster"][0] == j]
        np.testing.assert_allclose(new[a:b], np.mean(members, axis=0), rtol=1e-6, atol=1e-7)
    only_zero = [u for u in ups if u.upload["cluster"][0] == 0]
    kept = algo.aggregate(vec, only_zero)
    np.testing.assert_array_equal(kept[algo.ranges[1][0] : algo.ranges[1][1]], vec[algo.ranges[1][0] :
                                                                                   algo.ranges[1][1]])
    # evaluation picks the same cluster with the current models
    cid = int(np.flatnonzero(clear)[0])
    job = ClientJob(cid, 1, {"model": vec}, {})
    trainer.start(job)
    ev = algo.eval_vector(job, trainer)
    assert ev[spec.slot("select").start + (1 - low[cid])] == 1.0


def test_ifca_trains_only_the_chosen_cluster_and_k_sizes_the_model(tmp_path):
    s = Setup(tmp_path, "ifca", "algorithm.k=2")
    assert len(s.algo.ranges) == 2 and s.algo.spec.slot("select").size == 2
    assert s.algo.bytes_down({"model": s.init}) == 2 * 4 * s.algo.size
    u = s.train(0, 0, s.init)
    j = int(u.upload["cluster"][0])
    a, b = s.algo.ranges[j]
    trained = s.algo.trained_vector(ClientJob(0, 0, {"model": s.init}, {}), u, s.trainer)
    assert not np.array_equal(trained[a:b], s.init[a:b])
    outside = np.ones(s.init.size, bool)
    outside[a:b] = False
    outside[s.algo.spec.slot("select").start : s.algo.spec.slot("select").stop] = False
    np.testing.assert_array_equal(trained[outside], s.init[outside])
    clusters = [s.init[x:y] for x, y in s.algo.ranges]
    assert not np.array_equal(clusters[0], clusters[1])  # independent initialisations
    with pytest.raises(ValueError, match="k=3 but the model was built with 2"):
        IFCA(IFCAParams(k=3), s.algo.ctx)


# ----- FedAMP -------------------------------------------------------------------------------------------------------
def test_fedamp_attention_weights_follow_the_paper_and_build_the_cloud_model():
    w1, others = np.array([0.0, 0.0]), np.array([[1.0, 0.0], [0.0, 2.0]])
    self_weight, xi = attention_weights(w1, others, alpha_k=0.5, sigma=2.0)
    np.testing.assert_allclose(xi, [0.25 * np.exp(-1 / 2), 0.25 * np.exp(-4 / 2)])  # alpha_k A'(||w1 - wj||^2)
    assert self_weight == pytest.approx(1 - xi.sum()) and self_weight + xi.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(cloud_model(w1, self_weight, others, xi), xi @ others + self_weight * w1, rtol=1e-6)
    sw, hx = heuristic_weights(w1 + 1, others, sigma=3.0, self_weight=0.4)  # HeurFedAMP: softmax of sigma * cos
    cos = others @ np.ones(2) / (np.linalg.norm(others, axis=1) * np.sqrt(2))
    np.testing.assert_allclose(hx, 0.6 * np.exp(3 * cos) / np.exp(3 * cos).sum())
    assert sw == 0.4 and sw + hx.sum() == pytest.approx(1.0)


def test_fedamp_server_builds_u_i_from_the_pool_and_keeps_it_across_a_resume():
    model = build_model("mlp", (1, 4, 4), 3, hidden=5)
    ctx = AlgoContext(spec=ParamSpec.of(model), train=TrainSpec(), num_clients=8, num_classes=3, seed=0)
    algo = FedAMP(FedAMPParams(alpha_k=0.2, sigma=50.0), ctx)
    gen = np.random.default_rng(1)
    init = gen.normal(size=ctx.spec.size).astype(np.float32)
    models = {c: (init + gen.normal(size=init.size)).astype(np.float32) for c in (5, 2, 7)}
    algo.aggregate(init, [ClientUpdate(c, 10, {"model": m}, {}) for c, m in models.items()])
    trainable = algo.trainable
    for cid, own in ((2, models[2]), (4, init)):  # a pooled client uses its stored w_i, a new one w^0
        sent = algo.server_prepare(cid, 1, init, {})
        peers = [models[j] for j in sorted(models) if j != cid]
        xi = np.array([0.2 / 50 * np.exp(-np.sum((p[trainable].astype(np.float64) - own[trainable]) ** 2) / 50)
                       for p in peers])
        u = (1 - xi.sum()) * own.astype(np.float64) + sum(x * p.astype(np.float64) for x, p in zip(xi, peers,
                                                                                                    strict=True))
        np.testing.assert_allclose(sent.payload["model"], u.astype(np.float32), rtol=1e-5, atol=1e-6)
        assert sent.note["self_weight"] == pytest.approx(1 - xi.sum()) and 0 < xi.min()
    restored = FedAMP(FedAMPParams(alpha_k=0.2, sigma=50.0), ctx)
    restored.load_server_state(algo.server_state())
    np.testing.assert_array_equal(restored.server_prepare(2, 1, init, {}).payload["model"],
                                  algo.server_prepare(2, 1, init, {}).payload["model"])


def test_fedamp_client_is_pulled_to_its_cloud_model_by_lam_over_alpha_k(tmp_path):
    dist = {}
    for lam in (0.01, 30.0):
        s = Setup(tmp_path / str(lam), "fedamp", f"algorithm.lam={lam}", "train.local_epochs=3")
        u = s.train(0, 0, s.init)
        dist[lam] = float(np.linalg.norm(u.upload["model"] - s.init))  # u_0 = w^0 with an empty pool
        np.testing.assert_array_equal(u.state["w"], u.upload["model"])
    assert dist[30.0] < 0.5 * dist[0.01]


# ----- every algorithm end to end -----------------------------------------------------------------------------------
E2E = {"perfedavg_fo": ("algorithm.alpha=0.1", "algorithm.beta=0.2"),
       "perfedavg_hf": ("algorithm.alpha=0.1", "algorithm.beta=0.2"),
       "pfedme": (), "ifca": (), "fedamp": ()}
STATE_KEYS = {"perfedavg_fo": set(), "perfedavg_hf": set(), "pfedme": {"theta.npy"}, "ifca": {"cluster.npy"},
              "fedamp": {"w.npy"}}


@pytest.fixture(scope="module")
def actors(ray_session):
    """Ray worker actors reused from run to run (Worker.configure rebuilds them), as a study does: starting two
    actors costs more than a whole in-process run here."""
    cache = ActorCache()
    yield lambda cfg, data: make_executor(cfg, data, cache=cache)
    cache.clear()


@pytest.mark.parametrize("name", NAMES)
def test_end_to_end_identical_in_process_on_ray_with_disk_store_and_after_resume(tmp_path, actors, name):
    common = (f"algorithm.name={name}", "rounds=3", "train.lr=0.1", *E2E[name])
    local = run(small_config(tmp_path / "local", *common), progress=False)
    on_ray = run(small_config(tmp_path / "ray", *common, "workers.use_ray=true"), progress=False,
                 executor_factory=actors)
    disk = run(small_config(tmp_path / "disk", *common, "store.backend=disk", f"store.path={tmp_path}/store"),
               progress=False)
    cut = small_config(tmp_path / "cut", *common)
    first = run(cut, progress=False, stop_after=2)
    resumed = resume(first.run_id, cut.checkpoint_dir, progress=False)
    history = metrics_history(local)
    assert history == metrics_history(on_ray) == metrics_history(disk) == metrics_history(resumed)
    for other in (on_ray, disk, resumed):
        np.testing.assert_array_equal(local.global_vec, other.global_vec)
    assert {p.name.split(".", 1)[1] for p in (tmp_path / "store").rglob("*.npy")} == STATE_KEYS[name]
    assert np.isfinite(local.global_vec).all() and local.final["personal_acc"] > 0.1
    if name == "ifca":
        shares = [h[f"client_cluster_{j}_mean"] for h in history for j in range(3)]
        assert all(0 <= x <= 1 for x in shares)
    if name == "fedamp":
        assert history[0]["fedamp_peers_mean"] == 0 and history[-1]["fedamp_peers_mean"] > 0
