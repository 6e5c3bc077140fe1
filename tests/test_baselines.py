"""The PFL baselines: each test pins an algorithm's DEFINING mechanism with numbers, so that it
fails when the mechanism is broken (not only when the code crashes).

Hooks are called directly (server_prepare -> Worker.train -> aggregate -> eval_vector) on the
digits data set of tests.conftest.small_config, in-process; the end-to-end test runs the engine.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from algorithms import registry
from algorithms.base import ClientJob
from harness.engine import resume, run
from tests.conftest import FAST_LEARNING, OneWorker, metrics_history, small_config


# ----- helpers -------------------------------------------------------------------------------
class Setup(OneWorker):
    """One algorithm, one in-process worker (model + trainer) and the initial global vector."""

    def __init__(self, tmp_path, algo: str, *overrides: str):
        super().__init__(tmp_path, algo, *overrides)

    def train(self, cid: int, rnd: int, global_vec: np.ndarray, state: dict | None = None,
              max_steps: int | None = None):
        sent = self.algo.server_prepare(cid, rnd, global_vec, dict(state or {}))
        return self.worker.train([ClientJob(cid, rnd, sent.payload, sent.state, max_steps)])[0]

    def eval_vector(self, cid: int, rnd: int, global_vec: np.ndarray, state: dict | None = None) -> np.ndarray:
        job = ClientJob(cid, rnd, {"model": global_vec}, dict(state or {}))
        self.worker.trainer.start(job)
        return self.algo.eval_vector(job, self.worker.trainer)

    def batches_per_epoch(self, cid: int) -> int:
        return math.ceil(len(self.data.train_of(cid)) / self.cfg.train.batch_size)

    def mask(self, prefix: str) -> np.ndarray:
        return self.spec.mask(s.name for s in self.spec.slots if s.name.startswith(prefix))


def weighted_average(updates, mask: np.ndarray) -> np.ndarray:
    total = sum(u.num_samples * u.upload["model"][mask].astype(np.float64) for u in updates)
    return (total / sum(u.num_samples for u in updates)).astype(np.float32)


def history(result) -> list[dict]:
    return metrics_history(result)


# ----- FedProx -------------------------------------------------------------------------------
def test_fedprox_with_mu_zero_is_fedavg_exactly(tmp_path):
    avg = run(small_config(tmp_path / "avg", "rounds=2"), progress=False)
    prox = run(small_config(tmp_path / "prox", "rounds=2", "algorithm.name=fedprox", "algorithm.mu=0"),
               progress=False)
    assert history(prox) == history(avg)
    np.testing.assert_array_equal(prox.global_vec, avg.global_vec)


def test_fedprox_proximal_term_reduces_client_drift(tmp_path):
    drift = {}
    for mu in (0.0, 0.1, 1.0, 10.0):
        s = Setup(tmp_path / f"mu{mu}", "fedprox", f"algorithm.mu={mu}", "train.local_epochs=3")
        u = s.train(0, 0, s.init)
        drift[mu] = float(np.linalg.norm(u.upload["model"] - s.init))
    assert drift[0.0] > drift[0.1] > drift[1.0] > drift[10.0] > 0
    assert drift[10.0] < 0.5 * drift[0.0]


# ----- FedPer / FedRep / LG-FedAvg: which part is personal, which is averaged -------------------
def test_fedper_never_averages_the_head_and_keeps_personal_heads_per_client(tmp_path):
    s = Setup(tmp_path, "fedper")
    head, body = s.mask("head."), ~s.mask("head.")
    np.testing.assert_array_equal(s.algo.shared, body)
    ups = [s.train(c, 0, s.init) for c in (0, 1, 2)]
    g1 = s.algo.aggregate(s.init, ups)
    np.testing.assert_array_equal(g1[head], s.init[head])  # the global head never moves
    np.testing.assert_allclose(g1[body], weighted_average(ups, body), rtol=1e-6, atol=1e-7)
    states = {u.cid: u.state for u in ups}
    assert all(set(st) == {"personal"} and st["personal"].size == head.sum() for st in states.values())
    assert not np.array_equal(states[0]["personal"], states[1]["personal"])
    assert s.algo.bytes_up(ups[0]) == 4 * int(body.sum())
    # the stored head is used: evaluation = global body + own head, and round 2 starts from it
    personal = s.eval_vector(0, 1, g1, states[0])
    np.testing.assert_array_equal(personal[head], states[0]["personal"])
    np.testing.assert_array_equal(personal[body], g1[body])
    again = s.train(0, 1, g1, states[0])
    fresh = s.train(0, 1, g1, {})
    assert not np.array_equal(again.state["personal"], fresh.state["personal"])
    np.testing.assert_array_equal(s.eval_vector(5, 1, g1, {}), g1)  # never trained: the global vector


def test_fedrep_trains_head_first_then_body(tmp_path):
    s = Setup(tmp_path / "both", "fedrep", "algorithm.head_epochs=2", "algorithm.body_epochs=1")
    head, body = s.mask("head."), ~s.mask("head.")
    nb = s.batches_per_epoch(0)
    u = s.train(0, 0, s.init)
    assert (u.metrics["head_steps"], u.metrics["body_steps"], u.steps) == (2 * nb, nb, 3 * nb)
    only_head = Setup(tmp_path / "h", "fedrep", "algorithm.head_epochs=2", "algorithm.body_epochs=0")
    h = only_head.train(0, 0, only_head.init).upload["model"]
    np.testing.assert_array_equal(h[body], s.init[body])  # the head phase leaves the body untouched
    assert not np.array_equal(h[head], s.init[head])
    only_body = Setup(tmp_path / "b", "fedrep", "algorithm.head_epochs=0", "algorithm.body_epochs=1")
    b = only_body.train(0, 0, only_body.init).upload["model"]
    np.testing.assert_array_equal(b[head], s.init[head])  # the body phase leaves the head untouched
    assert not np.array_equal(b[body], s.init[body])
    # order: the final head is the head-phase head (trained on the received body), and the body
    # phase ran with that new head (so its body differs from a body trained under the old head)
    full = u.upload["model"]
    np.testing.assert_array_equal(full[head], h[head])
    np.testing.assert_array_equal(u.state["personal"], h[head])
    assert not np.array_equal(full[body], b[body])
    g1 = s.algo.aggregate(s.init, [u, s.train(1, 0, s.init)])
    np.testing.assert_array_equal(g1[head], s.init[head])


def test_fedrep_defaults_follow_the_paper_and_null_head_epochs_splits_local_epochs(tmp_path):
    s = Setup(tmp_path / "d", "fedrep")
    assert s.algo.epochs() == (10, 1)  # paper: 10 head epochs, then 1 representation epoch
    t = Setup(tmp_path / "n", "fedrep", "algorithm.head_epochs=null", "train.local_epochs=5")
    assert t.algo.epochs() == (4, 1)
    u = t.train(0, 0, t.init)
    assert (u.metrics["head_steps"], u.metrics["body_steps"]) == (4 * t.batches_per_epoch(0), t.batches_per_epoch(0))


def test_lgfedavg_averages_only_the_head_and_keeps_bodies_local(tmp_path):
    s = Setup(tmp_path, "lgfedavg")
    head, body = s.mask("head."), ~s.mask("head.")
    np.testing.assert_array_equal(s.algo.shared, head)  # global = TOP layers (the paper's direction)
    ups = [s.train(c, 0, s.init) for c in (0, 1, 2)]
    g1 = s.algo.aggregate(s.init, ups)
    np.testing.assert_array_equal(g1[body], s.init[body])
    np.testing.assert_allclose(g1[head], weighted_average(ups, head), rtol=1e-6, atol=1e-7)
    assert ups[0].state["personal"].size == body.sum()
    assert not np.array_equal(ups[0].state["personal"], ups[1].state["personal"])
    assert s.algo.bytes_up(ups[0]) == 4 * int(head.sum()) < 4 * int(body.sum())
    personal = s.eval_vector(0, 1, g1, ups[0].state)
    np.testing.assert_array_equal(personal[body], ups[0].state["personal"])
    np.testing.assert_array_equal(personal[head], g1[head])
    two = Setup(tmp_path / "two", "lgfedavg", "algorithm.global_layers=2")
    assert two.algo.shared.sum() > head.sum() and (two.algo.shared & head).sum() == head.sum()


# ----- FedBABU -------------------------------------------------------------------------------
def test_fedbabu_head_never_changes_in_training_and_is_finetuned_at_evaluation(tmp_path):
    s = Setup(tmp_path, "fedbabu", "train.weight_decay=0.01", "train.momentum=0.9")
    head, body = s.mask("head."), ~s.mask("head.")
    ups = [s.train(c, 0, s.init) for c in (0, 1)]
    for u in ups:  # bit-identical head even with weight decay and momentum
        np.testing.assert_array_equal(u.upload["model"][head], s.init[head])
        assert not np.array_equal(u.upload["model"][body], s.init[body])
        assert u.state == {}
    g1 = s.algo.aggregate(s.init, ups)
    np.testing.assert_array_equal(g1[head], s.init[head])
    assert s.algo.bytes_down({"model": g1}) == 4 * int(body.sum())
    tuned = s.eval_vector(0, 1, g1)
    assert not np.array_equal(tuned[head], g1[head]) and not np.array_equal(tuned[body], g1[body])
    np.testing.assert_array_equal(s.eval_vector(0, 1, g1), tuned)  # deterministic, nothing stored
    head_only = Setup(tmp_path / "h", "fedbabu", "algorithm.finetune_part=head")
    t = head_only.eval_vector(0, 1, g1)
    np.testing.assert_array_equal(t[body], g1[body])
    assert not np.array_equal(t[head], g1[head])
    none = Setup(tmp_path / "0", "fedbabu", "algorithm.finetune_epochs=0")
    np.testing.assert_array_equal(none.eval_vector(0, 1, g1), g1)


# ----- Ditto ---------------------------------------------------------------------------------
def test_ditto_personal_model_is_pulled_to_the_global_model_as_lambda_grows(tmp_path):
    dist, uploads = {}, {}
    for lam in (0.0, 0.1, 1.0, 10.0):
        s = Setup(tmp_path / f"l{lam}", "ditto", f"algorithm.lam={lam}", "train.local_epochs=3")
        u = s.train(0, 0, s.init)
        dist[lam] = float(np.linalg.norm(u.state["v"] - s.init))
        uploads[lam] = u.upload["model"]
        assert u.steps == 2 * 3 * s.batches_per_epoch(0)  # global and personal updates: same work
    assert dist[0.0] > dist[0.1] > dist[1.0] > dist[10.0] > 0
    # the anchor is the RECEIVED global model w^t, not the client's updated copy w_k
    assert dist[10.0] < 0.5 * float(np.linalg.norm(u.state["v"] - u.upload["model"]))
    for lam in (0.1, 1.0, 10.0):  # the global update does not depend on lambda
        np.testing.assert_array_equal(uploads[lam], uploads[0.0])
    np.testing.assert_array_equal(s.eval_vector(0, 1, s.init, u.state), u.state["v"])
    np.testing.assert_array_equal(s.eval_vector(3, 1, s.init, {}), s.init)
    # the stored personal model carries over: round 2 from v differs from round 2 from scratch
    assert not np.array_equal(s.train(0, 1, s.init, u.state).state["v"], s.train(0, 1, s.init, {}).state["v"])


# ----- APFL ----------------------------------------------------------------------------------
def test_apfl_alpha_follows_the_exact_gradient_and_stays_in_unit_interval(tmp_path):
    s = Setup(tmp_path, "apfl", "algorithm.alpha=0.3", "train.momentum=0")
    g = s.init
    v0 = g + np.random.default_rng(0).normal(0, 0.05, g.shape).astype(np.float32)
    state = {"v": v0, "alpha": np.array([0.3], dtype=np.float32)}
    u = s.train(0, 0, g, state, max_steps=2)  # exactly one batch (a batch costs two steps)
    assert u.steps == 2
    # recompute the first batch's gradient at v_bar = alpha v + (1 - alpha) w by hand
    job = ClientJob(0, 0, {"model": g}, {})
    trainer = s.worker.trainer
    trainer.start(job)
    x, y = next(iter(trainer.batches(job, 1)))
    vbar = torch.tensor(0.3 * v0 + 0.7 * g, requires_grad=True)
    trainer.set_vector(vbar.detach().numpy())
    model = trainer.model
    names = [n for n, _ in model.named_parameters()]
    loss = F.cross_entropy(torch.func.functional_call(
        model, {sl.name: vbar[sl.start:sl.stop].view(sl.shape) for sl in s.spec.slots if sl.name in names}, (x,)), y)
    (grad,) = torch.autograd.grad(loss, vbar)
    expected = 0.3 - s.cfg.train.lr * float(np.dot((v0 - g).astype(np.float64), grad.numpy().astype(np.float64)))
    assert u.metrics["alpha"] == pytest.approx(expected, rel=1e-4, abs=1e-6)
    assert u.metrics["alpha"] != 0.3
    # alpha adapts over a round and stays in [0, 1], even with a huge step size (clipped)
    big = Setup(tmp_path / "big", "apfl", "algorithm.alpha_lr=1000")
    for cid in (0, 1, 2):
        a = big.train(cid, 0, big.init, state).metrics["alpha"]
        assert 0.0 <= a <= 1.0 and a in (0.0, 1.0)
    fixed = Setup(tmp_path / "fixed", "apfl", "algorithm.adaptive_alpha=false")
    assert fixed.train(0, 0, fixed.init, state).state["alpha"][0] == np.float32(0.3)


def test_apfl_evaluates_the_parameter_mixture_and_uploads_w(tmp_path):
    s = Setup(tmp_path, "apfl", "algorithm.alpha=0.25")
    ups = [s.train(c, 0, s.init) for c in (0, 1)]
    alphas = [float(u.state["alpha"][0]) for u in ups]
    assert all(0.0 <= a <= 1.0 for a in alphas) and alphas[0] != alphas[1] and 0.25 not in alphas
    fedavg = Setup(tmp_path / "avg", "fedavg")  # w_i is trained exactly like FedAvg's local model
    np.testing.assert_array_equal(ups[0].upload["model"], fedavg.train(0, 0, fedavg.init).upload["model"])
    g1 = s.algo.aggregate(s.init, ups)
    st = ups[0].state
    np.testing.assert_allclose(s.eval_vector(0, 1, g1, st), st["alpha"][0] * st["v"] + (1 - st["alpha"][0]) * g1,
                               rtol=1e-6, atol=1e-7)
    assert ups[0].steps == 2 * s.batches_per_epoch(0)  # one batch = two passes on the virtual clock


def test_apfl_flbench_variant_steps_w_twice_moves_alpha_by_its_approximate_gradient(tmp_path):
    s = Setup(tmp_path, "apfl", "algorithm.variant=flbench", "algorithm.alpha=0.3", "train.momentum=0")
    g = s.init
    v0 = g + np.random.default_rng(0).normal(0, 0.05, g.shape).astype(np.float32)
    state = {"v": v0, "alpha": np.array([0.3], dtype=np.float32)}
    u = s.train(0, 0, g, state, max_steps=2)  # exactly one batch (two steps on the clock)
    assert u.steps == 2
    trainer, lr = s.worker.trainer, s.cfg.train.lr
    job = ClientJob(0, 0, {"model": g}, {})
    trainer.start(job)
    x, y = next(iter(trainer.batches(job, 1)))
    model = trainer.model
    slots = [sl for sl in s.spec.slots if sl.name in dict(model.named_parameters())]

    def grad_at(vec, loss_of):
        t = torch.tensor(vec, requires_grad=True)
        out = torch.func.functional_call(model, {sl.name: t[sl.start:sl.stop].view(sl.shape) for sl in slots}, (x,))
        (grad,) = torch.autograd.grad(loss_of(out), t)
        return grad.numpy()

    g_w = grad_at(g, lambda out: F.cross_entropy(out, y))
    w_half = g - lr * g_w
    with torch.no_grad():
        trainer.set_vector(w_half)
        logits_w = model(x)
    g_v = grad_at(v0, lambda out: F.cross_entropy(0.3 * out + 0.7 * logits_w, y))
    w1, v1 = g - 2 * lr * g_w, v0 - lr * g_v  # w steps twice with its one gradient, v once
    np.testing.assert_allclose(u.upload["model"], w1, rtol=0, atol=1e-6)
    np.testing.assert_allclose(u.state["v"], v1, rtol=0, atol=1e-6)
    approx = float(np.dot((v1 - w1).astype(np.float64), (0.3 * g_v + 0.7 * g_w).astype(np.float64))) + 0.02 * 0.3
    assert u.metrics["alpha"] == pytest.approx(0.3 - lr * approx, rel=1e-4, abs=1e-6)
    # alpha moves in the first local epoch only: a second epoch changes v and w, not alpha
    one = Setup(tmp_path / "e1", "apfl", "algorithm.variant=flbench", "train.local_epochs=1").train(1, 0, g, state)
    two = Setup(tmp_path / "e2", "apfl", "algorithm.variant=flbench", "train.local_epochs=2").train(1, 0, g, state)
    assert one.metrics["alpha"] == two.metrics["alpha"] != 0.3
    assert not np.array_equal(one.state["v"], two.state["v"])


def test_apfl_flbench_variant_evaluates_the_output_mixture_with_the_state_it_is_given(tmp_path):
    s = Setup(tmp_path, "apfl", "algorithm.variant=flbench", "algorithm.alpha=0.25")
    u = s.train(0, 0, s.init)
    trainer, model = s.worker.trainer, s.worker.trainer.model
    job = ClientJob(0, 1, {"model": s.init}, dict(u.state))
    trainer.start(job)
    assert s.algo.eval_vector(job, trainer) is s.init  # w; the mixture happens in evaluate_personal
    correct, loss, n = s.algo.evaluate_personal(job, trainer, s.init)
    alpha = float(u.state["alpha"][0])
    x, y = trainer.tensors(trainer.split_of(0, "test"))
    with torch.no_grad():
        model.eval()
        trainer.set_vector(u.state["v"])
        mixed = alpha * model(x)
        trainer.set_vector(s.init)
        mixed += (1 - alpha) * model(x)
    assert n == len(y) > 0 and correct == int((mixed.argmax(1) == y).sum())
    assert loss == pytest.approx(float(F.cross_entropy(mixed, y, reduction="sum")), rel=1e-5)
    # right after training, the trained w is evaluated with the update's v and alpha, not the job's (empty) state
    fresh = ClientJob(0, 0, {"model": s.init}, {})
    trainer.start(fresh)
    w = s.algo.trained_vector(fresh, u, trainer)
    after = s.algo.evaluate_personal(fresh, trainer, w)
    assert after != trainer.evaluate(w, 0) or alpha == 0.0
    assert s.algo.evaluate_personal(fresh, trainer, w.copy()) == trainer.evaluate(w, 0)  # another vector: job state


# ----- FedALA --------------------------------------------------------------------------------
def test_fedala_weights_are_learned_per_client_in_unit_interval(tmp_path):
    s = Setup(tmp_path, "fedala")
    top = s.mask("head.")  # layer_idx=2: the classifier's weight and bias
    np.testing.assert_array_equal(s.algo.top_mask, top)
    first = [s.train(c, 0, s.init) for c in (0, 1)]
    for u in first:  # first participation: no local model yet, ALA skipped
        assert set(u.state) == {"top"} and u.steps == s.batches_per_epoch(u.cid)
    g1 = s.algo.aggregate(s.init, first)
    second = {u.cid: s.train(u.cid, 1, g1, u.state) for u in first}
    w0, w1 = second[0].state["weights"], second[1].state["weights"]
    assert w0.shape == w1.shape == (int(top.sum()),)
    assert all(((w >= 0) & (w <= 1)).all() and (w < 1).any() for w in (w0, w1))
    assert not np.array_equal(w0, w1)
    # first ALA trains the weights to convergence: more than num_pre_loss epochs of the 80% sample
    sample_batches = math.ceil(int(0.8 * len(s.data.train_of(0))) / s.cfg.train.batch_size)
    ala_steps = second[0].steps - s.batches_per_epoch(0)
    assert ala_steps >= 11 * sample_batches and ala_steps % sample_batches == 0
    third = s.train(0, 2, g1, second[0].state)  # afterwards: one ALA epoch per round
    assert third.steps - s.batches_per_epoch(0) == sample_batches
    # a huge eta drives weights onto the box: clipped to exactly 0 or 1, never outside
    steep = Setup(tmp_path / "steep", "fedala", "algorithm.eta=1000")
    w = steep.train(0, 1, g1, first[0].state).state["weights"]
    assert ((w >= 0) & (w <= 1)).all() and (w == 0).any() and (w == 1).any()
    # one worker hosting two clients does not mix them: client 1 alone gives the same numbers
    alone = Setup(tmp_path / "alone", "fedala").train(1, 1, g1, first[1].state)
    np.testing.assert_array_equal(alone.state["weights"], w1)
    np.testing.assert_array_equal(alone.upload["model"], second[1].upload["model"])


def test_fedala_start_model_uses_stored_weights_and_global_lower_layers(tmp_path):
    s = Setup(tmp_path, "fedala")
    top = s.algo.top_mask
    rng = np.random.default_rng(1)
    g = s.init + rng.normal(0, 0.1, s.init.shape).astype(np.float32)
    local = s.init[top] + rng.normal(0, 0.1, int(top.sum())).astype(np.float32)
    weights = rng.uniform(0, 1, int(top.sum())).astype(np.float32)
    job = ClientJob(0, 3, {"model": g}, {"top": local, "weights": weights}, max_steps=0)
    s.worker.trainer.start(job)  # a zero step budget: no weight learning, the stored W is used as is
    start, learned = s.algo.adaptive_start(job, s.worker.trainer, "ala")
    np.testing.assert_array_equal(learned, weights)
    np.testing.assert_array_equal(start[~top], g[~top])
    np.testing.assert_allclose(start[top], local + (g[top] - local) * weights, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(s.eval_vector(4, 3, g, {}), g)  # no local model: the global one


# ----- FedRoD --------------------------------------------------------------------------------
def test_fedrod_generic_head_is_averaged_and_personal_head_is_kept(tmp_path):
    s = Setup(tmp_path, "fedrod")
    assert s.spec.head_names() == ["head.weight", "head.bias"]  # the personal head is not "the head"
    phead, head = s.mask("phead."), s.mask("head.")
    np.testing.assert_array_equal(s.algo.shared, ~phead)
    assert not s.init[phead].any()  # zero personal head: the global vector IS the generic model
    ups = [s.train(c, 0, s.init) for c in (0, 1, 2)]
    g1 = s.algo.aggregate(s.init, ups)
    np.testing.assert_allclose(g1[head], weighted_average(ups, head), rtol=1e-6, atol=1e-7)
    assert not g1[phead].any()
    heads = [u.state["personal"] for u in ups]
    assert all(h.size == phead.sum() and h.any() for h in heads) and not np.array_equal(heads[0], heads[1])
    assert s.algo.bytes_up(ups[0]) == 4 * int((~phead).sum())
    personal = s.eval_vector(0, 1, g1, ups[0].state)
    np.testing.assert_array_equal(personal[phead], heads[0])
    np.testing.assert_array_equal(personal[~phead], g1[~phead])
    # the personal loss never reaches body or generic head (features and generic logits detached)
    other = s.train(0, 0, s.init, {"personal": np.full(int(phead.sum()), 0.3, dtype=np.float32)})
    np.testing.assert_array_equal(other.upload["model"][~phead], ups[0].upload["model"][~phead])
    assert not np.array_equal(other.state["personal"], heads[0])


def test_fedrod_forward_adds_both_heads_and_generic_loss_is_balanced_softmax(tmp_path):
    s = Setup(tmp_path, "fedrod")
    model = s.worker.trainer.model
    x = torch.randn(4, 64)
    vec = s.init.copy()
    vec[s.mask("phead.")] = 0.5
    s.worker.trainer.set_vector(vec)
    model.eval()
    z = model.body(x)
    torch.testing.assert_close(model(x), model.head(z) + model.phead(z))
    # train_loss is the BSM loss: on a one-batch budget it equals CE(logits + log n_c) of that batch
    u = s.train(0, 0, s.init, max_steps=1)
    job = ClientJob(0, 0, {"model": s.init}, {})
    s.worker.trainer.start(job)
    xb, yb = next(iter(s.worker.trainer.batches(job, 1)))
    s.worker.trainer.set_vector(s.init)
    model.train()
    counts = np.bincount(s.data.y[s.data.train_of(0)], minlength=10)
    assert (counts == 0).any()  # client 0 lacks some classes: log 0 = -inf must stay harmless
    with torch.no_grad():
        logits = model.head(model.body(xb))
        bsm = F.cross_entropy(logits + torch.log(torch.tensor(counts, dtype=torch.float32)), yb)
        plain = F.cross_entropy(logits, yb)
    assert u.loss == pytest.approx(float(bsm), rel=1e-5) and abs(float(bsm) - float(plain)) > 1e-3
    assert u.finite and np.isfinite(u.upload["model"]).all()


# ----- per-client state through the store, resume and Ray workers -------------------------------
@pytest.mark.parametrize("name", ["fedala", "apfl"])
def test_personal_state_survives_disk_store_and_resume(tmp_path, name):
    overrides = [f"algorithm.name={name}", "rounds=4", "store.backend=disk", "tracking.enabled=true"]
    whole = run(small_config(tmp_path / "whole", *overrides), progress=False)
    cfg = small_config(tmp_path / "cut", *overrides)
    first = run(cfg, progress=False, stop_after=2)
    resumed = resume(first.run_id, cfg.checkpoint_dir, progress=False)
    assert history(resumed) == history(whole)
    np.testing.assert_array_equal(resumed.global_vec, whole.global_vec)


def test_fedala_gives_the_same_numbers_on_one_and_two_ray_workers(tmp_path, ray_session):
    results = [run(small_config(tmp_path / f"w{n}", "algorithm.name=fedala", "workers.use_ray=true",
                                f"workers.num_workers={n}", "rounds=3"), progress=False) for n in (1, 2)]
    assert history(results[0]) == history(results[1])
    np.testing.assert_array_equal(results[0].global_vec, results[1].global_vec)


# ----- every algorithm, end to end -------------------------------------------------------------
@pytest.mark.parametrize("name", registry.names())
def test_every_algorithm_learns_digits_in_two_rounds(tmp_path, name):
    cfg = small_config(tmp_path, f"algorithm.name={name}", "rounds=2", "join_ratio=1.0", "train.local_epochs=3",
                       "train.lr=0.1", *FAST_LEARNING.get(name, ()))
    result = run(cfg, progress=False)
    assert result.final["personal_acc"] > 0.3, result.final  # chance is 0.1
    assert np.isfinite(result.global_vec).all()
