"""pFedMe (T. Dinh, Tran & Nguyen, NeurIPS 2020, "Personalized Federated Learning with Moreau Envelopes",
arXiv:2006.08848).

Each client's objective is the Moreau envelope of its loss, F_i(w) = min_theta f_i(theta) + (lam/2)||theta - w||^2,
so the personalized model theta_i and the local copy w of the global model are decoupled (a bi-level problem).
Algorithm 1: a sampled client sets w_{i,0} = w^t and, for every local iteration r (one mini-batch D each):
    theta   <- approximately argmin_theta f_i(theta; D) + (lam/2)||theta - w_{i,r}||^2
               (K gradient steps  theta <- theta - personal_lr * (grad f_i(theta; D) + lam (theta - w_{i,r})))
    w_{i,r+1} = w_{i,r} - eta * lam * (w_{i,r} - theta)
and uploads w_{i,R}; the server sets w^{t+1} = (1 - beta) w^t + beta * mean_i w_{i,R}. The personalized model
theta_i (the last inner solution) is what the client is evaluated with; it stays in the client-state store.

Checked against the paper (Algorithm 1, the experiments' settings) and the authors' code (CharlieDinh/pFedMe:
FLAlgorithms/users/userpFedMe.py, servers/serverbase.py persionalized_aggregate_parameters, README run commands),
and against FL-bench (src/client/pfedme.py, src/server/pfedme.py). As in both codes, the inner solver starts
each round at the received w^t and is warm-started from the previous local iteration's theta; eta is the
local learning rate (train.lr; the paper's eta 0.005). One local iteration per mini-batch of train.local_epochs
epochs (the authors run R = 20 iterations of one batch each; FL-bench iterates over every batch as here).
Defaults: lam 15, K 5, beta 1 (the paper's MNIST setting, the authors' README and CIFAR-10 command; FL-bench's
defaults too), personal_lr 0.01 (the authors' CIFAR-10 and Synthetic commands and FL-bench's; their MNIST runs
use 0.1 / 0.09). Differences, the module follows the paper:
- the server mean is uniform over the round's clients (the paper's 1/S sum); the authors' code and FL-bench
  weight it by training samples (`weighting=samples`);
- the authors' code trains every client every round and aggregates only the sampled ones; here only the sampled
  clients train (FL-bench does the same);
- the inner steps are plain gradient steps on the inner objective, no momentum; FL-bench adds an L2 term
  mu * theta (mu 1e-3), which is not in the paper;
- BatchNorm statistics (if any) are those of the inner forward passes, for theta and for the uploaded w alike
  (the authors copy only parameters back into w).
A local iteration costs K gradient evaluations: K steps and K x its samples on the virtual clock.
State per client: "theta" (float32), its personalized model. A client that never trained is evaluated with the
global model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from algorithms.base import Algorithm, ClientJob, ClientUpdate, Notes, Params
from algorithms.registry import register

Tensors = Sequence[torch.Tensor]


# ----- the mechanism as pure functions (tested directly) ------------------------------------------------------------
@torch.no_grad()
def inner_step(theta: Tensors, grads: Tensors, w: Tensors, lam: float, lr: float) -> None:
    """One gradient step on f(theta) + (lam/2)||theta - w||^2, in place: theta -= lr (grad f + lam (theta - w))."""
    for t, g, a in zip(theta, grads, w, strict=True):
        t.sub_(lr * (g + lam * (t - a)))


def solve_inner(theta: Tensors, w: Tensors, grad_fn: Callable[[], tuple[torch.Tensor, Tensors]], steps: int,
                lam: float, lr: float) -> list[float]:
    """K steps of `inner_step`; grad_fn() returns (loss, grad f at the current theta). Returns the K losses."""
    losses = []
    for _ in range(steps):
        loss, grads = grad_fn()
        losses.append(float(loss.detach()))
        inner_step(theta, grads, w, lam, lr)
    return losses


@torch.no_grad()
def moreau_step(w: Tensors, theta: Tensors, eta: float, lam: float) -> None:
    """The local update of the global model's copy, in place: w <- w - eta lam (w - theta)."""
    for a, t in zip(w, theta, strict=True):
        a.sub_(eta * lam * (a - t))


