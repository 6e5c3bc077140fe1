"""FLUTE (Liu, Shen & Yang, ICML 2024, "Federated Representation Learning in the Under-Parameterized Regime",
arXiv:2406.04596), its extension beyond linear representations.

Body (representation) shared and averaged, head (classifier `head.*`) personal, as in FedPer/FedRep. Locally,
the client minimises cross-entropy plus three regularisers of its head weight W (classes x features), with
y_k in {0,1}^C the indicator of the classes in its training split:
    R1 = || W W^T / ||W W^T||_F  -  (I_C - 11^T / C) * (y_k y_k^T) / sqrt(C - 1) ||_F   (neural collapse: the
         normalised Gram matrix of W pulled to a simplex ETF over the client's own classes; * = elementwise)
    R2 = ||W||_F^2                                   (head norm)
    R3 = ||H||_F^2 over the batch's features H      (feature norm)
    loss = CE + lamda1 R1 + lamda2 R2 (+ lamda3 R3 in the representation epochs).
Of the train.local_epochs epochs, the first local_epochs - rep_round train the head only (body frozen), the last
rep_round train body and head together with the feature term. The client uploads body, head and y_k.
THE CLASSIFIER STEP: after averaging the bodies, the server takes one SGD step of size nc2_lr on the heads of
the round's clients, jointly, on the mean neural-collapse term (1/m) sum_i R1(W_i, y_i) (m = clients
aggregated this round); each client's stepped head is what it keeps (bias untouched). A client that never
trained is evaluated with the global body and the common initial head.

Checked against the paper's description and the authors' code (RenpuLiu/flute, models/Update.py: LocalUpdate
with r1, r2, r3 and ServerUpdateNC2), and FL-bench (src/client/flute.py, src/server/flute.py): the three terms,
their default weights and the server step agree in both. Differences:
- the authors' LocalUpdate only steps the optimizer inside its representation branch (an indentation slip), so
  its head-only epochs do nothing; FL-bench freezes the body by zeroing its gradient, so momentum and weight
  decay still move it. Here the head epochs train the head, with the body out of the optimizer;
- gamma1 and gamma2 are arguments of the authors' ServerUpdateNC2.train (default 1) and FL-bench options, and
  neither implementation uses them; they are accepted (so logged configs load) and have no effect here either;
- m counts the clients aggregated this round (the authors and FL-bench: those sampled; the same unless a budget
  drops some); the server step is computed in float64; the stepped heads reach the clients through the kept updates'
  states, which the engine commits after `aggregate` (harness.engine.rounds.train_round); a real deployment
  sends each stepped head back, so bytes_down counts body + head.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from algorithms.base import Algorithm, ClientJob, ClientUpdate, Params
from algorithms.registry import register


class FLUTEParams(Params):
    rep_round: int = Field(1, ge=0, description="last local epochs that also train the representation (FedOBP "
                                                "authors' logged runs, FL-bench: 1; authors' example: 1 of 10)")
    lamda1: float = Field(0.25, ge=0, description="weight of the neural-collapse term R1 (logged runs, FL-bench, "
                                                  "authors' code: 0.25)")
    lamda2: float = Field(0.0025, ge=0, description="weight of the head norm ||W||_F^2 (logged runs, FL-bench, "
                                                    "authors' code: 0.0025)")
    lamda3: float = Field(0.0005, ge=0, description="weight of the feature norm ||H||_F^2 (logged runs, FL-bench, "
                                                    "authors' code: 0.0005)")
    gamma1: float = Field(1.0, description="no effect: an argument of the authors' ServerUpdateNC2 and an FL-bench "
                                           "option that neither uses (logged runs: 1)")
    gamma2: float = Field(1.0, description="no effect: an argument of the authors' ServerUpdateNC2 and an FL-bench "
                                           "option that neither uses (logged runs: 1)")
    nc2_lr: float = Field(0.5, ge=0, description="step size of the server's classifier step on the clients' heads "
                                                 "(logged runs, FL-bench, authors' code: 0.5); 0 = no step")


def etf_target(labels: torch.Tensor) -> torch.Tensor:
    """(I - 11^T/C) * (y y^T) / sqrt(C - 1): the simplex ETF Gram matrix restricted to the present classes."""
    c = labels.shape[0]
    centre = torch.eye(c, dtype=labels.dtype, device=labels.device) - 1.0 / c
    return centre * torch.outer(labels, labels) / math.sqrt(c - 1)


def nc_term(weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """R1: Frobenius distance of the normalised Gram matrix W W^T / ||W W^T||_F to the masked ETF."""
    gram = weight @ weight.T
    return torch.linalg.matrix_norm(gram / torch.linalg.matrix_norm(gram) - etf_target(labels))


def classifier_step(weights: np.ndarray, labels: np.ndarray, lr: float) -> np.ndarray:
    """The server's step: W_i - lr * grad_{W_i} (1/m) sum_j R1(W_j, y_j), for all m heads at once (float64)."""
    w = torch.tensor(weights, dtype=torch.float64, requires_grad=True)
    y = torch.tensor(labels, dtype=torch.float64)
    loss = sum(nc_term(w[i], y[i]) for i in range(len(w))) / len(w)
    (grad,) = torch.autograd.grad(loss, w)
    return (w.detach() - lr * grad).numpy()


