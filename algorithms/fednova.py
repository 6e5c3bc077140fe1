"""FedNova (Wang, Liu, Liang, Joshi & Poor, NeurIPS 2020, "Tackling the Objective Inconsistency Problem in
Heterogeneous Federated Optimization").

Clients that take different numbers of local steps (data sizes, a compute budget, partial work) make FedAvg
converge to a mismatched objective. FedNova averages *normalised* updates instead: with client i's τ_i local
steps of SGD with momentum ρ, its update is divided by ||a_i||_1 = (τ_i - ρ(1 - ρ^τ_i)/(1 - ρ)) / (1 - ρ)
(= τ_i for plain SGD), and the server steps by the effective number of steps τ_eff = Σ p_i ||a_i||_1:

    d_i = (x - y_i) / ||a_i||_1,     x <- x - τ_eff Σ_i p_i d_i,     p_i = n_i / Σ n_j  (the round's clients).

Clients train exactly as in FedAvg. Checked against the paper (Sec. 4 and Appendix: the momentum case) and the
authors' code (JYWa/FedNova), which uses the same ||a||_1 for momentum SGD; τ_i is the number of optimizer
steps the client actually took (ClientUpdate.steps), so a step budget is normalised correctly. With equal τ_i
FedNova is FedAvg (tested). The proximal (FedProx-style) variant of the paper is not included. No
hyperparameters (ρ is train.momentum).
"""

from __future__ import annotations

import numpy as np

from algorithms.base import Algorithm, ClientUpdate, Notes
from algorithms.registry import register


def a_norm(steps: int, momentum: float) -> float:
    """||a||_1 of `steps` local steps of SGD with heavy-ball momentum (FedNova, Appendix)."""
    if momentum == 0.0:
        return float(steps)
    return (steps - momentum * (1 - momentum ** steps) / (1 - momentum)) / (1 - momentum)


@register
class FedNova(Algorithm):
    """FedNova: each client's update normalised by its number of local steps, rescaled by the effective steps."""

    name = "fednova"
    batchable = True  # FedAvg's client side (the default local_update): vectorises (train.batched)
    source = "Wang et al. 2020 (normalised averaging, momentum case of the appendix); no hyperparameters"

    def personal_is_global(self) -> bool:
        return True

    def aggregate(self, global_vec: np.ndarray, updates: list[ClientUpdate], notes: Notes | None = None) -> np.ndarray:
        active = [u for u in sorted(updates, key=lambda u: u.cid) if u.steps > 0]
        if not active:
            return global_vec
        rho = self.ctx.train.momentum
        total = float(sum(u.num_samples for u in active))
        x = global_vec.astype(np.float64)
        direction = np.zeros(self.spec.size, dtype=np.float64)
        tau_eff = 0.0
        for u in active:
            p, norm = u.num_samples / total, a_norm(u.steps, rho)
            direction += p * (x - u.upload["model"].astype(np.float64)) / norm
            tau_eff += p * norm
        new = global_vec.copy()
        new[self.shared] = (x - tau_eff * direction)[self.shared].astype(np.float32)
        return new