def server_mix(global_vec: np.ndarray, mean: np.ndarray, beta: float) -> np.ndarray:
    """w^{t+1} = (1 - beta) w^t + beta mean (float64 in, float32 out)."""
    return ((1.0 - beta) * global_vec.astype(np.float64) + beta * mean).astype(np.float32)


class PFedMeParams(Params):
    lam: float = Field(15.0, gt=0, description="lambda of the Moreau envelope's proximal term (paper's MNIST "
                                                "setting and the authors' commands: 15)")
    K: int = Field(5, ge=1, description="gradient steps of the inner problem per local iteration (paper: 5)")
    personal_lr: float = Field(0.01, gt=0, description="step size of the inner problem (authors' CIFAR-10 and "
                                                       "Synthetic commands, FL-bench: 0.01; their MNIST: 0.1)")
    beta: float = Field(1.0, gt=0, description="server mixing w = (1-beta) w + beta mean (paper's experiments: 1)")
    weighting: Literal["uniform", "samples"] = Field(
        "uniform", description="mean of the uploads: uniform over the round's clients (the paper) or by samples "
                               "(authors' code, FL-bench)")


@register
class PFedMe(Algorithm):
    """pFedMe: a personal model solving a Moreau-envelope inner problem around the client's copy of the global model."""

    name = "pfedme"
    Params = PFedMeParams
    source = ("T. Dinh et al. 2020 (Algorithm 1; uniform server mean); lam 15, K 5, beta 1 (paper's MNIST setting), "
              "personal_lr 0.01 (authors' CharlieDinh/pFedMe CIFAR-10 command, FL-bench)")

    # ----- server side ----------------------------------------------------------------------------------------------
    def aggregate(self, global_vec: np.ndarray, updates: list[ClientUpdate], notes: Notes | None = None) -> np.ndarray:
        if not updates:
            return global_vec
        total = np.zeros(self.spec.size, dtype=np.float64)
        weight = 0.0
        for u in sorted(updates, key=lambda u: u.cid):
            w = float(u.num_samples) if self.params.weighting == "samples" else 1.0
            total += w * u.upload["model"].astype(np.float64)
            weight += w
        return server_mix(global_vec, total / weight, self.params.beta)

    # ----- client side ----------------------------------------------------------------------------------------------
    def local_update(self, job: ClientJob, trainer) -> ClientUpdate:
        p = self.params
        trainer.set_vector(job.payload["model"])
        model = trainer.model
        theta = [t for _, t in model.named_parameters()]  # the inner variable lives in the model, from w^t
        w = [t.detach().clone() for t in theta]  # the client's copy of the global model, w_{i,r}
        eta = self.ctx.train.lr
        model.train()
        iterations = 0
        for x, y in trainer.batches(job, self.ctx.train.local_epochs, cost=p.K):  # a batch = K gradient passes

            def grad_fn(x=x, y=y):
                loss = F.cross_entropy(model(x), y)
                return loss, torch.autograd.grad(loss, theta)

            losses = solve_inner(theta, w, grad_fn, p.K, p.lam, p.personal_lr)
            if not trainer.record_loss(torch.tensor(losses[0])) or not np.isfinite(losses).all():
                trainer.mark_nonfinite()
                break
            moreau_step(w, theta, eta, p.lam)
            iterations += 1
        personal = trainer.get_vector()
        with torch.no_grad():
            for t, a in zip(theta, w, strict=True):
                t.copy_(a)
        upload = trainer.get_vector()
        return trainer.update(job, upload={"model": upload}, state={"theta": personal},
                              local_iterations=float(iterations))

    def eval_vector(self, job: ClientJob, trainer) -> np.ndarray:
        return job.state.get("theta", job.payload["model"])
