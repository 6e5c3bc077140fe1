"""FedEM and kNN-Per: each test pins a defining mechanism with numbers (hand computations on a tiny MLP and crafted
examples), then one of them runs end to end with identical numbers in-process, on Ray, with the disk store, with one
worker and after a resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from algorithms.base import ClientJob, ClientUpdate
from algorithms.fedem import responsibilities
from algorithms.knnper import choose_lambda, interpolate, knn_probs
from tests.conftest import OneWorker, runs_everywhere


class Setup(OneWorker):
    """One algorithm on digits (a tiny MLP) with one in-process worker and the initial global vector."""

    def __init__(self, tmp_path, algo: str, *overrides: str):
        super().__init__(tmp_path, algo, "model.options.hidden=4", *overrides)

    def train(self, cid: int, rnd: int, global_vec: np.ndarray, state=None) -> ClientUpdate:
        sent = self.algo.server_prepare(cid, rnd, global_vec, dict(state or {}))
        return self.worker.train([ClientJob(cid, rnd, sent.payload, sent.state)])[0]

    def split(self, cid: int, split: str):
        return self.trainer.tensors(self.data.split_of(cid, split))


# ----- FedEM --------------------------------------------------------------------------------------------------------
def test_fedem_e_step_is_the_normalised_prior_times_likelihood():
    pi = np.array([0.5, 0.3, 0.2])
    losses = np.array([[1.0, 2.0, 3.0], [0.5, 0.1, 2.0], [700.0, 710.0, 705.0]])  # row 3: exp underflows naively
    q = responsibilities(np.log(pi), losses)
    for row, loss in zip(q, losses, strict=True):
        unnorm = pi * np.exp(-(loss - loss.min()))
        np.testing.assert_allclose(row, unnorm / unnorm.sum(), rtol=1e-12)
    np.testing.assert_allclose(q[0], [0.5 * np.exp(-1), 0.3 * np.exp(-2), 0.2 * np.exp(-3)]
                               / (0.5 * np.exp(-1) + 0.3 * np.exp(-2) + 0.2 * np.exp(-3)), rtol=1e-12)
    with np.errstate(divide="ignore"):
        assert responsibilities(np.log(np.array([1.0, 0.0])), np.array([[5.0, 0.0]]))[0, 1] == 0.0


def test_fedem_client_runs_one_em_iteration_and_trains_only_responsible_components(tmp_path):
    s = Setup(tmp_path, "fedem")
    spec, m = s.algo.spec, s.algo.params.n_components
    cid = 3
    pi = np.array([0.6, 0.3, 0.1], dtype=np.float32)
    # hand E-step with the RECEIVED components: per-sample cross-entropy of each component on the training split
    s.trainer.set_vector(s.algo.with_mix(s.init, pi))
    x, y = s.split(cid, "train")
    with torch.no_grad():
        losses = torch.stack([F.cross_entropy(c(x), y, reduction="none") for c in s.trainer.model.components], 1)
    q = pi.astype(np.float64) * np.exp(-losses.double().numpy())
    q /= q.sum(axis=1, keepdims=True)
    update = s.train(cid, 1, s.init, {"pi": pi})
    np.testing.assert_allclose(update.state["pi"], q.mean(axis=0), rtol=1e-5)  # M-step: mean responsibility
    assert abs(float(update.state["pi"].sum()) - 1.0) < 1e-6
    # with pi = (1, 0, 0) every responsibility of components 1, 2 is 0: their weighted loss has no gradient
    update = s.train(cid, 1, s.init, {"pi": np.array([1.0, 0.0, 0.0], dtype=np.float32)})
    np.testing.assert_array_equal(update.state["pi"], [1.0, 0.0, 0.0])
    up = update.upload["model"]
    for j in range(m):
        names = [n.name for n in spec.slots if n.name.startswith(f"components.{j}.")]
        idx = spec.mask(names)
        assert np.array_equal(up[idx], s.init[idx]) == (j > 0), j


def test_fedem_prediction_is_the_pi_weighted_mixture_of_probabilities(tmp_path):
    s = Setup(tmp_path, "fedem")
    pi = np.array([0.7, 0.2, 0.1], dtype=np.float32)
    job = ClientJob(0, 1, {"model": s.init}, {"pi": pi})
    s.trainer.set_vector(s.algo.eval_vector(job, s.trainer))
    model = s.trainer.model.eval()
    x, _ = s.split(0, "test")
    with torch.no_grad():
        mixture = sum(float(p) * torch.softmax(c(x).double(), 1) for p, c in zip(pi, model.components, strict=True))
        np.testing.assert_allclose(torch.exp(model(x)).double().numpy(), mixture.numpy(), rtol=1e-5, atol=1e-7)
    # an unseen client (no state) and the global vector use the uniform mixture
    unseen = s.algo.eval_vector(ClientJob(1, 1, {"model": s.init}, {}), s.trainer)
    mix = s.algo.spec.slot("mix")
    np.testing.assert_array_equal(unseen[mix.start : mix.stop], np.full(3, 1 / 3, dtype=np.float32))


# ----- kNN-Per ------------------------------------------------------------------------------------------------------
def test_knn_probs_kernel_and_leave_one_out_by_hand():
    keys = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [5.0, 5.0]])
    labels = torch.tensor([0, 1, 1, 2])
    q = torch.tensor([[0.0, 0.5]])
    p = knn_probs(q, keys, labels, 3, k=2, scale=1.0)
    d2 = np.array([0.25, 1.25])  # the two nearest: keys 0 (label 0) and 1 (label 1); D = 2
    w = np.exp(-d2 / 2) / np.exp(-d2 / 2).sum()
    np.testing.assert_allclose(p.numpy(), [[w[0], w[1], 0.0]], rtol=1e-12)
    loo = knn_probs(keys, keys, labels, 3, k=1, scale=1.0, exclude_self=True)  # no sample retrieves itself
    np.testing.assert_array_equal(loo.argmax(1).numpy(), [1, 0, 0, 1])
    assert knn_probs(keys[:1], keys[:1], labels[:1], 3, k=1, scale=1.0, exclude_self=True) is None


def test_choose_lambda_by_accuracy_then_likelihood():
    y = torch.tensor([0, 1, 1])
    logits = torch.tensor([[2.0, 0.0], [2.0, 0.0], [0.0, 2.0]])  # the model gets sample 2 right, 1 wrong
    p_knn = torch.tensor([[0.0, 1.0], [0.0, 1.0], [0.0, 1.0]], dtype=torch.float64)  # kNN: 1 and 2 right
    lam = choose_lambda(p_knn, logits, y)
    # rows 0 and 1 share the model's logits: below the crossing λ the model gets 0 and 2 right, above it the kNN
    # gets 1 and 2 right; accuracy is 2/3 for every λ, so the lowest NLL decides (ties: the smaller λ)
    nll = {round(a, 2): float(-torch.log(interpolate(a, p_knn, logits).gather(1, y[:, None])).mean())
           for a in np.arange(0, 1.001, 0.01)}
    assert lam == min(nll, key=lambda a: (nll[a], a))
    assert choose_lambda(None, logits, y) == 0.0


def test_knnper_memory_holds_the_training_split_and_lambda_0_1_give_model_and_knn(tmp_path):
    s = Setup(tmp_path, "knnper", "algorithm.lam=0.0")
    cid = 2
    job = ClientJob(cid, 1, {"model": s.init}, {})
    np.testing.assert_array_equal(s.algo.eval_vector(job, s.trainer), s.init)  # the personalized MODEL is global
    mem = s.algo.build_memory(job, s.trainer, s.init)
    x_train, y_train = s.split(cid, "train")
    with torch.no_grad():
        s.trainer.set_vector(s.init)
        feats = s.trainer.model.body(x_train)
    assert torch.equal(mem.labels, y_train) and torch.equal(mem.keys, feats)  # the training split only
    # lambda = 0: the personalized prediction is the global model's
    personal, plain = s.algo.evaluate_personal(job, s.trainer, s.init), s.trainer.evaluate(s.init, cid)
    assert personal[0] == plain[0] and personal[2] == plain[2] and personal[1] == pytest.approx(plain[1], rel=1e-5)
    # lambda = 1: the kNN prediction, by hand (numpy): the 7 nearest training features, Gaussian kernel
    s1 = Setup(tmp_path / "one", "knnper", "algorithm.lam=1.0")
    x, y = s.split(cid, "test")
    mem1 = s1.algo.build_memory(job, s1.trainer, s.init)
    model = s1.trainer.model.eval()
    with torch.no_grad():
        zq = model.body(x)
        out = mem1.predict(zq, model.head(zq)).numpy()
    keys, lab, zq = feats.double().numpy(), y_train.numpy(), zq.double().numpy()
    expected_all = []
    for i in range(len(zq)):
        d2 = ((keys - zq[i]) ** 2).sum(1)
        near = np.argsort(d2, kind="stable")[:7]
        w = np.exp(-(d2[near] - d2[near].min()) / keys.shape[1])
        expected_all.append(np.bincount(lab[near], weights=w / w.sum(), minlength=out.shape[1]))
    expected_all = np.array(expected_all)
    np.testing.assert_allclose(out, expected_all, atol=1e-6)
    # ... and the hook's metrics are that prediction's: accuracy and summed negative log-likelihood
    correct, loss, n = s1.algo.evaluate_personal(job, s1.trainer, s.init)
    y_np = y.numpy()
    assert n == len(y_np) and correct == int((expected_all.argmax(1) == y_np).sum())
    picked = np.maximum(expected_all[np.arange(len(y_np)), y_np], 1e-10)
    assert loss == pytest.approx(float(-np.log(picked).sum()), rel=1e-4)


def test_knnper_selects_lambda_on_validation_never_test(tmp_path, monkeypatch):
    s = Setup(tmp_path, "knnper", "partition.val_fraction=0.3")
    cid = next(c for c in range(s.data.num_clients) if len(s.data.split_of(c, "val")))
    seen = []
    original = s.algo.embed
    monkeypatch.setattr(s.algo, "embed", lambda job, trainer, split: seen.append(split) or original(job, trainer,
                                                                                                    split))
    mem = s.algo.build_memory(ClientJob(cid, 1, {"model": s.init}, {}), s.trainer, s.init)
    assert seen == ["train", "val"]
    z, logits, y = original(ClientJob(cid, 1, {"model": s.init}, {}), s.trainer, "val")
    assert mem.lam == choose_lambda(knn_probs(z, mem.keys, mem.labels, 10, 7, 1.0), logits, y)


def test_knnper_end_to_end_identical_everywhere(tmp_path, actors):
    out = runs_everywhere(tmp_path, "algorithm.name=knnper", "rounds=3", "eval_every=1", "partition.val_fraction=0.2",
                          actors=actors)
    final = out["local"].final
    assert final["personal_acc"] > final["global_acc"]  # the memory helps on label-skewed clients


def test_knnper_builds_one_memory_per_client_evaluation(tmp_path, monkeypatch):
    """Test and validation splits of one client's evaluation share its memory; another client, round or model
    object builds a new one."""
    s = Setup(tmp_path, "knnper", "partition.val_fraction=0.2")
    built = []
    original = type(s.algo).build_memory

    def counting(self, job, trainer, vec):
        built.append((job.cid, job.round))
        return original(self, job, trainer, vec)

    monkeypatch.setattr(type(s.algo), "build_memory", counting)
    evals = s.worker.evaluate([ClientJob(c, 3, {"model": s.init}, {}) for c in (0, 1)])
    assert built == [(0, 3), (1, 3)] and all(e.val_n > 0 for e in evals)
    job = ClientJob(0, 3, {"model": s.init}, {})
    once = s.algo.evaluate_personal(job, s.trainer, s.init)  # client 1 came between: rebuilt
    twice = s.algo.evaluate_personal(job, s.trainer, s.init, "val")  # the same evaluation's val split: reused
    again = s.algo.evaluate_personal(ClientJob(0, 4, {"model": s.init}, {}), s.trainer, s.init)  # a new round
    s.algo.evaluate_personal(ClientJob(0, 4, {"model": s.init}, {}), s.trainer, s.init.copy())  # a new model object
    assert built == [(0, 3), (1, 3), (0, 3), (0, 4), (0, 4)]
    assert once == again and twice[2] > 0  # same model, same numbers
