"""DP-FedAvg (McMahan, Ramage, Talwar & Zhang, ICLR 2018, "Learning Differentially Private Recurrent Language
Models"): client-level differential privacy by clipping each client's update and adding Gaussian noise on
the server.

Clients train exactly as in FedAvg. The server clips each update Δ_k = w_k − w to L2 norm S
(Δ_k · min(1, S/‖Δ_k‖), the paper's flat clipping), averages the clipped updates uniformly over the round's
clients (the paper's estimator with equal client weights) and adds N(0, (z·S/|S_t|)²) noise per coordinate:

    w ← w + (1/|S_t|) Σ_k clip(Δ_k, S) + N(0, σ²),   σ = z·S/|S_t|.

The noise is drawn from the stream (seed, "dp-noise", round), so runs stay reproducible. What is NOT here: a
privacy accountant (the moments accountant that turns z, the sampling rate and the rounds into (ε, δ)) —
report z, S, the sampling rate and the rounds, and account with a library (e.g. Opacus' RDP accountant).
Checked against the paper (Algorithm 1, flat clipping, the fixed-denominator estimator with equal weights)
and Flower's server-side fixed clipping (the same clip-then-noise order, σ = z·S/|S_t|). Defaults: z = 1.0,
the noise multiplier of the paper's main experiments' scale; S = 1.0 is this harness's choice (the paper tunes
S per model; Andrew et al. 2021 set it adaptively to a quantile of the update norms) — tune S to your model.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from algorithms.base import Algorithm, ClientUpdate, Dispatch, Notes, Params, State
from algorithms.registry import register
from protocol.rng import rng


class DPFedAvgParams(Params):
    clip_norm: float = Field(1.0, gt=0, description="S, the L2 bound of each client's update (this harness's "
                                                    "choice; tune to the model's update norms)")
    noise_multiplier: float = Field(1.0, ge=0, description="z: noise std z*S/|S_t| per coordinate (0 = clipping "
                                                           "only; McMahan et al. 2018 use z around 1)")


def clip(delta: np.ndarray, bound: float) -> np.ndarray:
    norm = float(np.linalg.norm(delta))
    return delta * min(1.0, bound / norm) if norm > 0 else delta


@register
class DPFedAvg(Algorithm):
    """DP-FedAvg: FedAvg with each client update clipped to norm S and Gaussian noise z*S/|S_t| on the mean."""

    name = "dpfedavg"
    batchable = True  # FedAvg's client side (the default local_update): vectorises (train.batched)
    Params = DPFedAvgParams
    source = "McMahan et al. 2018 (flat clipping, equal weights, z 1); S 1.0 this harness's choice; no accountant"

    def personal_is_global(self) -> bool:
        return True

    def server_prepare(self, cid: int, round: int, global_vec: np.ndarray, state: State) -> Dispatch:
        return Dispatch({"model": global_vec}, state, {"round": round})

    def aggregate(self, global_vec: np.ndarray, updates: list[ClientUpdate], notes: Notes | None = None) -> np.ndarray:
        if not updates:
            return global_vec
        p = self.params
        w = global_vec.astype(np.float64)
        total = np.zeros(int(self.shared.sum()), dtype=np.float64)
        for u in sorted(updates, key=lambda u: u.cid):
            total += clip((u.upload["model"].astype(np.float64) - w)[self.shared], p.clip_norm)
        n = len(updates)
        mean = total / n
        if p.noise_multiplier > 0:
            rnd = next(iter((notes or {}).values()), {}).get("round", 0)
            mean += rng(self.ctx.seed, "dp-noise", rnd).normal(0.0, p.noise_multiplier * p.clip_norm / n, mean.size)
        new = global_vec.copy()
        new[self.shared] = (w[self.shared] + mean).astype(np.float32)
        return new
