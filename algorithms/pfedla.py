"""pFedLA (Ma, Zhang, Guo & Xu, CVPR 2022, "Layer-wised Model Aggregation for Personalized Federated Learning",
arXiv:2205.03993): the server aggregates a personalized model for each client layer by layer, with weights that a
hypernetwork dedicated to that client produces and learns from the client's update.

The server keeps every client's personalized model theta_j (j = 1..N; the common initialisation until j trains)
and, for client i, a hypernetwork HN_i with its embedding v_i (dimension `embedding_dim`):
    f = MLP(v_i)  (Linear(e, H), ReLU, Linear(H, H), ReLU, Linear(H, H), ReLU),   o_i^l = ReLU(W^l f + b^l) in R^N
    alpha_i^l = o_i^l / sum_j o_i^l[j]   (the one-hot vector of i when the sum is 0)           one per layer l
    thetabar_i^l = sum_j alpha_i^l[j] theta_j^l                                                sent to client i
The client trains thetabar_i with the run's local SGD (-> theta~_i) and uploads dtheta_i = thetabar_i - theta~_i.
The server then (client-id order, each against the models as they were at dispatch):
    g = (d thetabar_i / d (v_i, phi_i))^T dtheta_i     (chain rule through alpha; one SGD step at `hn_lr`)
    theta_i <- theta_i - dtheta_i                      (the client's personalized model takes the local update)
A "layer" is one module's tensors (weight + bias, and a BatchNorm's running statistics), ParamSpec.layer_groups().

Where things live: HN_i (v_i and its weights, e + 3 H^2-ish + L (H + 1) N floats) and theta_i are client i's
store entry ("hn", "model"; HN_i starts from rng(seed, "pfedla-hn", i) with FL-bench's initialisation: embedding
N(0, 1), MLP PyTorch-default uniform, output layers weight U(0, 1) and bias 0). The server keeps the models
theta_j of the clients that have trained (ids + N_seen x d float32, server_state, as pfedsim's pool), because
every aggregation reads all of them; the personalized model evaluated is theta_i (written into i's state by
`aggregate`). Memory is the paper's O(N) per client: for N = 10,000 and the 3-layer digits MLP, HN_i has
3 x 101 x 10,000 = 3 M floats (12 MB per client in the store, 120 GB in all) and the pool 10,000 x d floats; the
method was designed for tens of clients. There is no global model (has_global_model False).

Defaults from FL-bench (src/server/pfedla.py): hn_lr 5e-3, momentum 0 (plain SGD, so HN_i needs no optimizer
state), embedding_dim 100, hidden_dim 100; the paper's hyperparameters were not available to me in this session.
Differences from FL-bench:
- FL-bench weights every parameter TENSOR separately (weight and bias of a layer get different alphas); here a
  layer (the paper's unit) shares one alpha;
- FL-bench passes -(thetabar - theta~) as the gradient output, which with its SGD step moves thetabar away from the
  client's trained model; here the descent direction thetabar - theta~ (pFedHN's convention, the same chain rule);
- FL-bench updates one client at a time (each dispatch sees the previous client's update); here the round's
  clients are dispatched from the same models, and updates are applied in client-id order;
- HeurpFedLA (FL-bench --k > 0, freezing the top-k self-weighted layers) is not implemented.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from algorithms.base import Algorithm, ClientJob, ClientUpdate, Dispatch, Notes, Params, State
from algorithms.pool import ModelPool
from algorithms.registry import register
from protocol.rng import rng

FLBENCH = "FL-bench src/server/pfedla.py"


class PFedLAParams(Params):
    hn_lr: float = Field(5e-3, gt=0, description="SGD learning rate of each client's hypernetwork (" + FLBENCH + ")")
    embedding_dim: int = Field(100, ge=1, description="client embedding size (" + FLBENCH + ": 100)")
    hidden_dim: int = Field(100, ge=1, description="hypernetwork hidden width (" + FLBENCH + ": 100)")


def hn_layout(e: int, h: int, layers: int, n: int) -> list[tuple[str, tuple[int, ...]]]:
    """Names and shapes of HN_i's tensors, in the order of its flat vector."""
    return [("v", (e,)), ("w1", (h, e)), ("b1", (h,)), ("w2", (h, h)), ("b2", (h,)), ("w3", (h, h)), ("b3", (h,)),
            ("wo", (layers, n, h)), ("bo", (layers, n))]


