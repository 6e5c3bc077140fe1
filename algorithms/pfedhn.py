"""pFedHN (Shamsian, Navon, Fetaya & Chechik, ICML 2021, "Personalized Federated Learning using Hypernetworks",
arXiv:2103.04628): a hypernetwork on the server generates each client's model from a learned client embedding.

The hypernetwork h(v; phi): the client embedding v_i (dimension `embed_dim`) goes through an MLP, Linear(e, H) then
`n_hidden` x [ReLU, Linear(H, H)] (H = `hidden_dim`), and a linear output layer maps the H features to every
generated element of the target model (the authors' per-tensor output heads Linear(H, numel) stacked into one
Linear(H, d_gen): the same function and the same initialisation). Per round, for each sampled client i:
    theta_i = h(v_i; phi)                          generated on the server and sent to the client
    theta~_i = local SGD from theta_i              the run's local epochs, optimizer and learning rate
    dtheta_i = theta_i - theta~_i                  uploaded (d_gen floats)
    g_phi = (d theta_i / d phi)^T dtheta_i,  g_v = (d theta_i / d v_i)^T dtheta_i      (the chain rule)
then both gradients, clipped together to L2 norm `norm_clip`, take one SGD step with momentum `hn_momentum` and
weight decay `hn_weight_decay` (learning rates `hn_lr` for phi and `embed_lr` for v_i). The paper writes
dtheta = theta~ - theta in Algorithm 1; its code (and FL-bench) use theta - theta~, the descent direction, as here.

pFedHN-PC (`personal_classifier: true`, the paper's Section 4.3 variant): the hypernetwork generates only the
feature extractor; each client keeps its own classifier (head.*, from the common initialisation), trained jointly
and never sent (client-state store). In plain pFedHN every trainable tensor is generated; float buffers (e.g.
BatchNorm statistics) are never generated and stay the client's own (FL-bench refuses global buffers likewise).

Where things live, and why:
- phi (the hypernetwork's shared weights) is part of the model vector, as float buffers `hn.*` (non-trainable for
  the client's SGD): evaluation on a worker sees only the global vector and the client's state, and must produce
  the CURRENT personalized model h(v_i; phi) (the authors evaluate every client with the current hypernetwork).
  So phi is checkpointed with the global vector; the SGD momentum of phi is server state (server_state).
- v_i and its momentum live in the client's store entry ("embedding", "embedding_momentum"), written by the server
  in `aggregate`; a client never sampled has v_i = N(0, 1) draws from rng(seed, "pfedhn-embedding", i), the
  initialisation of nn.Embedding. Memory: e floats per client, nothing per client on the server.
- The target model's own tensors in the global vector stay the common initialisation (never sent); there is no
  global model (has_global_model False). Bytes down: theta_i (+ the initial classifier for a PC client without its
  own); up: dtheta_i.

Defaults, from the authors' code (AvivSham/pFedHN experiments/pfedhn/trainer.py): hn lr 1e-2, momentum 0.9,
weight decay 1e-3, embed lr = hn lr, hidden 100, 3 hidden layers, clip 50 (the same in FL-bench's pfedhn.py).
Differences from the known implementations:
- the authors (and FL-bench) sample ONE client per hypernetwork step and generate its model from the current phi.
  Here the round's clients are trained in parallel from the round's phi; the server then takes one step per client
  in client-id order, each with that client's chain-rule gradient at the phi that generated its model. With one
  client per round this is exactly their algorithm.
- embed_dim: the authors' automatic size is int(1 + N/4) (FL-bench: int((1 + N)/4)); the model is built before
  the number of clients is known here, so the default is 13, the authors' value for their 50-client experiments.
- the authors' embedding table gets a dense gradient, so SGD's momentum and weight decay move every client's
  embedding at every step; here v_i moves only when client i trains (its momentum is kept with it).
- the authors' inner loop is 50 SGD steps (lr 5e-3, momentum 0.9, wd 5e-5, gradient clip 50); here the local
  training is the run's (train.local_epochs, train.lr, ...).
Memory: the output layer is H x d_gen: 100 x 3,466 for the digits MLP (hidden 32), 100 x 878,538 (88 M floats,
351 MB in the global vector, as much again in momentum) for avgcnn.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from algorithms.base import Algorithm, ClientJob, ClientUpdate, Dispatch, Notes, Params, State
from algorithms.registry import register
from protocol.rng import rng

AUTHORS = "AvivSham/pFedHN experiments/pfedhn/trainer.py"


class PFedHNParams(Params):
    embed_dim: int = Field(13, ge=1, description="client embedding size (authors' auto rule int(1 + N/4) = 13 at "
                                                 "their 50 clients; the model is built before N is known)")
    hidden_dim: int = Field(100, ge=1, description="hypernetwork hidden width (" + AUTHORS + " --hyper-hid 100)")
    n_hidden: int = Field(3, ge=0, description="[ReLU, Linear] blocks after the first layer (authors: 3)")
    hn_lr: float = Field(1e-2, gt=0, description="SGD learning rate of the hypernetwork (authors: --lr 1e-2)")
    embed_lr: float | None = Field(None, gt=0, description="learning rate of the embeddings; null = hn_lr (authors)")
    hn_momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum of the hypernetwork (authors: 0.9)")
    hn_weight_decay: float = Field(1e-3, ge=0, description="SGD weight decay of the hypernetwork (authors: --wd 1e-3)")
    norm_clip: float = Field(50.0, gt=0, description="L2 clip of the hypernetwork gradient (authors: 50)")
    personal_classifier: bool = Field(False, description="pFedHN-PC: generate only the feature extractor; each "
                                                         "client keeps its own classifier (paper Sec. 4.3)")


class HyperBuffers(nn.Module):
    """phi as float buffers (part of the model vector, not trained by the client's SGD), nn.Linear-initialised."""

    def __init__(self, embed_dim: int, hidden: int, n_hidden: int, out: int):
        super().__init__()
        dims = [(embed_dim, hidden)] + [(hidden, hidden)] * n_hidden + [(hidden, out)]
        for k, (n_in, n_out) in enumerate(dims):
            layer = nn.Linear(n_in, n_out)  # PyTorch's default init, under the run's model-init seed
            self.register_buffer(f"w{k}", layer.weight.detach().clone())
            self.register_buffer(f"b{k}", layer.bias.detach().clone())


class HNModel(nn.Module):
    """The target model (body -> head) plus the hypernetwork's buffers `hn.*` (unused in the forward pass)."""

    def __init__(self, body: nn.Module, head: nn.Module, hn: HyperBuffers):
        super().__init__()
        self.body, self.head, self.hn = body, head, hn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def hypernet(phi: list[torch.Tensor], v: torch.Tensor) -> torch.Tensor:
    """h(v; phi) with phi = [w0, b0, w1, b1, ..., w_out, b_out]: Linear, then [ReLU, Linear] blocks, then the
    output Linear applied to the last hidden features (no ReLU before it, as the authors' CNNHyper)."""
    h = F.linear(v, phi[0], phi[1])
    for k in range(2, len(phi) - 2, 2):
        h = F.linear(torch.relu(h), phi[k], phi[k + 1])
    return F.linear(h, phi[-2], phi[-1])


def chain_rule(phi: list[np.ndarray], v: np.ndarray, delta: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """(g_phi, g_v) = (d h(v; phi) / d (phi, v))^T delta, by reverse-mode autodiff (float32, as the models)."""
    leaves = [torch.tensor(p, requires_grad=True) for p in phi]
    vt = torch.tensor(v, requires_grad=True)
    grads = torch.autograd.grad(hypernet(leaves, vt), [*leaves, vt], grad_outputs=torch.tensor(delta))
    return [g.numpy() for g in grads[:-1]], grads[-1].numpy()


def sgd_step(param: np.ndarray, grad: np.ndarray, buf: np.ndarray | None, lr: float, momentum: float,
             weight_decay: float) -> tuple[np.ndarray, np.ndarray]:
    """torch.optim.SGD's step (no dampening, no Nesterov): g += wd p; buf = g the first time, else mu buf + g;
    p -= lr buf. Returns (new param, new buffer)."""
    g = grad + weight_decay * param
    buf = g if buf is None or momentum == 0 else momentum * buf + g
    return (param - lr * buf).astype(np.float32), buf.astype(np.float32)


def clip_together(grads: list[np.ndarray], max_norm: float) -> list[np.ndarray]:
    """torch.nn.utils.clip_grad_norm_: scale all by max_norm / (total L2 norm + 1e-6) when that is < 1."""
    total = float(np.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in grads)))
    scale = max_norm / (total + 1e-6)
    return grads if scale >= 1 else [(g * scale).astype(np.float32) for g in grads]


