"""FedPAC (Xu, Tong & Huang, ICLR 2023, "Personalized Federated Learning with Feature Alignment and Classifier
Collaboration", arXiv:2306.11867): a shared feature extractor aligned to global class prototypes, and personal
classifiers combined across clients by the weights that minimise an estimate of each client's test risk.

Client i, each round (from the global feature extractor theta and its own classifier phi_i):
1. `classifier_epochs` epochs on the classifier only (feature extractor frozen);
2. the run's local epochs on the feature extractor only (classifier frozen), with the feature-alignment regulariser
       L = CE(phi_i(z), y) + lam * mean_batch [y has a global prototype] * ||z - c_y||^2 / d      (z = f_theta(x))
   (nn.MSELoss's per-feature mean, as the authors' code; no regulariser before the first global prototypes);
3. one pass over its training data with the trained model gives, per class k, the count n_k, the mean feature
   mu_k (its local prototype) and the mean squared norm E||z||^2; with p_k = n_k / n:
       h_i = [p_k mu_k]_k  (C x d),      v_i = (sum_k p_k E_k||z||^2 - sum_k p_k^2 ||mu_k||^2) / n,
   uploaded with theta_i, phi_i, the prototypes and the counts.
Server: theta = sample-weighted mean of the uploaded extractors; global prototypes c_k = count-weighted mean of the
local prototypes (a class no client of the round holds keeps its previous one); and for each uploading client i
the classifier combination weights solve the quadratic program
       min_alpha  alpha^T (diag(v) + D_i) alpha   s.t.  alpha >= 0, sum_j alpha_j = 1,
       D_i[j, l] = sum_k (h_i^k - h_j^k) . (h_i^k - h_l^k)       (j, l over the round's uploading clients),
weights below `min_weight` (1e-3) are zeroed, the rest renormalised, and phi_i <- sum_j alpha_ij phi_j becomes
client i's classifier (its client-state entry, written in `aggregate`). The QP is solved by scipy's SLSQP on P
scaled to unit diagonal maximum (tolerance 1e-12), from the uniform weights; `solve_qp` is tested against the
KKT conditions. The global prototypes are float buffers `proto.*` of the model vector (as in fedproto), so every
client receives the current ones; the global vector's classifier is the sample-weighted mean of the uploaded
classifiers (FL-bench aggregates every parameter before overwriting the personal classifiers), which a client
without a classifier of its own starts from and which the global_* metrics use.

Sources: the authors' code (JianXu95/FedPAC methods/fedpac.py LocalUpdate_FedPAC, tools.py get_head_agg_weight,
protos_aggregation; the paper itself was not available to me in this session, its formulas are taken from there)
and FL-bench (src/server/fedpac.py, src/client/fedpac.py). lam = 1 (authors' args.lam "1.0 for mse_loss",
FL-bench --lamda 1), one classifier epoch (authors' epoch_classifier = 1, FL-bench train_classifier_round 1), weights
below 1e-3 zeroed (authors' eps). Differences:
- the authors train the classifier at lr 0.1 and both phases with SGD momentum 0.5, weight decay 5e-4; here both
  phases use the run's optimizer and learning rate;
- the authors regularise a sample whose class has no global prototype towards its LOCAL prototype (from an extra
  pass before training); here such a sample adds 0 (it can only happen in the first rounds);
- (v_i, h_i) come from the trained model, in the same pass as the uploaded prototypes; the authors extract them
  in a separate pass (statistics_extraction);
- the authors project P onto its eigenvalues >= 0.01 when it has a negative eigenvalue and keep the local
  classifier when cvxpy fails; P is positive semi-definite by construction, SLSQP needs no projection, and a
  solution that does not satisfy the constraints (never seen) falls back to the client's own classifier;
- FL-bench (at the version read) computes the weights but never applies them, and sums the prototypes with
  squared count weights; the authors and this module apply them and weight prototypes by class counts.
Cost: the QP is per uploading client over the K uploaders: O(K^2 C d) for D_i (K = 100: 10^4 C d flops per client).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from scipy.optimize import minimize
from torch import nn

from algorithms.base import Algorithm, ClientJob, ClientUpdate, Notes, Params
from algorithms.fedproto import Prototypes, prototype_loss
from algorithms.fedrep import mask_names
from algorithms.registry import register


class FedPACParams(Params):
    lam: float = Field(1.0, ge=0, description="weight of the feature-alignment term (authors' args.lam 1.0, "
                                              "FL-bench --lamda 1)")
    classifier_epochs: int = Field(1, ge=0, description="classifier-only epochs before the extractor epochs (authors'"
                                                        " epoch_classifier 1, FL-bench train_classifier_round 1)")
    min_weight: float = Field(1e-3, ge=0, lt=1, description="combination weights below this are zeroed (authors' "
                                                            "eps 1e-3)")


class PACModel(nn.Module):
    """body -> head, plus the global prototypes as buffers `proto.*` (unused by the forward pass)."""

    def __init__(self, body: nn.Module, head: nn.Module):
        super().__init__()
        if not isinstance(head, nn.Linear):
            raise ValueError(f"fedpac needs a linear classifier head (its input is the feature space), got "
                             f"{type(head).__name__}")
        self.body, self.head = body, head
        self.proto = Prototypes(head.out_features, head.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


# ----- the mechanism as pure functions (tested directly) ------------------------------------------------------------
def feature_statistics(sums: np.ndarray, sq_norms: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray,
                                                                                            float]:
    """From per-class feature sums (C x d), sums of ||z||^2 (C) and counts (C): (prototypes mu_k, h = p_k mu_k, v)."""
    n = float(counts.sum())
    means = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], 0.0)
    p = counts / max(n, 1.0)
    second = np.where(counts > 0, sq_norms / np.maximum(counts, 1), 0.0)
    v = (float((p * second).sum()) - float((p**2 * (means**2).sum(1)).sum())) / max(n, 1.0)
    return means, p[:, None] * means, v


def qp_matrix(i: int, h: np.ndarray, v: np.ndarray) -> np.ndarray:
    """P_i = diag(v) + D_i, D_i[j, l] = sum_k (h_i^k - h_j^k).(h_i^k - h_l^k); h is K x C x d (float64)."""
    diff = (h[i][None] - h).reshape(len(h), -1)
    return np.diag(np.asarray(v, dtype=np.float64)) + diff @ diff.T


def solve_qp(P: np.ndarray) -> np.ndarray | None:
    """argmin alpha^T P alpha over the probability simplex (SLSQP on P / max diag, from uniform weights); None
    when the solver's answer violates the constraints."""
    k = len(P)
    if k == 1:
        return np.ones(1)
    scale = float(np.abs(np.diag(P)).max()) or float(np.abs(P).max()) or 1.0
    Q = (P + P.T) / (2 * scale)
    res = minimize(lambda a: a @ Q @ a, np.full(k, 1.0 / k), jac=lambda a: 2 * Q @ a, method="SLSQP",
                   bounds=[(0.0, 1.0)] * k, constraints=[{"type": "eq", "fun": lambda a: a.sum() - 1.0,
                                                          "jac": lambda a: np.ones_like(a)}],
                   options={"ftol": 1e-12, "maxiter": 500})
    alpha = np.clip(res.x, 0.0, None)
    if not np.isfinite(alpha).all() or abs(alpha.sum() - 1.0) > 1e-6:
        return None
    return alpha / alpha.sum()


