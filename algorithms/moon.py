"""MOON (Li, He & Song, CVPR 2021, "Model-Contrastive Federated Learning").

FedAvg with a model-level contrastive term in the local objective. For a mini-batch, with z = R_w(x) the
representation of the model being trained, z_glob that of the received global model and z_prev that of the
client's own model at the end of its previous local training,

    ℓ_con = −log( exp(sim(z, z_glob)/τ) / (exp(sim(z, z_glob)/τ) + exp(sim(z, z_prev)/τ)) ),   sim = cosine,
    ℓ = CE(head(z), y) + μ · mean_batch ℓ_con,

so the local representation is pulled towards the global model's and pushed away from its own previous one.
The global and previous models are frozen (evaluation mode, no gradient). The server is FedAvg's
(sample-weighted average of full models); the previous local model is per-client state in the store (`prev`,
a full model vector: use the disk store at scale). The personalized model is the global model.

Checked against the paper's loss (Eq. 3) and Algorithm 1 (the paper's full text was not retrievable in this
session; the formula is the one the authors' code computes), the authors' code (QinbinLi/MOON, main.py
train_net_fedcon: CE over the [positive, negative] similarity logits, frozen global and previous nets in
eval mode), FL-bench (src/client/moon.py, src/server/moon.py) and PFLlib (clientmoon.py). Defaults: τ = 0.5
(the paper, the authors' `--temperature` default, FL-bench); μ = 5, the authors' README command for CIFAR-10
and FL-bench's default, the paper's best μ on CIFAR-10 (its best on CIFAR-100 and Tiny-ImageNet is μ = 1; the
authors' argparse default and Flower's baseline use 1). Differences:
- the representation is the model's body output (what feeds `head.*`); the paper's models add a 2-layer MLP
  projection head (256 outputs) between encoder and classifier, which is part of the model there; FL-bench and
  PFLlib also use the body output;
- a client with no previous local model (its first participation) trains without the term: the authors'
  first round has an empty model pool (the term is CE over a single logit, 0) and FL-bench uses the global
  model as z_prev (the term is then log 2 whatever z, so its gradient is zero too). Under partial
  participation the authors' later rounds use a never-sampled client's own random initialisation as the
  negative; here such a client still trains without the term;
- one previous model (the authors' `model_buffer_size` 1, the paper's setting); the two frozen forwards are
  not counted on the virtual clock (one batch = one step, as FedAvg).
μ = 0 trains bit for bit like FedAvg (tested).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field

from algorithms.base import Algorithm, ClientJob, ClientUpdate, Params
from algorithms.functional import frozen_forward
from algorithms.registry import register


class MOONParams(Params):
    mu: float = Field(5.0, ge=0, description="weight μ of the model-contrastive term (Li et al. 2021: best 5 on "
                                             "CIFAR-10, 1 on CIFAR-100 and Tiny-ImageNet; authors' README "
                                             "CIFAR-10 command 5; FL-bench 5)")
    tau: float = Field(0.5, gt=0, description="temperature τ of the contrastive term (Li et al. 2021, authors' "
                                              "code, FL-bench: 0.5)")


def model_contrastive(z: torch.Tensor, z_glob: torch.Tensor, z_prev: torch.Tensor, tau: float) -> torch.Tensor:
    """Batch mean of −log(e^{sim(z,z_glob)/τ} / (e^{sim(z,z_glob)/τ} + e^{sim(z,z_prev)/τ})), sim = cosine."""
    pos = F.cosine_similarity(z.flatten(1), z_glob.flatten(1), dim=1)
    neg = F.cosine_similarity(z.flatten(1), z_prev.flatten(1), dim=1)
    logits = torch.stack([pos, neg], dim=1) / tau
    return F.cross_entropy(logits, torch.zeros(len(z), dtype=torch.long, device=z.device))  # class 0 = positive


def body_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The `body.*` tensors of a full-model tensor dict, named as inside the body module."""
    return {name[len("body."):]: t for name, t in tensors.items() if name.startswith("body.")}




@register
class MOON(Algorithm):
    """MOON: FedAvg plus a contrastive term (representation near the global model's, away from the previous one's)."""

    name = "moon"
    Params = MOONParams
    source = ("Li, He & Song 2021 (τ 0.5; μ 5 = the paper's best on CIFAR-10 and the authors' README, 1 for "
              "CIFAR-100/Tiny-ImageNet)")

    def personal_is_global(self) -> bool:
        return True

    def local_update(self, job: ClientJob, trainer) -> ClientUpdate:
        received = job.payload["model"]
        prev = job.state.get("prev")
        trainer.set_vector(received)
        model = trainer.model
        glob = body_tensors(trainer.tensors_of(received)) if prev is not None else None
        before = body_tensors(trainer.tensors_of(prev)) if prev is not None else None
        opt = trainer.optimizer(trainer.parameters(None))
        model.train()
        total, batches = 0.0, 0
        for x, y in trainer.batches(job, self.ctx.train.local_epochs):  # FedAvg's data order
            z = model.body(x)
            loss = F.cross_entropy(model.head(z), y)
            if glob is not None:
                con = model_contrastive(z, frozen_forward(model.body, glob, x),
                                        frozen_forward(model.body, before, x), self.params.tau)
                loss = loss + self.params.mu * con
                total += float(con.detach())
                batches += 1
            if not trainer.record_loss(loss):
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        vec = trainer.get_vector()
        metrics = {"contrastive_loss": total / batches} if batches and math.isfinite(total) else {}
        return trainer.update(job, upload={"model": vec}, state={"prev": vec}, **metrics)
