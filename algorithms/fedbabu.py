"""FedBABU (Oh et al., ICLR 2022, "FedBABU: Toward Enhanced Representation for Federated Image
Classification"): Body Aggregation and Body Update.

During federated training the head (classifier) stays at its random initialisation: clients
update only the body and the server averages only the body, so the head is identical everywhere
and is never communicated. Personalization happens at evaluation: each client fine-tunes the
received model on its own training split for `finetune_epochs` epochs.

Checked against the paper: head randomly initialised and never updated in training; body-only
local update and aggregation; fine-tuning at evaluation. Defaults: 5 fine-tuning epochs of the
whole model (the paper's evaluation protocol, reproduced by Flower's FedBABU baseline:
num-finetune-epochs=5, all parameters); `finetune_part` = head reproduces the abstract's
"head is fine-tuned" reading used by some peers (e.g. FLGo's tune_part='head').
Difference from a known implementation: FL-bench "freezes" the head by zeroing its gradient,
so with weight decay or momentum the head still moves; here the head is not given to the
optimizer at all, so it is bit-for-bit unchanged. Fine-tuning uses the training optimizer
settings (train.*) and never changes stored state: every evaluation starts from the current
global model, so a client that never trained is handled the same way.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from algorithms.base import Algorithm, ClientJob, ClientUpdate, Params, Phase
from algorithms.registry import register


class FedBABUParams(Params):
    finetune_epochs: int = Field(5, ge=0, description="fine-tuning epochs at evaluation (paper / Flower baseline: 5)")
    finetune_part: Literal["full", "head", "body"] = Field(
        "full", description="what is fine-tuned at evaluation (paper: full model)")


@register
class FedBABU(Algorithm):
    """FedBABU: only the body is trained and averaged (head frozen at init); the model is fine-tuned at evaluation."""

    name = "fedbabu"
    needs_split = True
    Params = FedBABUParams
    source = "Oh et al. 2022; fine-tune 5 epochs, full model (Flower FedBABU baseline)"

    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        self.head_names = self.spec.head_names()
        self.body_names = self.spec.body_names()

    def shared_mask(self) -> np.ndarray:
        return ~self.spec.head_mask()  # the head is never sent nor averaged: it never changes

    batchable = True  # one plain SGD phase over the body: vectorises (train.batched)

    def local_phases(self, job: ClientJob) -> list[Phase]:
        return [Phase(job.payload["model"], names=tuple(self.body_names))]  # the head stays at its initialisation

    def local_result(self, job: ClientJob, trained, stats, trainer) -> ClientUpdate:
        return trainer.update(job, upload={"model": trained[-1]}, state={})

    def received_vector(self, job: ClientJob, trainer) -> np.ndarray:
        return job.payload["model"]  # training starts from the global model; fine-tuning is for evaluation only

    def trained_vector(self, job: ClientJob, update: ClientUpdate, trainer) -> np.ndarray:
        return update.upload["model"]  # the model the client holds after local training

    def eval_vector(self, job: ClientJob, trainer) -> np.ndarray:
        if self.params.finetune_epochs == 0:
            return job.payload["model"]
        names = {"full": None, "head": self.head_names, "body": self.body_names}[self.params.finetune_part]
        trainer.set_vector(job.payload["model"])
        trainer.train(job, epochs=self.params.finetune_epochs, names=names, purpose="finetune")
        return trainer.get_vector()
