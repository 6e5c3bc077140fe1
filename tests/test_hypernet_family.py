"""pFedHN and pFedLA: each test pins the defining mechanism with hand-computed numbers (it fails when the mechanism
is broken, not only when the code crashes); the last one runs pFedHN end to end in-process, on Ray, with the disk
store, on one worker and through a resume, and asks for identical numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from algorithms import pfedhn, pfedla
from algorithms.base import ClientJob
from protocol.rng import rng
from tests.conftest import OneWorker, metrics_history, runs_everywhere


class Setup(OneWorker):
    """One algorithm on one in-process worker, the initial global vector."""

    def __init__(self, tmp_path, algo: str, *overrides: str):
        super().__init__(tmp_path, algo, *overrides)

    def train(self, cid: int, rnd: int, global_vec: np.ndarray, state: dict | None = None):
        sent = self.algo.server_prepare(cid, rnd, global_vec, dict(state or {}))
        return sent, self.worker.train([ClientJob(cid, rnd, sent.payload, sent.state)])[0]

    def eval_vector(self, cid: int, rnd: int, global_vec: np.ndarray, state: dict) -> np.ndarray:
        job = ClientJob(cid, rnd, {"model": global_vec}, dict(state))
        self.trainer.start(job)
        return self.algo.eval_vector(job, self.trainer)

    def part(self, vec: np.ndarray, name: str) -> np.ndarray:
        s = self.spec.slot(name)
        return vec[s.start : s.stop].reshape(s.shape)


# ----- pFedHN --------------------------------------------------------------------------------------------------------
def test_pfedhn_chain_rule_on_a_hand_example():
    # no hidden block: theta = Wo (W0 v + b0) + bo, so (d theta/d phi)^T delta has a closed form
    gen = np.random.default_rng(1)
    w0, b0 = gen.normal(size=(4, 3)).astype(np.float32), gen.normal(size=4).astype(np.float32)
    wo, bo = gen.normal(size=(6, 4)).astype(np.float32), gen.normal(size=6).astype(np.float32)
    v, delta = gen.normal(size=3).astype(np.float32), gen.normal(size=6).astype(np.float32)
    (g_w0, g_b0, g_wo, g_bo), g_v = pfedhn.chain_rule([w0, b0, wo, bo], v, delta)
    h, back = w0 @ v + b0, wo.T @ delta
    np.testing.assert_allclose(g_wo, np.outer(delta, h), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g_bo, delta, rtol=1e-6)
    np.testing.assert_allclose(g_w0, np.outer(back, v), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g_b0, back, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g_v, w0.T @ back, rtol=1e-5, atol=1e-6)
    # a ReLU block: units with negative pre-activation pass no gradient
    w1, b1 = np.eye(4, dtype=np.float32), np.array([0, 0, 0, -100], dtype=np.float32)
    theta = pfedhn.hypernet([torch.tensor(a) for a in (w0, b0, w1, b1, wo, bo)], torch.tensor(v)).numpy()
    np.testing.assert_allclose(theta, wo @ (np.maximum(h, 0) + b1) + bo, rtol=1e-5, atol=1e-5)
    # SGD with momentum and weight decay, as torch.optim.SGD, and the joint clip
    p, g = np.array([1.0, -2.0], np.float32), np.array([0.5, 0.5], np.float32)
    p1, buf = pfedhn.sgd_step(p, g, None, 0.1, 0.9, 0.01)
    np.testing.assert_allclose(p1, p - 0.1 * (g + 0.01 * p), rtol=1e-6)
    p2, _ = pfedhn.sgd_step(p1, g, buf, 0.1, 0.9, 0.01)
    np.testing.assert_allclose(p2, p1 - 0.1 * (0.9 * buf + g + 0.01 * p1), rtol=1e-6)
    clipped = pfedhn.clip_together([np.array([3.0, 0.0], np.float32), np.array([4.0], np.float32)], 1.0)
    np.testing.assert_allclose(np.concatenate(clipped), [0.6, 0.0, 0.8], rtol=1e-5)


def test_pfedhn_round_generates_the_model_and_steps_the_hypernetwork_by_the_chain_rule(tmp_path):
    s = Setup(tmp_path, "pfedhn", "algorithm.n_hidden=0", "algorithm.hn_momentum=0", "algorithm.norm_clip=1e9")
    a, p = s.algo, s.algo.params
    w0, b0, wo, bo = (s.part(s.init, f"hn.{n}") for n in ("w0", "b0", "w1", "b1"))
    v = rng(s.cfg.seed, "pfedhn-embedding", 3).standard_normal(p.embed_dim).astype(np.float32)
    theta = wo @ (w0 @ v + b0) + bo
    sent, u = s.train(3, 0, s.init)
    np.testing.assert_allclose(sent.payload["theta"], theta, rtol=1e-5, atol=1e-6)  # h(v_3; phi) is what is sent
    assert set(u.upload) == {"delta"} and np.abs(u.upload["delta"]).max() > 0
    new = a.aggregate(s.init, [u], {3: sent.note})
    delta, h = u.upload["delta"].astype(np.float64), (w0 @ v + b0).astype(np.float64)
    lr, wd = p.hn_lr, p.hn_weight_decay
    expect = {"w1": wo - lr * (np.outer(delta, h) + wd * wo), "b1": bo - lr * (delta + wd * bo),
              "w0": w0 - lr * (np.outer(wo.T @ delta, v) + wd * w0), "b0": b0 - lr * (wo.T @ delta + wd * b0)}
    for name, value in expect.items():
        np.testing.assert_allclose(s.part(new, f"hn.{name}"), value, rtol=1e-4, atol=1e-6)
    v_new = v - lr * (w0.T @ (wo.T @ delta) + wd * v)
    np.testing.assert_allclose(u.state["embedding"], v_new, rtol=1e-4, atol=1e-6)
    mask = ~a.shared_mask()
    np.testing.assert_array_equal(new[mask], s.init[mask])  # the target model's own slots are never averaged
    # the personalized model is h(v_new; phi_new), computed on the worker from the global vector and the state
    w0n, b0n, won, bon = (s.part(new, f"hn.{n}") for n in ("w0", "b0", "w1", "b1"))
    personal = s.eval_vector(3, 1, new, u.state)
    np.testing.assert_allclose(personal[a.generated], won @ (w0n @ v_new + b0n) + bon, rtol=1e-4, atol=1e-5)


def test_pfedhn_pc_keeps_the_classifier_on_the_client(tmp_path):
    s = Setup(tmp_path, "pfedhn", "algorithm.personal_classifier=true")
    a = s.algo
    head = s.spec.head_mask()
    assert not (a.generated & head).any() and a.generated[~head & a.spec.mask(
        n for n in s.spec.names if not n.startswith("hn."))].all()
    assert a.hn_slots[-1].size == int(a.generated.sum())  # the output layer makes only the body
    sent, u = s.train(2, 0, s.init)
    np.testing.assert_array_equal(sent.payload["own"], s.init[head])  # the common initial classifier
    new = a.aggregate(s.init, [u])
    personal = s.eval_vector(2, 1, new, u.state)
    np.testing.assert_array_equal(personal[head], u.state["personal"])  # the trained classifier, never sent
    assert not np.array_equal(u.state["personal"], s.init[head])


# ----- pFedLA --------------------------------------------------------------------------------------------------------
def test_pfedla_layer_weights_are_the_hypernetworks_normalised_output_and_learn_by_the_chain_rule(tmp_path):
    s = Setup(tmp_path, "pfedla")
    a, n = s.algo, s.data.num_clients
    gen = np.random.default_rng(0)
    pool_ids = np.array([1, 4, 7])
    a.load_server_state({"pool_cids": pool_ids, "pool_models": (s.init + gen.normal(0, 0.1, (3, s.init.size)))
                         .astype(np.float32)})
    models = np.broadcast_to(s.init, (n, s.init.size)).copy()
    models[pool_ids] = a.pool.stacked()[1]
    sent, u = s.train(4, 2, s.init)
    # alpha by hand: MLP with ReLUs, then ReLU(W^l f + b^l) normalised per layer over the N clients
    hn = {k: v.astype(np.float64) for k, v in pfedla.unflatten(sent.state["hn"], a.layout).items()}
    f = np.maximum(hn["w1"] @ hn["v"] + hn["b1"], 0)
    f = np.maximum(hn["w2"] @ f + hn["b2"], 0)
    f = np.maximum(hn["w3"] @ f + hn["b3"], 0)
    o = np.maximum(np.einsum("lnh,h->ln", hn["wo"], f) + hn["bo"], 0)
    alpha = o / o.sum(1, keepdims=True)
    assert alpha.shape == (len(s.spec.layer_groups()), n) and (alpha > 0).all()
    for group, w in zip(s.spec.layer_groups(), alpha, strict=True):  # thetabar^l = sum_j alpha^l_j theta_j^l
        for slot in group:
            np.testing.assert_allclose(sent.payload["model"][slot.start : slot.stop],
                                       w @ models[:, slot.start : slot.stop], rtol=1e-4, atol=1e-6)
    assert sent.note["self_weight"] == pytest.approx(alpha[:, 4].mean(), rel=1e-5)
    # the update: HN_4 steps along (d thetabar / d HN_4)^T (thetabar - theta~), computed densely here
    delta = u.upload["delta"]
    leaves = {k: torch.tensor(v, requires_grad=True) for k, v in pfedla.unflatten(sent.state["hn"], a.layout).items()}
    w = pfedla.layer_weights(leaves, 4)
    thetabar = torch.zeros(s.init.size, dtype=torch.float64)
    for layer, group in enumerate(s.spec.layer_groups()):
        for slot in group:
            thetabar[slot.start : slot.stop] = w[layer].double() @ torch.tensor(models[:, slot.start : slot.stop],
                                                                            dtype=torch.float64)
    grads = torch.autograd.grad(thetabar, list(leaves.values()), grad_outputs=torch.tensor(delta, dtype=torch.float64))
    expect = np.concatenate([(leaves[k].detach().double() - a.params.hn_lr * g).reshape(-1).numpy()
                             for k, g in zip(leaves, grads, strict=True)])
    a.aggregate(s.init, [u], {4: sent.note})
    np.testing.assert_allclose(u.state["hn"], expect, rtol=1e-4, atol=1e-7)
    assert not np.allclose(u.state["hn"], sent.state["hn"], rtol=0, atol=1e-6)
    # theta_4 takes the local update; it joins the pool the next dispatches aggregate from
    np.testing.assert_allclose(u.state["model"], models[4] - delta, rtol=1e-6, atol=1e-7)
    ids, pooled = a.pool.stacked()
    np.testing.assert_array_equal(ids, [1, 4, 7])
    np.testing.assert_array_equal(pooled[1], u.state["model"])
    np.testing.assert_array_equal(s.eval_vector(4, 3, s.init, u.state), u.state["model"])


def test_pfedhn_end_to_end_identical_everywhere(tmp_path, actors):
    # the resumed run needs the hypernetwork's momentum (server state) and the embeddings (store) to agree
    out = runs_everywhere(tmp_path, "algorithm.name=pfedhn", "rounds=3", "train.lr=0.1", actors=actors)
    local = out["local"]
    assert {p.name.split(".", 1)[1] for p in (tmp_path / "store").rglob("*.npy")} >= {"embedding.npy",
                                                                                     "embedding_momentum.npy"}
    assert np.isfinite(local.global_vec).all() and all(np.isfinite(h["personal_acc"]) for h in metrics_history(local))
