"""FedNTD (Lee et al., NeurIPS 2022, "Preservation of the Global Knowledge by Not-True Distillation in Federated
Learning").

FedAvg with a distillation term that keeps the global model's knowledge of the classes a sample does NOT
belong to. With f the local logits, g the received (frozen) global model's logits on the same batch and
q̃^τ the softmax with temperature τ over the C − 1 not-true classes (the true class y removed),

    ℓ_NTD = Σ_{c≠y} q̃_g^τ(c) · log( q̃_g^τ(c) / q̃_f^τ(c) )   = KL(q̃_g^τ ‖ q̃_f^τ),
    ℓ = CE(f, y) + β · mean_batch ℓ_NTD.

The true-class logit is left to the cross-entropy alone, so the local model still fits its data while the
ranking of the other classes follows the global model. The server is FedAvg's (sample-weighted average of
full models); nothing is kept per client; the personalized model is the global model.

Checked against the paper's loss (its full text was not retrievable in this session), the authors' code
(Lee-Gihun/FedNTD: algorithms/fedntd/criterion.py NTD_Loss, utils.py refine_as_not_true, config/fedntd.json)
and PFLlib (clientntd.py): not-true logits gathered by removing column y, KL with batch-mean reduction, teacher
under no_grad. Defaults τ = 1, β = 1: the authors'
config/fedntd.json and the paper's setting. Differences: PFLlib multiplies the term by τ² (the authors' code
read here does not; identical at the default τ = 1); the frozen global model runs in evaluation mode (the
authors deep-copy the model, keeping its mode; the same for models without dropout or batch norm); its
forward is not counted on the virtual clock (one batch = one step, as FedAvg). β = 0 trains bit for bit like
FedAvg (tested).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field

from algorithms.base import Algorithm, ClientJob, ClientUpdate, Params
from algorithms.functional import frozen_forward
from algorithms.registry import register


class FedNTDParams(Params):
    beta: float = Field(1.0, ge=0, description="weight β of the not-true distillation term (Lee et al. 2022, "
                                               "authors' config/fedntd.json: 1)")
    tau: float = Field(1.0, gt=0, description="softmax temperature τ of the not-true distributions (Lee et al. "
                                              "2022, authors' config/fedntd.json: 1)")


def not_true(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The logits of the C − 1 classes other than each sample's label, in class order (B x (C − 1))."""
    keep = F.one_hot(y, logits.shape[1]) == 0
    return logits[keep].view(len(logits), logits.shape[1] - 1)


def not_true_distillation(logits: torch.Tensor, teacher: torch.Tensor, y: torch.Tensor, tau: float) -> torch.Tensor:
    """Batch mean of KL(softmax(g_{¬y}/τ) ‖ softmax(f_{¬y}/τ)): the global model's not-true distribution
    (teacher g) distilled into the local one (f)."""
    log_student = F.log_softmax(not_true(logits, y) / tau, dim=1)
    log_teacher = F.log_softmax(not_true(teacher, y) / tau, dim=1)
    return F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True)




@register
class FedNTD(Algorithm):
    """FedNTD: FedAvg with a distillation of the global model's not-true-class softmax into the local model."""

    name = "fedntd"
    Params = FedNTDParams
    source = "Lee et al. 2022 (τ 1, β 1: the paper's setting, authors' config/fedntd.json)"

    def personal_is_global(self) -> bool:
        return True

    def local_update(self, job: ClientJob, trainer) -> ClientUpdate:
        received = job.payload["model"]
        trainer.set_vector(received)
        model = trainer.model
        teacher = trainer.tensors_of(received)
        opt = trainer.optimizer(trainer.parameters(None))
        model.train()
        total, batches = 0.0, 0
        for x, y in trainer.batches(job, self.ctx.train.local_epochs):  # FedAvg's data order
            logits = model(x)
            ntd = not_true_distillation(logits, frozen_forward(model, teacher, x), y, self.params.tau)
            loss = F.cross_entropy(logits, y) + self.params.beta * ntd
            if not trainer.record_loss(loss):
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(ntd.detach())
            batches += 1
        metrics = {"ntd_loss": total / batches} if batches and math.isfinite(total) else {}
        return trainer.update(job, upload={"model": trainer.get_vector()}, state=job.state, **metrics)
