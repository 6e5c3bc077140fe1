"""FedRoD (Chen & Chao, ICLR 2022, "On Bridging Generic and Personalized Federated Learning for
Image Classification"): Federated Robust Decoupling.

Two heads on one body. The body and the GENERIC head (`head.*`) are trained with the balanced
softmax loss (BSM: cross-entropy of logits + log n_c, n_c = the client's training count of class
c), a class-balanced risk that is consistent across clients, and are averaged by the server.
The PERSONAL head (`phead.*`) is learned with plain cross-entropy "on top of the generic
predictor": personalized logits = generic logits + personal-head logits, with the features and
the generic logits detached, so the personal loss trains only the personal head. The personal
head never leaves the client.

Model: build_model wraps the base BodyHead as RoDModel(body, head, phead); its forward returns
head(z) + phead(z). The personal head's tensors are named `phead.*` on purpose: they must not be
taken for the classifier (ParamSpec treats only `head.*` as the head) and they are excluded from
shared_mask, so aggregation and bytes_up/bytes_down skip them. The personal head is initialised
to ZERO, so the global vector (whose phead is never updated) is exactly the generic model:
global_acc is the paper's generic (G-FL) accuracy, and a client that never trained is evaluated
with the generic model. (PFLlib copies the initial generic head instead, so its untrained
personal predictor counts the generic head twice.)

Checked against the paper and PFLlib's clientrod.py: BSM for body + generic head; CE on
(generic.detach() + personal(z.detach())) for the personal head; personalized prediction = sum.
Difference from a known implementation: FL-bench's FedRoD trains and evaluates the personal head
ALONE (no generic logits added) and lets its loss update the body. The paper's hypernetwork
variant (FedRoD-hyper) is not implemented. Classes a client does not hold get log 0 = -inf in
BSM: their probability is exactly zero in that client's generic loss, as in the paper's BSM.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from algorithms.base import Algorithm, ClientJob, ClientUpdate
from algorithms.registry import register


class RoDModel(nn.Module):
    """body -> generic head + personal head (logits added)."""

    def __init__(self, body: nn.Module, head: nn.Module):
        super().__init__()
        self.body = body
        self.head = head
        self.phead = copy.deepcopy(head)
        with torch.no_grad():
            for p in self.phead.parameters():
                p.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.body(x)
        return self.head(z) + self.phead(z)


@register
class FedRoD(Algorithm):
    """FedRoD: body + generic head trained with balanced softmax and averaged; a personal head adds its logits."""

    name = "fedrod"
    source = "Chen & Chao 2022 (BSM generic loss, personal head on detached features); no hyperparameters"

    def build_model(self, model: nn.Module) -> nn.Module:
        return RoDModel(model.body, model.head)

    def shared_mask(self) -> np.ndarray:
        return ~self.spec.mask(s.name for s in self.spec.slots if s.name.startswith("phead."))

    def local_update(self, job: ClientJob, trainer) -> ClientUpdate:
        trainer.set_vector(self.start_vector(job))
        model = trainer.model
        labels = trainer.labels(job.cid, "train")
        counts = np.bincount(labels, minlength=self.ctx.num_classes).astype(np.float32)
        log_prior = torch.log(torch.as_tensor(counts, device=trainer.device))  # -inf for absent classes
        opt = trainer.optimizer(trainer.parameters(None))
        model.train()
        personal_loss, batches = 0.0, 0
        for x, y in trainer.batches(job, self.ctx.train.local_epochs):
            z = model.body(x)
            generic = model.head(z)
            loss_g = F.cross_entropy(generic + log_prior, y)  # balanced softmax (BSM)
            loss_p = F.cross_entropy(generic.detach() + model.phead(z.detach()), y)
            if not trainer.record_loss(loss_g) or not torch.isfinite(loss_p):
                trainer.mark_nonfinite()
                break
            opt.zero_grad(set_to_none=True)
            (loss_g + loss_p).backward()  # separable: phead only sees loss_p, body/head only loss_g
            opt.step()
            personal_loss += float(loss_p.detach())
            batches += 1
        vec = trainer.get_vector()
        return trainer.update(job, upload={"model": vec}, state=self.personal_state(vec),
                              personal_loss=personal_loss / batches if batches else float("nan"))

    def eval_vector(self, job: ClientJob, trainer) -> np.ndarray:
        return self.start_vector(job)
