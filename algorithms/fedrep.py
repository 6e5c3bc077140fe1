"""FedRep (Collins et al., ICML 2021, "Exploiting Shared Representations for Personalized FL").

Each round a client first trains only its personal head on top of the received (frozen)
representation, then trains only the representation with the new head frozen; the server
averages the representations. Heads never leave the clients.

Checked against the paper (Algorithm 1 and Section 5): head updates first, then representation
updates; "FedRep executes ten local epochs of SGD with momentum to train the local head, followed
by one or five epochs for the representation" -> defaults head_epochs=10, body_epochs=1. The
authors' code (lgcollins/FedRep) expresses the same split as local_ep total minus local_rep_ep.
Known implementations differ: FL-bench splits `train.local_epochs` (default 5) into 4 head + 1
body epochs, which is the "5 total, body 1" reading; set head_epochs=null to get that split
(head = train.local_epochs - body_epochs). Each phase builds its own optimizer over its own
tensors; the authors use one optimizer per round and toggle requires_grad, which is the same
thing because every tensor is updated in one phase only (no momentum is shared between phases).
"""

from __future__ import annotations

from pydantic import Field

from algorithms.base import ClientJob, ClientUpdate, Phase
from algorithms.fedper import FedPer, FedPerParams, mask_names
from algorithms.registry import register


class FedRepParams(FedPerParams):
    head_epochs: int | None = Field(
        10, ge=0, description="head-only epochs per round (paper: 10); null = train.local_epochs - body_epochs")
    body_epochs: int = Field(1, ge=0, description="representation-only epochs after the head epochs (paper: 1 or 5)")


@register
class FedRep(FedPer):
    """FedRep: per round, head-only epochs then representation-only epochs; only the representation is averaged."""

    name = "fedrep"
    Params = FedRepParams
    source = "Collins et al. 2021, Sec. 5: 10 head epochs then 1 representation epoch; head = classifier"

    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        self.head_names = mask_names(self.spec, ~self.shared)
        self.body_names = mask_names(self.spec, self.shared)

    def epochs(self) -> tuple[int, int]:
        head = self.params.head_epochs
        if head is None:
            head = max(0, self.ctx.train.local_epochs - self.params.body_epochs)
        return head, self.params.body_epochs

    batchable = True  # two plain SGD phases, each over its own tensors: vectorises (train.batched)

    def local_phases(self, job: ClientJob) -> list[Phase]:
        head_epochs, body_epochs = self.epochs()
        return [Phase(self.start_vector(job), epochs=head_epochs, purpose="fedrep-head", names=tuple(self.head_names)),
                Phase(None, epochs=body_epochs, purpose="fedrep-body", names=tuple(self.body_names))]  # from the head's

    def local_result(self, job: ClientJob, trained, stats, trainer) -> ClientUpdate:
        vec = trained[-1]
        head, body = stats
        return trainer.update(job, upload={"model": vec}, state=self.personal_state(vec),
                              head_steps=float(head.steps), body_steps=float(body.steps))
