"""APPLE (Luo & Wu, IJCAI 2022, "Adapt to Adaptation: Learning Personalization for Cross-Silo Federated Learning",
arXiv:2110.08394): each client learns how much of every other client's core model to use.

Every client j owns a core model w_j, which the server stores. Client i keeps a directed-relationship (DR) vector
p_i in R^N; its personalized model is the DR-weighted sum of the core models,
    w_i^p = sum_j p_ij w_j.
In a round, client i downloads the cores of all clients and trains, on its training split, its OWN core w_i and its
DR vector p_i together (the other cores are fixed), for the run's local epochs on
    CE(w_i^p; batch) + mu_r ||p_i - p0||^2,    p0_j = n_j / sum_k n_k (the clients' training-set shares),
where mu_r is the loss scheduler: mu_r = mu * (cos(pi r / R) + 1) / 2 (cosine) or mu * 0.001^(r / R)
(exponential) for rounds r < R = `reg_rounds`, and 0 afterwards, so p_i starts near the shares and is free later.
p_i starts at p0. The client uploads w_i (the server replaces its stored core), keeps p_i and its personalized
model w_i^p (its cores after training) in its store entry: w_i^p is what it is evaluated with. Gradients, as the
authors' ClientNet: dL/dp_ij = <dL/dw_i^p, w_j>, dL/dw_i = p_ii dL/dw_i^p. Both are stepped by one SGD optimizer
with the run's momentum and weight decay, at train.lr for the core and `dr_lr` for p_i.

Where things live: the cores of the clients that have trained are server state (ids + N_seen x d float32, as
pfedsim's pool); a client without a core of its own is represented by the common initial model (the global
vector, which never changes: no global model, has_global_model False). p_i (N floats) and w_i^p (d floats) are
client state. Down: the N cores (N x d floats: APPLE is a cross-silo method; the authors' bandwidth-limited
variant, downloading M cores chosen by p_i, is not implemented); up: w_i.

Defaults from the authors' code (ljaiverson/pFL-APPLE utils/utils.py, utils/losses.py): mu 0.1, the loss
scheduler "exponential" (their default; "cosine" is the other shape), lr_coef 0.001 for the DR vectors, the
regularised span 0.1 of the rounds (reg_last_round_over_total_round) of their 160 rounds: reg_rounds 16 (absolute
here: the algorithm does not see the run's length). The paper's text was not available to me in this session.
Differences:
- the authors initialise every core model separately (its own random init); here all cores start from the run's
  common initial model, so p_i's first gradients come from training alone;
- their core and DR learning rates are lr_net 0.01 and lr_coef 0.001 with SGD momentum 0.9 (and an optional
  per-round decay); here the core uses the run's optimizer settings (train.lr, momentum, weight decay) and p_i the
  same optimizer at `dr_lr`; PFLlib also multiplies the core's lr by N, the authors do not (`core_lr_scale`:
  the core's gradient carries the factor p_ii ~ n_i / sum n, so at the authors' lr a core of one of 30 FEMNIST
  writers learns ~30x slower than a local model: 0.3% after 6 rounds of the every-algorithm study's setting,
  15.9% with num_clients, Local 11.2%, FedAvg 29.9%);
- the authors' clients train one after another within a round (a later client downloads an earlier one's new
  core); here the round's clients download the cores as they were at the round's start;
- models with float buffers (BatchNorm statistics) are refused: the weighted sum covers parameters only.
Memory: each dispatch sends N x d floats (10 digits-MLP clients: 35,000 floats; 100 avgcnn clients: 351 MB per
client per round); p_i is N floats per client (10,000 clients: 400 MB in the store in all).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch.func import functional_call

from algorithms.base import Algorithm, ClientJob, ClientUpdate, Dispatch, Notes, Params, State
from algorithms.pool import ModelPool
from algorithms.registry import register

AUTHORS = "ljaiverson/pFL-APPLE utils/utils.py"


class APPLEParams(Params):
    mu: float = Field(0.1, ge=0, description="coefficient of the proximal term on the DR vector (" + AUTHORS +
                                             " --mu 0.1)")
    scheduler: Literal["exponential", "cosine"] = Field("exponential", description="shape of the loss scheduler "
                                                                                   "(authors' default exponential)")
    reg_rounds: int = Field(16, ge=0, description="rounds with the proximal term, 0 afterwards (authors: 0.1 of the "
                                                  "rounds, 16 of their 160)")
    dr_lr: float = Field(1e-3, gt=0, description="learning rate of the DR vectors (authors' --lr_coef 0.001)")
    core_lr_scale: Literal["one", "num_clients"] = Field("one", description=(
        "the own core's learning rate: train.lr (one; the authors' code) or N x train.lr (num_clients; PFLlib's "
        "clientapple), which offsets the factor p_ii ~ 1/N in the core's gradient p_ii dL/dw^p"))


def reg_coef(mu: float, scheduler: str, reg_rounds: int, round: int) -> float:
    """mu_r: mu (cos(pi r/R) + 1)/2 or mu 0.001^(r/R) for r < R, else 0 (the authors' get_reg_coef)."""
    if mu == 0 or round >= reg_rounds:
        return 0.0
    if scheduler == "cosine":
        return (math.cos(math.pi * round / reg_rounds) + 1) / 2 * mu
    return 0.001 ** (round / reg_rounds) * mu


def personal_model(p: np.ndarray, cores: np.ndarray) -> np.ndarray:
    """w^p = sum_j p_j cores_j (float64 sum, float32 out)."""
    return (np.asarray(p, dtype=np.float64) @ cores.astype(np.float64)).astype(np.float32)


@register
class APPLE(Algorithm):
    """APPLE: personalized model = DR-weighted sum of all clients' cores; DR vectors with a decaying proximal term."""

    name = "apple"
    Params = APPLEParams
    has_global_model = False
    source = ("Luo & Wu 2022 (DR-weighted core models, proximal term on p with a loss scheduler); mu 0.1, "
              "exponential scheduler over 0.1 x 160 = 16 rounds, DR lr 0.001 (" + AUTHORS + ")")

    def __init__(self, params: APPLEParams, ctx):
        super().__init__(params, ctx)
        if not all(s.trainable for s in self.spec.slots):
            raise ValueError("apple: the model has float buffers (e.g. BatchNorm statistics), which a weighted sum "
                             f"of core models does not cover; tensors: {', '.join(self.spec.names)}")
        self.pool = ModelPool(self.spec.size)  # the core models of the clients that have trained (server state)

    def cores(self, global_vec: np.ndarray) -> np.ndarray:
        out = np.broadcast_to(global_vec, (self.ctx.num_clients, self.spec.size)).copy()
        ids, models = self.pool.stacked()
        out[ids] = models
        return out

    # ----- server side ----------------------------------------------------------------------------------------------
    def server_prepare(self, cid: int, round: int, global_vec: np.ndarray, state: State) -> Dispatch:
        p = self.params
        return Dispatch({"cores": self.cores(global_vec)}, state,
                        {"reg_coef": reg_coef(p.mu, p.scheduler, p.reg_rounds, round)})

    def aggregate(self, global_vec: np.ndarray, updates: list[ClientUpdate], notes: Notes | None = None) -> np.ndarray:
        """No averaging: each upload replaces its client's core."""
        if not updates:
            return global_vec
        self.pool.put(updates)
        return global_vec

    def server_state(self) -> State:
        return self.pool.state()

    def load_server_state(self, state: State) -> None:
        self.pool.load(state)

    def round_metrics(self, notes: Notes) -> dict[str, float]:
        return {"apple_reg_coef": float(notes[min(notes)]["reg_coef"])} if notes else {}

    def server_bytes(self) -> int:
        return 4 * self.ctx.num_clients * self.spec.size  # the N x d cores of one dispatch

    def bytes_down(self, payload: State) -> int:
        return 4 * int(payload["cores"].size)

    def bytes_up(self, update: ClientUpdate) -> int:
        return 4 * self.spec.size

    # ----- client side ----------------------------------------------------------------------------------------------
    def shares(self, trainer) -> np.ndarray:
        """p0: every client's share of all training samples."""
        n = np.array([len(trainer.split_of(j, "train")) for j in range(self.ctx.num_clients)], dtype=np.float64)
        return n / n.sum()

    def local_update(self, job: ClientJob, trainer) -> ClientUpdate:
        i, prm = job.cid, self.params
        cores = job.payload["cores"]
        p0 = torch.tensor(self.shares(trainer), dtype=torch.float32, device=trainer.device)
        p = torch.tensor(job.state.get("p", p0.cpu().numpy()), dtype=torch.float32, device=trainer.device,
                         requires_grad=True)
        core = torch.tensor(cores[i], device=trainer.device, requires_grad=True)
        others = torch.tensor(cores, device=trainer.device)
        others[i] = 0.0
        coef = reg_coef(prm.mu, prm.scheduler, prm.reg_rounds, job.round)
        core_lr = self.ctx.train.lr * (self.ctx.num_clients if prm.core_lr_scale == "num_clients" else 1)
        opt = trainer.optimizer([{"params": [core], "lr": core_lr}, {"params": [p], "lr": prm.dr_lr}])
        model = trainer.model
        model.train()
        for x, y in trainer.batches(job, self.ctx.train.local_epochs):
            flat = p @ others + p[i] * core  # w^p = sum_j p_j w_j, own core trainable
            params = {s.name: flat[s.start : s.stop].view(s.shape) for s in self.spec.slots}
            loss = F.cross_entropy(functional_call(model, params, (x,)), y)
            if coef:
                loss = loss + coef * ((p - p0) ** 2).sum()
            if not trainer.record_loss(loss):
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        own = core.detach().cpu().numpy().astype(np.float32)
        p_new = p.detach().cpu().numpy().astype(np.float32)
        final = cores.copy()
        final[i] = own
        state = {"p": p_new, "personal": personal_model(p_new, final)}
        return trainer.update(job, upload={"model": own}, state=state, apple_self_weight=float(p_new[i]),
                              apple_dr_distance=float(np.linalg.norm(p_new - p0.cpu().numpy())))

    def received_vector(self, job: ClientJob, trainer) -> np.ndarray:
        p = job.state.get("p", self.shares(trainer))
        return personal_model(p, job.payload["cores"])

    def trained_vector(self, job: ClientJob, update: ClientUpdate, trainer) -> np.ndarray:
        return update.state["personal"]

    def eval_vector(self, job: ClientJob, trainer) -> np.ndarray:
        """w_i^p after the client's last training (the initial model before it has trained)."""
        return job.state.get("personal", job.payload["model"])
