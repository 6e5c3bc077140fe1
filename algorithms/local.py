"""Local-only: each client trains its own model from the common initialisation and never
communicates. The lower bound of collaboration; the reference point of every PFL table."""

from __future__ import annotations

import numpy as np

from algorithms.base import Algorithm, ClientJob, ClientUpdate, Phase, State
from algorithms.registry import register


@register
class Local(Algorithm):
    """Local-only: every client trains its own model from the common initialisation; nothing is shared."""

    name = "local"
    source = "standard baseline (e.g. FedOBP paper Table 2)"
    has_global_model = False  # nothing is averaged

    def shared_mask(self) -> np.ndarray:
        return np.zeros(self.spec.size, dtype=bool)  # nothing is sent or averaged


    def bytes_down(self, payload: State) -> int:
        return 0

    batchable = True  # one plain SGD phase from the client's own model: vectorises (train.batched)

    def local_phases(self, job: ClientJob) -> list[Phase]:
        return [Phase(job.state.get("model", job.payload["model"]))]

    def local_result(self, job: ClientJob, trained, stats, trainer) -> ClientUpdate:
        return trainer.update(job, upload={}, state={"model": trained[-1]})

    def local_update(self, job: ClientJob, trainer) -> ClientUpdate:
        return self.run_phases(job, trainer)

    def aggregate(self, global_vec: np.ndarray, updates: list[ClientUpdate], notes=None) -> np.ndarray:
        return global_vec  # nothing is averaged: the global vector stays the common initialisation

    def eval_vector(self, job: ClientJob, trainer) -> np.ndarray:
        return job.state.get("model", job.payload["model"])