def combination_weights(P: np.ndarray, min_weight: float, own: int) -> np.ndarray:
    """The QP's weights with those below min_weight zeroed and the rest renormalised (the client's own classifier
    alone when the QP has no valid answer)."""
    alpha = solve_qp(P)
    if alpha is None:
        return np.eye(len(P))[own]
    alpha = np.where(alpha > min_weight, alpha, 0.0)
    return alpha / alpha.sum() if alpha.sum() > 0 else np.eye(len(P))[own]


@register
class FedPAC(Algorithm):
    """FedPAC: feature extractor aligned to global prototypes and averaged; classifiers combined by a per-client QP."""

    name = "fedpac"
    Params = FedPACParams
    needs_split = True
    source = ("Xu et al. 2023 (prototype alignment, classifier combination by the variance-bias QP); lam 1, "
              "1 classifier epoch, weights < 1e-3 zeroed (JianXu95/FedPAC, FL-bench fedpac.py)")

    def build_model(self, model: nn.Module) -> nn.Module:
        return PACModel(model.body, model.head)

    def __init__(self, params: FedPACParams, ctx):
        super().__init__(params, ctx)
        self.means, self.known = self.spec.slot("proto.means"), self.spec.slot("proto.known")
        self.head = self.spec.head_mask()
        self.body = self.spec.mask(n for n in self.spec.body_names() if not n.startswith("proto."))
        self.head_names, self.body_names = mask_names(self.spec, self.head), mask_names(self.spec, self.body)
        self.dim = self.means.shape[1]

    def shared_mask(self) -> np.ndarray:
        return ~self.spec.head_mask()  # the extractor and the prototypes; the classifier is personal

    def prototypes_of(self, vec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        m, k = self.means, self.known
        return vec[m.start : m.stop].reshape(m.shape), vec[k.start : k.stop] > 0

    # ----- server side ----------------------------------------------------------------------------------------------
    def aggregate(self, global_vec: np.ndarray, updates: list[ClientUpdate], notes: Notes | None = None) -> np.ndarray:
        if not updates:
            return global_vec
        ordered = sorted(updates, key=lambda u: u.cid)
        new = global_vec.copy()
        weights = np.array([u.num_samples for u in ordered], dtype=np.float64)
        models = np.stack([u.upload["model"] for u in ordered]).astype(np.float64)
        new[self.body | self.head] = (weights @ models[:, self.body | self.head] / weights.sum()).astype(np.float32)
        means, known = (a.astype(np.float64) for a in self.prototypes_of(global_vec))
        counts = np.stack([u.upload["counts"] for u in ordered]).astype(np.float64)  # K x C
        protos = np.stack([u.upload["protos"] for u in ordered]).astype(np.float64)  # K x C x d
        held = counts.sum(0) > 0
        means[held] = np.einsum("kc,kcd->cd", counts, protos)[held] / counts.sum(0)[held, None]
        known[held] = 1.0
        new[self.means.start : self.means.stop] = means.reshape(-1).astype(np.float32)
        new[self.known.start : self.known.stop] = known.astype(np.float32)
        h = np.stack([u.upload["h"] for u in ordered]).astype(np.float64)
        v = np.array([float(u.upload["v"][0]) for u in ordered])
        heads = models[:, self.head]
        for i, u in enumerate(ordered):  # the new personal classifier goes into the client's state
            alpha = combination_weights(qp_matrix(i, h, v), self.params.min_weight, i)
            u.state = {**u.state, "personal": (alpha @ heads).astype(np.float32)}
        return new

    def bytes_up(self, update: ClientUpdate) -> int:
        """The model (without the prototype buffers), prototypes + counts (C x (d + 1)), h_i (C x d) and v_i."""
        return 4 * (self.spec.size + self.ctx.num_classes * self.dim + 1)

    # ----- client side ----------------------------------------------------------------------------------------------
    def local_update(self, job: ClientJob, trainer) -> ClientUpdate:
        means_np, known_np = self.prototypes_of(job.payload["model"])
        means = torch.as_tensor(means_np, device=trainer.device)
        known = torch.as_tensor(known_np, dtype=torch.float32, device=trainer.device)
        trainer.set_vector(self.start_vector(job))
        model = trainer.model
        if self.params.classifier_epochs:
            trainer.train(job, epochs=self.params.classifier_epochs, names=self.head_names, purpose="fedpac-head")
        lam = self.params.lam

        def loss_fn(logits, y, _m=model):  # CE + lam * alignment, on the features of this batch
            return F.cross_entropy(logits, y) + lam * prototype_loss(_m._pac_z, y, means, known)

        hook = model.body.register_forward_hook(lambda _mod, _inp, out: setattr(model, "_pac_z", out))
        try:
            trainer.train(job, names=self.body_names, loss_fn=loss_fn, purpose="fedpac-body")
        finally:
            hook.remove()
            model.__dict__.pop("_pac_z", None)
        protos, h, v, counts = self.statistics(job, trainer)
        vec = trainer.get_vector()
        upload = {"model": vec, "protos": protos, "counts": counts, "h": h, "v": np.array([v])}
        return trainer.update(job, upload=upload, state=self.personal_state(vec))

    def statistics(self, job: ClientJob, trainer) -> tuple[np.ndarray, np.ndarray, float, np.ndarray]:
        """One pass over the training split with the trained model: prototypes, h_i, v_i, class counts."""
        c = self.ctx.num_classes
        sums, sq, counts = np.zeros((c, self.dim)), np.zeros(c), np.zeros(c)
        model = trainer.model
        model.eval()
        with torch.no_grad():
            for x, y in trainer.batches_from(job, trainer.split_of(job.cid, "train"), cost=0):
                z = model.body(x).double()
                yy = y.cpu().numpy()
                np.add.at(sums, yy, z.cpu().numpy())
                np.add.at(sq, yy, (z * z).sum(1).cpu().numpy())
                np.add.at(counts, yy, 1.0)
        means, h, v = feature_statistics(sums, sq, counts)
        if not math.isfinite(v):
            v = 0.0
        return means.astype(np.float32), h.astype(np.float32), v, counts.astype(np.float32)

    def eval_vector(self, job: ClientJob, trainer) -> np.ndarray:
        return self.start_vector(job)
