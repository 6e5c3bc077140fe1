"""FedBN (Li, Jiang, Zhang, Kamp & Dou, ICLR 2021, "FedBN: Federated Learning on Non-IID Features via Local
Batch Normalization").

FedAvg, except that every BatchNorm layer — its affine weight and bias and its running mean and variance —
stays on the client: those tensors are never sent, never averaged, and each client starts every round from
its own. Everything else is averaged as in FedAvg. Aimed at feature shift (each client's inputs follow their
own distribution), where a shared normalisation is the wrong one for everybody.

Checked against the paper (Algorithm 1: BN parameters excluded from aggregation, kept locally; the
statistics too) and the authors' code (med-air/FedBN: keys containing "bn" are skipped on the server).
Differences: BatchNorm tensors are found by module type (ParamSpec.batchnorm_names), not by a name pattern;
a client that never trained is evaluated with the initial BatchNorm layers and the global rest. Needs a model
with BatchNorm (model.name: avgcnn_bn or resnet18); without one it would be FedAvg and is refused.
No hyperparameters.
"""

from __future__ import annotations

import numpy as np

from algorithms.base import Algorithm, ClientJob, ClientUpdate
from algorithms.registry import register


@register
class FedBN(Algorithm):
    """FedBN: FedAvg over everything except the BatchNorm layers, which stay local (weights and statistics)."""

    name = "fedbn"
    source = "Li et al. 2021 (BN layers local; no hyperparameters); med-air/FedBN"
    needs_split = True
    has_global_model = False  # the server's BatchNorm layers are never trained

    def shared_mask(self) -> np.ndarray:
        return ~self.spec.mask(self.spec.batchnorm_names)

    def local_update(self, job: ClientJob, trainer) -> ClientUpdate:
        trainer.set_vector(self.start_vector(job))
        trainer.train(job)
        vec = trainer.get_vector()
        return trainer.update(job, upload={"model": vec}, state=self.personal_state(vec))

    def eval_vector(self, job: ClientJob, trainer) -> np.ndarray:
        return self.start_vector(job)