@register
class PFedHN(Algorithm):
    """pFedHN: a server hypernetwork generates each client's model from its embedding; updated by the chain rule."""

    name = "pfedhn"
    Params = PFedHNParams
    has_global_model = False
    source = ("Shamsian et al. 2021 (hypernetwork on client embeddings, chain-rule update with theta - theta~); "
              "hn lr 1e-2, momentum 0.9, wd 1e-3, hidden 100 x 3, clip 50 (" + AUTHORS + ", FL-bench pfedhn.py)")

    def build_model(self, model: nn.Module) -> nn.Module:
        p = self.params
        generated = sum(t.numel() for name, t in model.named_parameters()
                        if not (p.personal_classifier and name.startswith("head.")))
        return HNModel(model.body, model.head, HyperBuffers(p.embed_dim, p.hidden_dim, p.n_hidden, generated))

    def __init__(self, params: PFedHNParams, ctx):
        self.hn_slots = [s for s in ctx.spec.slots if s.name.startswith("hn.")]
        super().__init__(params, ctx)
        pc = params.personal_classifier
        self.generated = self.spec.mask(s.name for s in self.spec.slots if s.trainable and not s.name.startswith(
            "hn.") and not (pc and self.spec.is_head(s.name)))
        self.own = ~self.generated & ~self.spec.mask(s.name for s in self.hn_slots)  # the client's own elements
        if pc and not self.spec.head_mask().any():
            raise ValueError("pfedhn: personal_classifier needs a classifier named head.* (harness.models.BodyHead)")
        self.momentum: list[np.ndarray] | None = None  # SGD momentum of phi (server state)

    def shared_mask(self) -> np.ndarray:
        return self.spec.mask(s.name for s in self.hn_slots)  # what the server updates; never averaged

    # ----- the hypernetwork from a vector ----------------------------------------------------------------------
    def phi_of(self, vec: np.ndarray) -> list[np.ndarray]:
        return [vec[s.start : s.stop].reshape(s.shape) for s in self.hn_slots]

    def embedding(self, cid: int, state: State) -> np.ndarray:
        v = state.get("embedding")
        if v is None:
            v = rng(self.ctx.seed, "pfedhn-embedding", cid).standard_normal(self.params.embed_dim)
        return np.asarray(v, dtype=np.float32)

    def generate(self, vec: np.ndarray, v: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return hypernet([torch.tensor(p) for p in self.phi_of(vec)], torch.tensor(v)).numpy()

    def personal_model(self, global_vec: np.ndarray, cid: int, state: State) -> np.ndarray:
        """The client's target model: h(v_i; phi) on the generated elements, its own values elsewhere (the common
        initialisation until it has some); the hn.* buffers are zeros (unused by the forward pass)."""
        out = np.zeros(self.spec.size, dtype=np.float32)
        out[self.generated] = self.generate(global_vec, self.embedding(cid, state))
        own = state.get("personal")
        out[self.own] = own if own is not None else global_vec[self.own]
        return out

    # ----- server side -----------------------------------------------------------------------------------------
    def server_prepare(self, cid: int, round: int, global_vec: np.ndarray, state: State) -> Dispatch:
        payload = {"theta": self.generate(global_vec, self.embedding(cid, state))}
        if "personal" not in state and self.own.any():
            payload["own"] = global_vec[self.own].copy()
        return Dispatch(payload, state)

    def aggregate(self, global_vec: np.ndarray, updates: list[ClientUpdate], notes: Notes | None = None) -> np.ndarray:
        """One hypernetwork step per client (client-id order), each with its chain-rule gradient at the round's phi
        (the phi that generated its model); the client's embedding is updated in its state."""
        if not updates:
            return global_vec
        p = self.params
        phi0 = self.phi_of(global_vec)
        phi = [a.copy() for a in phi0]
        embed_lr = p.embed_lr if p.embed_lr is not None else p.hn_lr
        for u in sorted(updates, key=lambda u: u.cid):
            v = self.embedding(u.cid, u.state)
            g_phi, g_v = chain_rule(phi0, v, u.upload["delta"])
            *g_phi, g_v = clip_together([*g_phi, g_v], p.norm_clip)
            bufs = self.momentum or [None] * len(phi)
            stepped = [sgd_step(a, g, b, p.hn_lr, p.hn_momentum, p.hn_weight_decay) for a, g, b in zip(
                phi, g_phi, bufs, strict=True)]
            phi, self.momentum = [s[0] for s in stepped], [s[1] for s in stepped]
            v_new, v_buf = sgd_step(v, g_v, u.state.get("embedding_momentum"), embed_lr, p.hn_momentum,
                                    p.hn_weight_decay)
            u.state = {**u.state, "embedding": v_new, "embedding_momentum": v_buf}  # committed with the round
        new = global_vec.copy()
        for s, a in zip(self.hn_slots, phi, strict=True):
            new[s.start : s.stop] = a.reshape(-1)
        return new

    def server_state(self) -> State:
        return {} if self.momentum is None else {f"momentum_{k}": b.copy() for k, b in enumerate(self.momentum)}

    def load_server_state(self, state: State) -> None:
        self.momentum = ([np.asarray(state[f"momentum_{k}"], dtype=np.float32).copy() for k in range(len(
            self.hn_slots))] if state else None)

    def bytes_down(self, payload: State) -> int:
        return 4 * sum(int(np.asarray(a).size) for a in payload.values())

    def bytes_up(self, update: ClientUpdate) -> int:
        return 4 * int(update.upload["delta"].size) if "delta" in update.upload else 0

    # ----- client side -----------------------------------------------------------------------------------------
    def start_vector(self, job: ClientJob) -> np.ndarray:
        out = np.zeros(self.spec.size, dtype=np.float32)
        out[self.generated] = job.payload["theta"]
        own = job.state.get("personal")
        out[self.own] = own if own is not None else job.payload.get("own", out[self.own])
        return out

    def local_update(self, job: ClientJob, trainer) -> ClientUpdate:
        start = self.start_vector(job)
        trainer.set_vector(start)
        trainer.train(job)  # the run's local SGD on the target model (hn.* are buffers: untouched)
        vec = trainer.get_vector()
        delta = start[self.generated] - vec[self.generated]
        state = {**job.state, "personal": vec[self.own].copy()}
        return trainer.update(job, upload={"delta": delta}, state=state)

    def received_vector(self, job: ClientJob, trainer) -> np.ndarray:
        return self.start_vector(job)

    def trained_vector(self, job: ClientJob, update: ClientUpdate, trainer) -> np.ndarray:
        vec = self.start_vector(job)
        vec[self.generated] -= update.upload["delta"]
        vec[self.own] = update.state["personal"]
        return vec

    def eval_vector(self, job: ClientJob, trainer) -> np.ndarray:
        """h(v_i; phi) with the current hypernetwork (from the global vector) and the client's embedding."""
        return self.personal_model(job.payload["model"], job.cid, job.state)
