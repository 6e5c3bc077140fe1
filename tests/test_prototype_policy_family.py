"""APPLE, FedPAC and FedCP: each test pins the defining mechanism with hand-computed numbers (it fails when the
mechanism is broken, not only when the code crashes)."""

from __future__ import annotations

import numpy as np
import torch

from algorithms import fedpac
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