def unflatten(vec, layout) -> dict:
    out, at = {}, 0
    for name, shape in layout:
        size = int(np.prod(shape))
        out[name] = vec[at : at + size].reshape(shape)
        at += size
    return out


def layer_weights(hn: dict, own: int) -> torch.Tensor:
    """alpha (L x N): ReLU outputs of HN_i normalised per layer; a layer whose outputs are all 0 gets one-hot(own)."""
    f = torch.relu(F.linear(hn["v"], hn["w1"], hn["b1"]))
    f = torch.relu(F.linear(f, hn["w2"], hn["b2"]))
    f = torch.relu(F.linear(f, hn["w3"], hn["b3"]))
    o = torch.relu(torch.einsum("lnh,h->ln", hn["wo"], f) + hn["bo"])
    total = o.sum(dim=1, keepdim=True)
    fallback = torch.zeros_like(o)
    fallback[:, own] = 1.0
    return torch.where(total > 0, o / torch.where(total > 0, total, torch.ones_like(total)), fallback)


def aggregate_layers(alpha: np.ndarray, ids: np.ndarray, models: np.ndarray, base: np.ndarray,
                     groups: list[np.ndarray]) -> np.ndarray:
    """thetabar^l = sum_j alpha[l, j] theta_j^l, where theta_j = models[k] for j = ids[k] and `base` (the initial
    model) for every other client: sum over the pool plus (their alphas' sum) x base. float64 sums, float32 out."""
    rest = np.ones(alpha.shape[1], dtype=bool)
    rest[ids] = False
    out = np.empty(base.shape[0], dtype=np.float32)
    for layer, idx in enumerate(groups):
        a = alpha[layer].astype(np.float64)
        out[idx] = (a[ids] @ models[:, idx].astype(np.float64) + a[rest].sum() * base[idx].astype(np.float64)
                    ).astype(np.float32)
    return out


def alpha_gradient(ids: np.ndarray, models: np.ndarray, base: np.ndarray, delta: np.ndarray, groups: list[np.ndarray],
                   n: int) -> np.ndarray:
    """d(thetabar . delta) / d alpha[l, j] = theta_j^l . delta^l (L x N): the chain rule's first factor."""
    out = np.empty((len(groups), n), dtype=np.float64)
    for layer, idx in enumerate(groups):
        d = delta[idx].astype(np.float64)
        out[layer, :] = base[idx].astype(np.float64) @ d
        out[layer, ids] = models[:, idx].astype(np.float64) @ d
    return out


