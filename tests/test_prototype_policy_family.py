"""APPLE, FedPAC and FedCP: each test pins the defining mechanism with hand-computed numbers (it fails when the
mechanism is broken, not only when the code crashes)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from algorithms import apple, fedcp, fedpac
from tests.test_hypernet_family import Setup


# ----- FedPAC --------------------------------------------------------------------------------------------------------
def kkt_holds(P: np.ndarray, alpha: np.ndarray, tol: float = 1e-6) -> bool:
    """alpha minimises a^T P a on the simplex iff (P alpha)_j equals the multiplier where alpha_j > 0, and is not
    below it where alpha_j = 0."""
    g = P @ alpha
    lam = float(g[alpha > 1e-6].mean())
    scale = float(np.abs(P).max())
    return (alpha >= 0).all() and abs(alpha.sum() - 1) < 1e-9 and bool(
        np.all(np.abs(g[alpha > 1e-6] - lam) < tol * scale)) and bool(np.all(g[alpha <= 1e-6] >= lam - tol * scale))


def test_fedpac_qp_solver_and_statistics_on_hand_examples():
    # diagonal P: alpha_j proportional to 1 / P_jj
    np.testing.assert_allclose(fedpac.solve_qp(np.diag([1.0, 2.0, 4.0])), [4 / 7, 2 / 7, 1 / 7], atol=1e-6)
    # a client far from the others gets little weight (D only adds ||h_0 - h_2||^2 = 50 to P_22): alpha ~ 1 / P_jj
    h = np.array([[[0.0, 0.0]], [[0.0, 0.0]], [[5.0, 5.0]]])
    P = fedpac.qp_matrix(0, h, np.array([1.0, 1.0, 1.0]))
    np.testing.assert_allclose(P, np.diag([1.0, 1, 1]) + np.array([[0, 0, 0], [0, 0, 0], [0, 0, 50.0]]))
    alpha = fedpac.solve_qp(P)
    np.testing.assert_allclose(alpha, np.array([51, 51, 1]) / 103, atol=1e-6)
    np.testing.assert_allclose(fedpac.combination_weights(np.diag([1.0, 1e4, 1.0]), 1e-3, 0), [0.5, 0, 0.5],
                               atol=1e-6)  # 1e-4 -> zeroed, then renormalised
    gen = np.random.default_rng(3)
    for k in (2, 5, 12):
        a = gen.normal(size=(k, k + 3))
        P = a @ a.T * gen.uniform(1e-6, 1e3)
        assert kkt_holds(P, fedpac.solve_qp(P))
    # per-class sums of z (d = 2), of ||z||^2, and counts: class 0 = {(1, 0), (3, 0)}, class 1 = {(0, 2)}
    sums, sq, counts = np.array([[4.0, 0.0], [0.0, 2.0]]), np.array([10.0, 4.0]), np.array([2.0, 1.0])
    means, hh, v = fedpac.feature_statistics(sums, sq, counts)
    np.testing.assert_allclose(means, [[2.0, 0.0], [0.0, 2.0]])
    np.testing.assert_allclose(hh, [[4 / 3, 0.0], [0.0, 2 / 3]])
    # (p0 E0||z||^2 + p1 E1||z||^2 - p0^2 ||mu0||^2 - p1^2 ||mu1||^2) / n = (2/3*5 + 1/3*4 - 4/9*4 - 1/9*4) / 3
    assert abs(v - (2 / 3 * 5 + 1 / 3 * 4 - 4 / 9 * 4 - 1 / 9 * 4) / 3) < 1e-12


def test_fedpac_round_combines_classifiers_by_the_qp_and_aligns_to_prototypes(tmp_path):
    s = Setup(tmp_path, "fedpac")
    a = s.algo
    updates = [s.train(c, 0, s.init)[1] for c in (0, 3, 5)]
    # the client's statistics are those of its trained model on its training split
    u = updates[1]
    vec = u.upload["model"]
    s.trainer.set_vector(vec)
    with torch.no_grad():
        x, y = s.trainer.tensors(s.data.train_of(3))
        z = s.trainer.model.body(x).double().numpy()
    y = y.numpy()
    counts = np.bincount(y, minlength=10)
    np.testing.assert_array_equal(u.upload["counts"], counts)
    for k in np.flatnonzero(counts):
        np.testing.assert_allclose(u.upload["protos"][k], z[y == k].mean(0), rtol=1e-5, atol=1e-6)
    new = a.aggregate(s.init, updates)
    h = np.stack([w.upload["h"] for w in updates]).astype(np.float64)
    v = np.array([w.upload["v"][0] for w in updates])
    heads = np.stack([w.upload["model"][a.head] for w in updates]).astype(np.float64)
    for i, w in enumerate(updates):
        P = fedpac.qp_matrix(i, h, v)
        alpha = fedpac.solve_qp(P)
        assert kkt_holds(P, alpha)
        kept = np.where(alpha > 1e-3, alpha, 0) / np.where(alpha > 1e-3, alpha, 0).sum()
        np.testing.assert_allclose(w.state["personal"], kept @ heads, rtol=1e-5, atol=1e-6)
    # global prototypes: count-weighted means of the local ones
    means, known = a.prototypes_of(new)
    cnt = np.stack([w.upload["counts"] for w in updates]).astype(np.float64)
    held = cnt.sum(0) > 0
    expect = np.einsum("kc,kcd->cd", cnt, np.stack([w.upload["protos"] for w in updates]))[held] / cnt.sum(0)[held,
                                                                                                                None]
    np.testing.assert_allclose(means[held], expect, rtol=1e-5, atol=1e-6)
    assert (known == held).all()
    # round 1: the alignment term pulls the features towards the global prototypes, the more the larger lam
    def proto_gap(lam: float) -> float:
        t = Setup(tmp_path / f"lam{lam}", "fedpac", f"algorithm.lam={lam}")
        w = t.train(3, 1, new, {"personal": updates[1].state["personal"]})[1]
        return float((((w.upload["protos"] - means) ** 2).sum(1) * (w.upload["counts"] > 0)).sum())
    gaps = [proto_gap(lam) for lam in (0.0, 1.0, 10.0)]
    assert gaps[2] < gaps[1] < gaps[0] and gaps[2] < 0.7 * gaps[0]


# ----- FedCP ---------------------------------------------------------------------------------------------------------
def test_fedcp_policy_splits_each_feature_into_parts_that_sum_to_it():
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(4, 2 * 3, generator=gen)
    noise = fedcp.gumbel((4, 2, 3), torch.Generator().manual_seed(1))
    s_p, s_g = fedcp.policy(scores, 0.5, noise)
    a = scores.view(4, 2, 3) + noise
    np.testing.assert_allclose(s_p.numpy(), torch.sigmoid((a[:, 0] - a[:, 1]) / 0.5).numpy(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(s_p + s_g, torch.ones(4, 3))
    # the model: z_p + z_g = z, and logits = h_p(z_p) + h_g(z_g) with the noise-free policy at evaluation
    model = fedcp.CPModel(torch.nn.Flatten(), torch.nn.Linear(3, 2), tau=1.0)
    with torch.no_grad():
        model.ghead.weight.mul_(-2.0)
    z = torch.randn(5, 3, generator=gen)
    z_p, z_g = model.split(z)
    torch.testing.assert_close(z_p + z_g, z)
    c = model.head.weight.sum(0) / model.head.weight.sum(0).norm()  # the context: normalised column sums of W_p
    s = torch.softmax(model.cs(z * c).view(5, 2, 3), dim=1)
    torch.testing.assert_close(z_p, z * s[:, 0])
    torch.testing.assert_close(model(z), model.head(z * s[:, 0]) + model.ghead(z * s[:, 1]))
    # the authors' RBF MMD: 0 between a sample and itself; a hand value for two 1-d points at distance 2
    assert float(fedcp.rbf_mmd(z, z)) == 0.0
    x, y = torch.tensor([[0.0]]), torch.tensor([[2.0]])
    expect = sum(2 - 2 * np.exp(-0.5 * 4 / a) for a in (10, 15, 20, 50))
    assert abs(float(fedcp.rbf_mmd(x, y)) - expect) < 1e-5


def test_fedcp_client_uploads_the_mixed_global_head_and_keeps_its_personal_head(tmp_path):
    s = Setup(tmp_path, "fedcp")
    a = s.algo
    sent, u = s.train(4, 0, s.init)
    vec = u.upload["model"]
    personal = u.state["personal"]
    np.testing.assert_array_equal(personal.size, a.head.sum())
    assert not np.array_equal(personal, s.init[a.head])  # the personalized head trained
    # the global head is frozen locally: its upload is 0.5 h_p(trained) + 0.5 h_g(received)
    np.testing.assert_allclose(vec[a.ghead], 0.5 * personal + 0.5 * s.init[a.ghead], rtol=1e-6)
    for name in ("cs.0.weight", "body.1.weight"):
        assert not np.array_equal(s.part(vec, name), s.part(s.init, name))  # the CPN and the extractor trained
    new = a.aggregate(s.init, [u])
    np.testing.assert_array_equal(new[a.shared], vec[a.shared])
    np.testing.assert_array_equal(new[a.head], s.init[a.head])  # h_p never reaches the server
    # the same round again gives the same Gumbel draws (named stream), a different round different ones
    again = s.train(4, 0, s.init)[1]
    other = s.train(4, 1, s.init)[1]
    np.testing.assert_array_equal(again.upload["model"], vec)
    assert not np.array_equal(other.upload["model"], vec)


# ----- APPLE ---------------------------------------------------------------------------------------------------------
def test_apple_loss_scheduler_follows_its_shapes():
    assert [apple.reg_coef(0.1, "cosine", 4, r) for r in range(6)] == pytest.approx(
        [0.1, 0.1 * (math.cos(math.pi / 4) + 1) / 2, 0.05, 0.1 * (math.cos(3 * math.pi / 4) + 1) / 2, 0.0, 0.0])
    assert [apple.reg_coef(0.1, "exponential", 4, r) for r in range(6)] == pytest.approx(
        [0.1, 0.1 * 0.001**0.25, 0.1 * 0.001**0.5, 0.1 * 0.001**0.75, 0.0, 0.0])
    assert apple.reg_coef(0.0, "cosine", 4, 0) == 0.0


def test_apple_personal_model_is_the_dr_weighted_sum_of_cores_and_the_prox_term_pulls_p_to_the_shares(tmp_path):
    s = Setup(tmp_path, "apple", "algorithm.dr_lr=0.05")
    a, n = s.algo, s.data.num_clients
    gen = np.random.default_rng(0)
    a.load_server_state({"pool_cids": np.array([0, 2, 6]),
                         "pool_models": (s.init + gen.normal(0, 0.1, (3, s.init.size))).astype(np.float32)})
    cores = a.cores(s.init)
    shares = np.array([len(s.data.train_of(j)) for j in range(n)], dtype=np.float64)
    shares /= shares.sum()
    sent, u = s.train(2, 0, s.init)
    np.testing.assert_array_equal(sent.payload["cores"], cores)
    assert sent.note["reg_coef"] == pytest.approx(0.1)
    p = u.state["p"]
    assert p.shape == (n,) and not np.allclose(p, shares, atol=1e-7)  # the DR vector learned from the start p0
    final = cores.copy()
    final[2] = u.upload["model"]  # only the client's own core trained
    assert not np.array_equal(u.upload["model"], cores[2])
    np.testing.assert_allclose(u.state["personal"], p.astype(np.float64) @ final.astype(np.float64), rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_array_equal(s.eval_vector(2, 1, s.init, u.state), u.state["personal"])
    a.aggregate(s.init, [u], {2: sent.note})
    np.testing.assert_array_equal(a.cores(s.init)[2], u.upload["model"])
    # a much larger proximal coefficient keeps p closer to the shares (round 0: mu_0 = mu)
    far = Setup(tmp_path / "mu0", "apple", "algorithm.dr_lr=0.05", "algorithm.mu=0")
    near = Setup(tmp_path / "mu5", "apple", "algorithm.dr_lr=0.05", "algorithm.mu=5")
    gaps = []
    for t in (far, near):
        t.algo.load_server_state(a.server_state())
        gaps.append(np.linalg.norm(t.train(2, 0, s.init)[1].state["p"] - shares))
    assert gaps[1] < 0.8 * gaps[0]


def test_apple_core_lr_scale_num_clients_multiplies_the_own_core_step_by_n(tmp_path):
    # tiny lr, no momentum: the core moves ~linearly in its lr, so N x the lr gives ~N x the displacement,
    # while the DR vector (its own lr) moves the same
    steps = {}
    for scale in ("one", "num_clients"):
        s = Setup(tmp_path / scale, "apple", "train.lr=1e-5", "train.momentum=0",
                  f"algorithm.core_lr_scale={scale}")
        sent, u = s.train(2, 0, s.init)
        steps[scale] = (u.upload["model"].astype(np.float64) - s.init, u.state["p"])
    n = s.data.num_clients
    ratio = np.linalg.norm(steps["num_clients"][0]) / np.linalg.norm(steps["one"][0])
    assert ratio == pytest.approx(n, rel=0.02)
    np.testing.assert_allclose(steps["num_clients"][1], steps["one"][1], rtol=1e-3, atol=1e-6)
