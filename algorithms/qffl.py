"""q-FFL / q-FedAvg (Li, Sanjabi, Beirami & Smith, ICLR 2020, "Fair Resource Allocation in Federated Learning").

q-FFL minimises Σ_k p_k F_k^{q+1} / (q+1): clients with a higher loss weigh more, which spreads accuracy more
evenly over clients (the worst-10% metric). q-FedAvg (Algorithm 2) solves it with FedAvg's local training and
a server step that uses a Lipschitz estimate L = 1/lr of the local objectives:

    Δw_k = L (w^t - w̄_k)                         (w̄_k: client k's model after local training)
    Δ_k  = F_k(w^t)^q Δw_k
    h_k  = q F_k(w^t)^{q-1} ||Δw_k||² + L F_k(w^t)^q
    w^{t+1} = w^t - Σ_k Δ_k / Σ_k h_k             (sums over the round's clients)

with F_k(w^t) the loss of the received model on client k's training data (computed by the client before it
trains; an evaluation pass, not counted on the virtual clock). q = 0 is FedAvg with a uniform average (tested).
Checked against the paper (Algorithm 2, L = 1/η as in its experiments) and the authors' code (litian96/fair_flearn,
qffedavg: the same Δ and h, the loss on the client's training data); FL-bench has no q-FFL. Default q = 1 from
the paper's grid {0.001, 0.01, 0.1, 1, 2, 5, 15} (its Vehicle/Synthetic runs use q = 1 or 5; tune it).
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from algorithms.base import Algorithm, ClientJob, ClientUpdate, Notes, Params
from algorithms.registry import register


class QFFLParams(Params):
    q: float = Field(1.0, ge=0, description="fairness exponent q (paper's grid 0.001-15; 0 = uniform FedAvg)")


@register
class QFFL(Algorithm):
    """q-FFL (q-FedAvg): FedAvg local training, a server step that weighs clients by their loss to the power q."""

    name = "qffl"
    Params = QFFLParams
    source = "Li et al. 2020, Algorithm 2 (L = 1/lr); q 1 from the paper's grid"

    def personal_is_global(self) -> bool:
        return True

    def aggregate(self, global_vec: np.ndarray, updates: list[ClientUpdate], notes: Notes | None = None) -> np.ndarray:
        if not updates:
            return global_vec
        q, lipschitz = self.params.q, 1.0 / self.ctx.train.lr
        w = global_vec.astype(np.float64)
        delta_sum = np.zeros(self.spec.size, dtype=np.float64)
        h_sum = 0.0
        for u in sorted(updates, key=lambda u: u.cid):
            loss = max(float(u.upload["loss_before"][0]), 1e-10)  # F_k(w^t) > 0 for the powers below
            dw = lipschitz * (w - u.upload["model"].astype(np.float64))
            delta_sum += loss ** q * dw
            h_sum += q * loss ** (q - 1) * float(dw[self.shared] @ dw[self.shared]) + lipschitz * loss ** q
        new = global_vec.copy()
        new[self.shared] = (w - delta_sum / h_sum)[self.shared].astype(np.float32)
        return new

    def local_update(self, job: ClientJob, trainer) -> ClientUpdate:
        received = job.payload["model"]
        _, loss_sum, n = trainer.evaluate(received, job.cid, split="train")
        loss = loss_sum / n if n else 0.0
        trainer.set_vector(received)
        trainer.train(job)
        return trainer.update(job, upload={"model": trainer.get_vector(),
                                           "loss_before": np.array([loss], dtype=np.float64)},
                              state=job.state, loss_before=loss)

    def bytes_up(self, update: ClientUpdate) -> int:
        return super().bytes_up(update) + 8 if "model" in update.upload else 0
