"""Ditto (Li et al., ICML 2021, "Ditto: Fair and Robust Federated Learning Through Personalization").

Two models per client: the global model is trained exactly as in FedAvg and averaged; the
personal model v_k never leaves the client and minimises F_k(v) + (lambda/2) ||v - w^t||^2,
pulled towards the global model w^t received this round. lambda -> 0 gives local training,
lambda -> infinity gives the global model.

Checked against the paper (Algorithm 1) and litian96/ditto (flearn/trainers_MTL/ditto.py): the
proximal anchor is the round's received global model w^t (not the client's updated copy); the
personal and global updates take the same number of local iterations; the personal model is
evaluated. Defaults: lambda=1 (the authors' run scripts, *_ditto_lam1.sh; the paper tunes lambda
per data set; FL-bench also uses 1), personal_epochs = train.local_epochs (the authors' code runs
local_iters steps of each). Differences: the authors interleave one personal and one global step
per batch; here the global epochs run first and then the personal epochs, with their own data
order. The two updates do not depend on each other (the anchor is the fixed w^t), so this is the
same algorithm; under a compute budget the global update (what the server needs) gets its steps
first. The paper starts every v_k from w^0; a client first selected in round t starts from the
w^t it receives (identical in round 0). FL-bench's default pers_epoch=1 differs from the
authors' equal split. A client that never trained is evaluated with the global model.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from algorithms.base import Algorithm, ClientJob, ClientUpdate, Params, Phase
from algorithms.registry import register


class DittoParams(Params):
    lam: float = Field(1.0, ge=0, description="lambda of the proximal term to the global model (authors' scripts: 1)")
    personal_epochs: int | None = Field(
        None, ge=0, description="personal-model epochs per round; null = train.local_epochs (authors' code)")


@register
class Ditto(Algorithm):
    """Ditto: FedAvg global model plus a personal model trained with a proximal pull (lambda) to the global model."""

    name = "ditto"
    Params = DittoParams
    source = "Li et al. 2021; lambda=1 from litian96/ditto run scripts; personal steps = global steps (authors' code)"

    batchable = True  # two plain SGD phases, the second with a proximal term: both vectorise

    def local_phases(self, job: ClientJob) -> list[Phase]:
        global_vec = job.payload["model"]
        epochs = self.ctx.train.local_epochs if self.params.personal_epochs is None else self.params.personal_epochs
        return [
            Phase(global_vec),  # 1. the global update: plain FedAvg local training from w^t
            # 2. the personal update: F_k(v) + lambda/2 ||v - w^t||^2, from the stored v_k
            Phase(job.state.get("v", global_vec), epochs=epochs, purpose="ditto-personal", anchor=global_vec,
                  coef=self.params.lam),
        ]

    def local_result(self, job: ClientJob, trained, stats, trainer) -> ClientUpdate:
        (upload, personal), (g, p) = trained, stats
        # train_loss reports the global model, as FedAvg's
        return trainer.update(job, upload={"model": upload}, state={"v": personal}, loss=g.mean_loss,
                              personal_loss=p.mean_loss, global_steps=float(g.steps), personal_steps=float(p.steps))

    def local_update(self, job: ClientJob, trainer) -> ClientUpdate:
        return self.run_phases(job, trainer)

    def eval_vector(self, job: ClientJob, trainer) -> np.ndarray:
        return job.state.get("v", job.payload["model"])
