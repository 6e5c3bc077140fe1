"""GPFL (Zhang, Hua, Wang, Song, Xue, Ma, Cao & Guan, ICCV 2023, "GPFL: Simultaneously Learning Global and
Personalized Feature Information for Personalized Federated Learning", arXiv:2308.10279).

After the feature extractor φ (the body) sits the Conditional Valve (CoV), which routes the features z = φ(x)
twice, with a global and a personalized conditional input c:

    CoV(z, c) = ReLU(z ⊙ (γ(c) + 1) + β(c)),   γ(c) = LN(ReLU(W_γ c + b_γ)),  β(c) = LN(ReLU(W_β c + b_β));

the global route f_G = CoV(z, g) is guided by the Global Category Embedding layer (GCE, a C x d table E), the
personalized route f_P = CoV(z, p) feeds the client's own head. The conditional inputs come from the received GCE:
g = (1/C) Σ_c E_c and p_i = Σ_c α_ic E_c, α_ic the client's training share of class c. Per mini-batch

    ℓ = CE(head(f_P), y) + ℓ_GCE(f_G, y) + λ ‖f_G − E'_y‖₂,   ℓ_GCE = −mean log softmax_c(cos(f_G, E_c))_y,

with E' the GCE as received (frozen) and ‖·‖₂ the norm over the whole batch matrix; GCE and CoV are trained by
plain SGD at the run's learning rate with weight decay μ, body and head by the run's optimizer. The server
averages body, GCE and CoV by samples; the head never leaves the client (state "personal", with p).

The modules live in the flat vector: `gce.weight`, `cov.*` (shared) and the float buffer `cond` (the personalized
conditional input the forward pass uses, set from the global GCE and the client's class shares whenever a client's
model is built, so evaluation sees f_P). The global vector's head is never averaged: has_global_model is False.

Checked against the authors' code (TsingZ0/GPFL system/flcore/clients/clientgp.py, servers/servergp.py) and PFLlib
(clientgpfl.py, servergpfl.py, the same code). λ = 0.01 and μ = 0.1: the authors' run_me.sh for 4-layer CNNs and
3-layer MLPs (ResNet-18: λ 1e-4, μ 0; HAR-CNN: λ 0.01, μ 1). Differences:
- the authors compute g and p in set_GCE from the client's GCE BEFORE it is overwritten by the global one (the
  client's locally trained table for a sampled client), and start with g = p = 0; here, as the paper describes,
  from the received global GCE, every round;
- the authors evaluate every client each round with its conditional inputs and head; a client that never trained
  here uses its class shares with the initial head (the global vector's);
- all phases use the harness's shuffled batches (the authors: unshuffled with drop_last).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from algorithms.base import Algorithm, ClientJob, ClientUpdate, Params
from algorithms.feddbe import feature_dim
from algorithms.registry import register

AUTHORS = "TsingZ0/GPFL system/run_me.sh"


class GPFLParams(Params):
    lam: float = Field(0.01, ge=0, description="weight λ of ‖f_G − E_y‖ (authors' run_me.sh: 0.01 for CNN/MLP)")
    mu: float = Field(0.1, ge=0, description="weight decay μ of GCE and CoV (authors' run_me.sh: 0.1 for CNN/MLP)")


class CoV(nn.Module):
    """The conditional valve: ReLU(z ⊙ (γ(c) + 1) + β(c)), γ/β = LayerNorm(ReLU(Linear(c)))."""

    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.LayerNorm([dim]))
        self.beta = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.LayerNorm([dim]))

    def forward(self, z: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return F.relu(z * (self.gamma(cond) + 1) + self.beta(cond))


class GPFLModel(nn.Module):
    """head(CoV(body(x), cond)); the GCE table rides along for training and aggregation."""

    def __init__(self, body: nn.Module, head: nn.Module, num_classes: int):
        super().__init__()
        dim = feature_dim(head)
        self.body = body
        self.head = head
        self.gce = nn.Embedding(num_classes, dim)
        self.cov = CoV(dim)
        self.register_buffer("cond", torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.cov(self.body(x), self.cond))


def gce_loss(f_g: torch.Tensor, y: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """−mean log softmax of the cosines between f_G and every class embedding, at the true class."""
    return F.cross_entropy(F.linear(F.normalize(f_g), F.normalize(table)), y)


def conditional_inputs(table: np.ndarray, shares: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(g, p): the uniform mean of the class embeddings and their mean weighted by the client's class shares."""
    t = table.astype(np.float64)
    return t.mean(axis=0), shares.astype(np.float64) @ t


@register
class GPFL(Algorithm):
    """GPFL: a conditional valve routes features to a GCE-guided global route and a personalized head route."""

    name = "gpfl"
    Params = GPFLParams
    has_global_model = False
    source = f"Zhang et al. 2023 (CoV, GCE, λ-guidance); λ 0.01, μ 0.1 from the authors' ({AUTHORS}, CNN/MLP)"

    def build_model(self, model: nn.Module) -> nn.Module:
        head = [m for m in model.head.modules() if isinstance(m, nn.Linear)]
        classes = head[-1].out_features if head else 0
        return GPFLModel(model.body, model.head, classes)

    def __init__(self, params: GPFLParams, ctx):
        super().__init__(params, ctx)
        self.table, self.cond = self.spec.slot("gce.weight"), self.spec.slot("cond")

    def shared_mask(self) -> np.ndarray:
        return ~(self.spec.head_mask() | self.spec.mask(["cond"]))

    def shares(self, cid: int, trainer) -> np.ndarray:
        counts = np.bincount(trainer.labels(cid, "train"), minlength=self.ctx.num_classes).astype(np.float64)
        return counts / max(counts.sum(), 1.0)

    def personal_vector(self, job: ClientJob, trainer) -> np.ndarray:
        """Received shared parts, the client's head, and p from the received GCE and the client's class shares."""
        vec = self.start_vector(job)
        table = vec[self.table.start : self.table.stop].reshape(self.table.shape)
        _, p = conditional_inputs(table, self.shares(job.cid, trainer))
        vec[self.cond.start : self.cond.stop] = p.astype(np.float32)
        return vec

    def local_update(self, job: ClientJob, trainer) -> ClientUpdate:
        vec = self.personal_vector(job, trainer)
        trainer.set_vector(vec)
        model = trainer.model
        frozen = model.gce.weight.detach().clone()  # E' (received)
        g = frozen.mean(dim=0)  # the global conditional input (1/C) Σ_c E_c
        p = model.cond.clone()
        extra = [n for n, _ in model.named_parameters() if n.startswith(("gce.", "cov."))]
        main = trainer.optimizer([q for n, q in model.named_parameters() if n not in extra])
        side = torch.optim.SGD([q for n, q in model.named_parameters() if n in extra], lr=self.ctx.train.lr,
                               weight_decay=self.params.mu)
        model.train()
        for x, y in trainer.batches(job, self.ctx.train.local_epochs):
            z = model.body(x)
            f_g = model.cov(z, g)
            loss = F.cross_entropy(model.head(model.cov(z, p)), y) + gce_loss(f_g, y, model.gce.weight) \
                + self.params.lam * torch.linalg.vector_norm(f_g - frozen[y])
            if not trainer.record_loss(loss):
                break
            main.zero_grad(set_to_none=True)
            side.zero_grad(set_to_none=True)
            loss.backward()
            main.step()
            side.step()
        out = trainer.get_vector()
        return trainer.update(job, upload={"model": out}, state=self.personal_state(out))

    def eval_vector(self, job: ClientJob, trainer) -> np.ndarray:
        return self.personal_vector(job, trainer)
