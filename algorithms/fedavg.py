"""FedAvg (McMahan et al., AISTATS 2017): local SGD from the global model, sample-weighted average.

`finetune_epochs` > 0 gives the common "FedAvg + FT" personalization baseline: at evaluation,
each client fine-tunes the global model on its own training split for that many epochs
(0 by default = plain FedAvg, as in the paper).
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from algorithms.base import Algorithm, ClientJob, Params
from algorithms.registry import register


class FedAvgParams(Params):
    finetune_epochs: int = Field(0, ge=0, description="local fine-tuning epochs at evaluation (FedAvg+FT)")


@register
class FedAvg(Algorithm):
    """FedAvg: local SGD from the global model, sample-weighted average of full models (+ optional fine-tune)."""

    name = "fedavg"
    Params = FedAvgParams
    source = "McMahan et al. 2017; fine-tune off by default"
    batchable = True  # the default local_update: one plain SGD phase from the received model

    def personal_is_global(self) -> bool:
        return self.params.finetune_epochs == 0

    def eval_vector(self, job: ClientJob, trainer) -> np.ndarray:
        if self.params.finetune_epochs == 0:
            return job.payload["model"]
        trainer.set_vector(job.payload["model"])
        trainer.train(job, epochs=self.params.finetune_epochs, purpose="finetune")
        return trainer.get_vector()