@register
class PFedLA(Algorithm):
    """pFedLA: per-client hypernetworks weigh every client's model layer by layer; learned from the client's update."""

    name = "pfedla"
    Params = PFedLAParams
    has_global_model = False
    source = ("Ma et al. 2022 (layer-wise aggregation weights from a per-client hypernetwork, chain-rule update); "
              "hn lr 5e-3, embedding 100, hidden 100 (" + FLBENCH + ")")

    def __init__(self, params: PFedLAParams, ctx):
        super().__init__(params, ctx)
        self.groups = [np.concatenate([np.arange(s.start, s.stop) for s in g]) for g in self.spec.layer_groups()]
        self.layout = hn_layout(params.embedding_dim, params.hidden_dim, len(self.groups), ctx.num_clients)
        self.pool = ModelPool(self.spec.size)  # the clients with a personalized model of their own (server state)

    def new_hypernet(self, cid: int) -> np.ndarray:
        """FL-bench's initialisation: embedding N(0,1); MLP U(+-1/sqrt(fan_in)); output weights U(0,1), biases 0."""
        gen = rng(self.ctx.seed, "pfedla-hn", cid)
        parts = []
        for name, shape in self.layout:
            if name == "v":
                parts.append(gen.standard_normal(shape))
            elif name == "wo":
                parts.append(gen.uniform(0.0, 1.0, shape))
            elif name == "bo":
                parts.append(np.zeros(shape))
            else:
                fan_in = self.params.embedding_dim if name in ("w1", "b1") else self.params.hidden_dim
                bound = 1.0 / np.sqrt(fan_in)
                parts.append(gen.uniform(-bound, bound, shape))
        return np.concatenate([p.reshape(-1) for p in parts]).astype(np.float32)

    def model_of(self, cid: int, global_vec: np.ndarray) -> np.ndarray:
        """theta_cid: its own model where it has one, the initial model (the global vector) otherwise."""
        return self.pool.get(cid, global_vec)

    def alpha_of(self, hn_vec: np.ndarray, cid: int, grad: bool = False):
        hn = {k: torch.tensor(v, requires_grad=grad) for k, v in unflatten(hn_vec, self.layout).items()}
        return hn, layer_weights(hn, cid)

    # ----- server side ----------------------------------------------------------------------------------------------
    def server_prepare(self, cid: int, round: int, global_vec: np.ndarray, state: State) -> Dispatch:
        hn_vec = state.get("hn")
        if hn_vec is None:
            hn_vec = self.new_hypernet(cid)
            state = {**state, "hn": hn_vec}
        with torch.no_grad():
            alpha = self.alpha_of(hn_vec, cid)[1].numpy()
        model = aggregate_layers(alpha, *self.pool.stacked(), global_vec, self.groups)
        return Dispatch({"model": model}, state, {"self_weight": float(alpha[:, cid].mean())})

    def aggregate(self, global_vec: np.ndarray, updates: list[ClientUpdate], notes: Notes | None = None) -> np.ndarray:
        if not updates:
            return global_vec
        ids, models = self.pool.stacked()  # as at dispatch
        trained = {}
        for u in sorted(updates, key=lambda u: u.cid):
            delta = u.upload["delta"]
            hn, alpha = self.alpha_of(u.state["hn"], u.cid, grad=True)
            g_alpha = torch.as_tensor(alpha_gradient(ids, models, global_vec, delta, self.groups, self.ctx.num_clients),
                                      dtype=alpha.dtype)
            names = [n for n, _ in self.layout]
            grads = torch.autograd.grad(alpha, [hn[n] for n in names], grad_outputs=g_alpha, allow_unused=True)
            new_hn = np.concatenate([(hn[n].detach() - self.params.hn_lr * (g if g is not None else 0.0)).reshape(-1)
                                     .numpy() for n, g in zip(names, grads, strict=True)]).astype(np.float32)
            theta = (self.model_of(u.cid, global_vec) - delta).astype(np.float32)
            trained[u.cid] = theta
            u.state = {**u.state, "hn": new_hn, "model": theta}  # committed with the round
        for cid, theta in trained.items():
            self.pool.set(cid, theta)
        return global_vec

    def server_state(self) -> State:
        return self.pool.state()

    def load_server_state(self, state: State) -> None:
        self.pool.load(state)

    def round_metrics(self, notes: Notes) -> dict[str, float]:
        return {"pfedla_self_weight_mean": float(np.mean([notes[c]["self_weight"] for c in sorted(notes)]))} \
            if notes else {}

    def server_bytes(self) -> int:
        return 4 * sum(int(np.prod(shape)) for _, shape in self.layout)  # one client's N-wide hypernetwork

    def bytes_up(self, update: ClientUpdate) -> int:
        return 4 * int(update.upload["delta"].size) if "delta" in update.upload else 0

    # ----- client side ----------------------------------------------------------------------------------------------
    def local_update(self, job: ClientJob, trainer) -> ClientUpdate:
        start = job.payload["model"]
        trainer.set_vector(start)
        trainer.train(job)
        return trainer.update(job, upload={"delta": start - trainer.get_vector()}, state=job.state)

    def received_vector(self, job: ClientJob, trainer) -> np.ndarray:
        return job.payload["model"]

    def trained_vector(self, job: ClientJob, update: ClientUpdate, trainer) -> np.ndarray:
        return job.payload["model"] - update.upload["delta"]

    def eval_vector(self, job: ClientJob, trainer) -> np.ndarray:
        """theta_i, the client's personalized model (the initial model until it has trained)."""
        return job.state.get("model", job.payload["model"])