@register
class FLUTE(Algorithm):
    """FLUTE: shared body; personal heads regularised towards neural collapse, plus a joint server step on the heads."""

    name = "flute"
    needs_split = True
    has_global_model = False  # the heads are never averaged (as FedPer/FedRep)
    Params = FLUTEParams
    source = ("Liu et al. 2024; rep_round 1, lamda1/2/3 0.25/0.0025/0.0005, gamma1 = gamma2 = 1, nc2_lr 0.5 from "
              "the FedOBP authors' logged runs (= FL-bench defaults = the authors' code, RenpuLiu/flute)")

    def __init__(self, params: FLUTEParams, ctx):
        super().__init__(params, ctx)
        self.weight = self.spec.slot("head.weight")
        personal = np.flatnonzero(~self.shared)  # where head.weight sits inside the stored personal vector
        self.weight_in_personal = np.searchsorted(personal, np.arange(self.weight.start, self.weight.stop))

    def shared_mask(self) -> np.ndarray:
        return ~self.spec.head_mask()

    def bytes_down(self, payload) -> int:
        return 4 * self.spec.size  # body + the client's head, which the server's step changes

    def bytes_up(self, update: ClientUpdate) -> int:
        return 4 * self.spec.size + int(update.upload["labels"].size)  # body, head and y_k (one byte a class)

    def regularisers(self, weight: torch.Tensor, labels: torch.Tensor, features: torch.Tensor | None = None):
        """lamda1 R1 + lamda2 R2 (+ lamda3 R3 when features are given)."""
        p = self.params
        out = p.lamda1 * nc_term(weight, labels) + p.lamda2 * weight.pow(2).sum()
        return out if features is None else out + p.lamda3 * features.pow(2).sum()

    def local_update(self, job: ClientJob, trainer) -> ClientUpdate:
        trainer.set_vector(self.start_vector(job))
        model = trainer.model
        present = np.zeros(self.ctx.num_classes, dtype=np.float32)
        present[np.unique(trainer.labels(job.cid, "train"))] = 1.0
        y = torch.as_tensor(present, device=trainer.device)
        epochs = self.ctx.train.local_epochs
        rep = min(self.params.rep_round, epochs)
        if epochs - rep > 0:  # head epochs: the body is frozen (kept out of the optimizer)
            trainer.train(job, epochs=epochs - rep, names=self.spec.head_names(), purpose="flute-head",
                          extra_loss=lambda m: self.regularisers(m.head.weight, y))
        opt = trainer.optimizer(trainer.parameters(None))
        model.train()
        for x, target in trainer.batches(job, rep, purpose="flute-rep"):
            z = model.body(x)
            loss = F.cross_entropy(model.head(z), target) + self.regularisers(model.head.weight, y, z)
            if not trainer.record_loss(loss):
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        vec = trainer.get_vector()
        return trainer.update(job, upload={"model": vec, "labels": present}, state=self.personal_state(vec))

    def aggregate(self, global_vec, updates, notes=None):
        new = super().aggregate(global_vec, updates, notes)
        if updates and self.params.nc2_lr > 0:
            ordered = sorted(updates, key=lambda u: u.cid)
            w = self.weight
            heads = np.stack([u.upload["model"][w.start : w.stop].reshape(w.shape) for u in ordered])
            stepped = classifier_step(heads, np.stack([u.upload["labels"] for u in ordered]), self.params.nc2_lr)
            for u, head in zip(ordered, stepped, strict=True):
                personal = u.state["personal"].copy()
                personal[self.weight_in_personal] = head.reshape(-1)
                u.state = {**u.state, "personal": personal}  # committed with the round, after aggregate
        return new

    def eval_vector(self, job: ClientJob, trainer) -> np.ndarray:
        return self.start_vector(job)
