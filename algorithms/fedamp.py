"""FedAMP (Huang, Chu, Zhou, Wang, Liu, Pei & Zhang, AAAI 2021, "Personalized Cross-Silo Federated Learning on
Non-IID Data", arXiv:2007.03797): federated attentive message passing.

Every client i owns a personalized model w_i. The objective sum_i F_i(w_i) + lam sum_{i<j} A(||w_i - w_j||^2), with
the attention-inducing A(x) = 1 - exp(-x / sigma) (the paper's example), is minimised by alternating
- on the server, a gradient step on the attention term: client i's personalized cloud model
      u_i = sum_j xi_ij w_j,   xi_ij = alpha_k A'(||w_i - w_j||^2) = (alpha_k / sigma) exp(-||w_i - w_j||^2 / sigma)
      for j != i,   xi_ii = 1 - sum_{j != i} xi_ij          (every row sums to 1; close models weigh more);
- on the client, a proximal step: w_i = argmin_w F_i(w) + (lam / (2 alpha_k)) ||w - u_i||^2, here the run's local
  SGD with that proximal term (trainer.proximal), started from the client's own w_i (from u_i the first time).
HeurFedAMP (`heuristic`, the paper's variant for deep networks) uses cosine similarity instead:
      xi_ij = (1 - xi_ii) exp(sigma cos(w_i, w_j)) / sum_{h != i} exp(sigma cos(w_i, w_h)),  xi_ii = `self_weight`.
The personalized model of a client is its own w_i. FedAMP has no global model (has_global_model False; the
global vector stays the initial model w^0, which a never-trained client is evaluated with).

Server state, and its memory: u_i needs every client's latest w_j, so the server keeps the last uploaded model of
every client that has trained (ids + an N_seen x d float32 matrix, checkpointed through server_state): O(N d),
bounded by the clients seen, ~105 MB per 1,000 clients of the 26,250-parameter MLP. That is what the paper's
message passing needs and nothing more (no history, no u_i). Clients keep their w_i in the client-state store too,
because evaluation on the workers sees only the global vector and the client's state (so w_i is stored twice).
Distances and cosines are over the trainable parameters (float64); u_i combines every element, buffers included.

Checked against the paper (the attention function, the message-passing and proximal steps, HeurFedAMP's
cosine attention and fixed self-attention) and against PFLlib (servers/serveramp.py, clients/clientamp.py) and
Fling (fling/component/group/fedamp_group.py, client/fedamp_client.py, argzoo/cifar10/cifar10_fedamp_resnet_config.py).
Defaults: lam 1, alpha_k 1, sigma 1 (PFLlib's defaults; Fling's CIFAR-10 config uses lam 1, alpha_k 1e4, sigma 100
with alpha_k decayed x0.1 every 30 rounds); the paper's per-data-set values were not available in the sources read.
The paper is cross-silo with every client in every round; with partial participation u_i is computed when i is
dispatched, from the stored models of the clients seen so far (never-trained clients, still at w^0, are left out;
identical to the paper from round 1 when all clients take part). Differences, the module follows the paper:
- PFLlib's client adds 0.5 (lam / alpha_k) ||w - u|| (a norm, not squared) computed from detached tensors, so the
  proximal term has no gradient; here the squared term acts on the gradients (as Fling's);
- PFLlib builds u_i from the previous round's uploads only; Fling from all clients (full participation);
- alpha_k is constant (Fling decays it); xi_ii may become negative when alpha_k sum_j A' > 1 (the paper's analysis
  takes alpha_k small enough): the formula is applied as it stands, the round's mean and smallest xi_ii are logged.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field, model_validator

from algorithms.base import Algorithm, ClientJob, ClientUpdate, Dispatch, Notes, Params, Phase, State
from algorithms.pool import ModelPool
from algorithms.registry import register


# ----- the mechanism as pure functions (tested directly) ------------------------------------------------------------
def attention_weights(mine: np.ndarray, others: np.ndarray, alpha_k: float, sigma: float) -> tuple[float, np.ndarray]:
    """FedAMP: (xi_ii, xi_ij for each row of `others`), xi_ij = alpha_k/sigma exp(-||w_i - w_j||^2 / sigma)."""
    if len(others) == 0:
        return 1.0, np.zeros(0)
    diff = others.astype(np.float64) - mine.astype(np.float64)
    xi = alpha_k / sigma * np.exp(-np.einsum("ij,ij->i", diff, diff) / sigma)
    return 1.0 - float(xi.sum()), xi


def heuristic_weights(mine: np.ndarray, others: np.ndarray, sigma: float, self_weight: float
                      ) -> tuple[float, np.ndarray]:
    """HeurFedAMP: xi_ii = self_weight, the rest shared by a softmax of sigma * cos(w_i, w_j)."""
    if len(others) == 0:
        return 1.0, np.zeros(0)
    a = mine.astype(np.float64)
    b = others.astype(np.float64)
    cos = b @ a / np.maximum(np.linalg.norm(b, axis=1) * np.linalg.norm(a), 1e-12)
    logits = sigma * cos
    e = np.exp(logits - logits.max())
    return self_weight, (1.0 - self_weight) * e / e.sum()


def cloud_model(own: np.ndarray, self_weight: float, others: np.ndarray, xi: np.ndarray) -> np.ndarray:
    """u_i = xi_ii w_i + sum_j xi_ij w_j (float64, rows in client-id order; float32 out)."""
    u = self_weight * own.astype(np.float64)
    for row, weight in zip(others, xi, strict=True):
        u += weight * row.astype(np.float64)
    return u.astype(np.float32)


class FedAMPParams(Params):
    lam: float = Field(1.0, gt=0, description="lambda, weight of the attention term; the client's proximal "
                                              "coefficient is lam/alpha_k (PFLlib default: 1; Fling: 1)")
    alpha_k: float = Field(1.0, gt=0, description="step size of the message-passing step alpha_k (PFLlib default: "
                                                  "1; Fling's CIFAR-10 config: 1e4)")
    sigma: float = Field(1.0, gt=0, description="scale of A(x) = 1 - exp(-x/sigma); with heuristic, the cosine "
                                                "temperature (PFLlib default: 1; Fling's CIFAR-10 config: 100)")
    heuristic: bool = Field(False, description="HeurFedAMP: cosine attention with a fixed self weight (paper's "
                                               "heuristic variant)")
    self_weight: float | None = Field(None, ge=0, lt=1, description="HeurFedAMP's self-attention xi_ii; no default "
                                                                    "(the paper tunes it), required with heuristic")

    @model_validator(mode="after")
    def _heuristic_needs_self_weight(self):
        if self.heuristic and self.self_weight is None:
            raise ValueError("heuristic=true needs self_weight (HeurFedAMP's xi_ii in [0, 1))")
        return self


@register
class FedAMP(Algorithm):
    """FedAMP: per-client cloud models u_i = sum_j xi_ij w_j by attention on model distances; proximal local steps."""

    name = "fedamp"
    batchable = True  # one SGD phase with a proximal term to u_k: vectorises (train.batched)
    Params = FedAMPParams
    has_global_model = False
    source = ("Huang et al. 2021 (attention A(x) = 1 - exp(-x/sigma), proximal lam/alpha_k); lam 1, alpha_k 1, sigma "
              "1 from PFLlib (the paper's per-data-set values not available here)")

    def __init__(self, params: FedAMPParams, ctx):
        super().__init__(params, ctx)
        self.trainable = self.spec.mask(s.name for s in self.spec.slots if s.trainable)
        self.pool = ModelPool(self.spec.size)  # client id -> its last uploaded w (server state)

    # ----- server side ----------------------------------------------------------------------------------------------
    def weights(self, own: np.ndarray, others: np.ndarray) -> tuple[float, np.ndarray]:
        p = self.params
        mine, rows = own[self.trainable], others[:, self.trainable]
        if p.heuristic:
            return heuristic_weights(mine, rows, p.sigma, p.self_weight)
        return attention_weights(mine, rows, p.alpha_k, p.sigma)

    def server_prepare(self, cid: int, round: int, global_vec: np.ndarray, state: State) -> Dispatch:
        """u_i from client i's stored w_i (w^0 if it never trained) and the stored models of the other clients."""
        own = self.pool.get(cid, global_vec)
        ids, models = self.pool.stacked()
        others = models[ids != cid]  # client-id order
        self_weight, xi = self.weights(own, others)
        u = cloud_model(own, self_weight, others, xi)
        note = {"self_weight": self_weight, "peers": float(len(others))}
        return Dispatch({"model": u}, state, note)

    def aggregate(self, global_vec: np.ndarray, updates: list[ClientUpdate], notes: Notes | None = None) -> np.ndarray:
        """No global model: the round's uploads replace their clients' entries in the pool."""
        self.pool.put(updates)
        return global_vec

    def server_state(self) -> State:
        return self.pool.state()

    def load_server_state(self, state: State) -> None:
        self.pool.load(state)

    def round_metrics(self, notes: Notes) -> dict[str, float]:
        if not notes:
            return {}
        weights = [notes[c]["self_weight"] for c in sorted(notes)]
        return {"fedamp_self_weight_mean": float(np.mean(weights)), "fedamp_self_weight_min": float(np.min(weights)),
                "fedamp_peers_mean": float(np.mean([notes[c]["peers"] for c in notes]))}

    # ----- client side ----------------------------------------------------------------------------------------------
    def local_phases(self, job: ClientJob) -> list[Phase]:
        u = job.payload["model"]
        return [Phase(job.state.get("w", u), anchor=u, coef=self.params.lam / self.params.alpha_k)]

    def local_result(self, job: ClientJob, trained, stats, trainer) -> ClientUpdate:
        return trainer.update(job, upload={"model": trained[-1]}, state={"w": trained[-1]})

    def local_update(self, job: ClientJob, trainer) -> ClientUpdate:
        return self.run_phases(job, trainer)

    def received_vector(self, job: ClientJob, trainer) -> np.ndarray:
        return job.state.get("w", job.payload["model"])

    def eval_vector(self, job: ClientJob, trainer) -> np.ndarray:
        return job.state.get("w", job.payload["model"])
