"""Server optimizers: FedAvgM (Hsu, Qi & Brown 2019) and FedAdagrad / FedAdam / FedYogi (Reddi et al., ICLR 2021,
"Adaptive Federated Optimization").

Clients train exactly as in FedAvg. The server treats the averaged client change as a pseudo-gradient and
takes one optimizer step on the global model (Reddi et al., Algorithm 2, with x the global model):

    Δ_t = avg_i (x_i - x_t)                                   (the negative pseudo-gradient)
    FedAvgM:    v_t = β v_{t-1} + Δ_t                         x_{t+1} = x_t + η v_t
    FedAdagrad: m_t = β1 m_{t-1} + (1-β1) Δ_t,  v_t = v_{t-1} + Δ_t²
    FedYogi:    m_t as above,  v_t = v_{t-1} - (1-β2) Δ_t² sign(v_{t-1} - Δ_t²)
    FedAdam:    m_t as above,  v_t = β2 v_{t-1} + (1-β2) Δ_t²
                x_{t+1} = x_t + η m_t / (sqrt(v_t) + τ)       (no bias correction, as in the paper)

with v_{-1} = τ² for the adaptive ones (the paper's v_{-1} ≥ τ²) and m_{-1} = 0. The moments are server state
across rounds (server_state), checkpointed, so a resumed run is bit-identical.

Checked against the papers: Reddi et al. average the client deltas uniformly over the round's clients
(Algorithm 2); FedAvgM (Hsu et al. 2019, Sec. 3) applies momentum to FedAvg's sample-weighted average.
`weighting` picks either; the defaults follow each paper (Flower's FedOpt strategies average by samples, as
its FedAvg does). Defaults: β1 = 0.9, β2 = 0.99 (Reddi et al. Sec. 5, fixed for all tasks), τ = 1e-3 (their
grid {1e-5, ..., 1e-1}), server learning rates 0.1 (FedAdam, FedAdagrad) and 0.01 (FedYogi) as Flower's
strategies default to within the paper's grid, FedAvgM β = 0.9, η = 1 (Hsu et al.'s main setting).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
from pydantic import Field

from algorithms.base import Algorithm, ClientUpdate, Notes, Params, State
from algorithms.registry import register


def average_delta(global_vec: np.ndarray, updates: list[ClientUpdate], shared: np.ndarray,
                  weighting: str) -> np.ndarray:
    """avg_i (x_i - x_t) over the shared elements in float64, clients in id order (zero elsewhere)."""
    total = np.zeros(global_vec.size, dtype=np.float64)
    weight = 0.0
    base = global_vec.astype(np.float64)
    for u in sorted(updates, key=lambda u: u.cid):
        w = float(u.num_samples) if weighting == "samples" else 1.0
        total += w * (u.upload["model"].astype(np.float64) - base)
        weight += w
    delta = total / weight
    delta[~shared] = 0.0
    return delta


class ServerOptParams(Params):
    server_lr: float = Field(0.1, gt=0, description="server learning rate η (Flower's FedAdam/FedAdagrad default, "
                                                    "within Reddi et al.'s grid)")
    beta1: float = Field(0.9, ge=0, lt=1, description="first-moment decay β1 (Reddi et al. Sec. 5: 0.9)")
    beta2: float = Field(0.99, ge=0, lt=1, description="second-moment decay β2 (Reddi et al. Sec. 5: 0.99)")
    tau: float = Field(1e-3, gt=0, description="adaptivity τ; v starts at τ² (Reddi et al.: grid 1e-5..1e-1)")
    weighting: Literal["uniform", "samples"] = Field(
        "uniform", description="average of client deltas: uniform over the round's clients (Reddi et al. "
                               "Algorithm 2) or by training samples (FedAvg's)")


class _ServerOptimizer(Algorithm):
    """FedAvg on the clients, an adaptive optimizer step on the server."""

    second_moment: ClassVar[str] = ""
    batchable = True  # FedAvg's client side (the default local_update): vectorises (train.batched)

    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        self.m = np.zeros(self.spec.size, dtype=np.float64)
        self.v = np.full(self.spec.size, self.params.tau ** 2, dtype=np.float64)

    def aggregate(self, global_vec: np.ndarray, updates: list[ClientUpdate], notes: Notes | None = None) -> np.ndarray:
        if not updates:
            return global_vec
        p = self.params
        delta = average_delta(global_vec, updates, self.shared, p.weighting)
        self.m = p.beta1 * self.m + (1 - p.beta1) * delta
        sq = delta * delta
        if self.second_moment == "adagrad":
            self.v = self.v + sq
        elif self.second_moment == "yogi":
            self.v = self.v - (1 - p.beta2) * sq * np.sign(self.v - sq)
        else:
            self.v = p.beta2 * self.v + (1 - p.beta2) * sq
        step = p.server_lr * self.m / (np.sqrt(self.v) + p.tau)
        new = global_vec.copy()
        new[self.shared] = (global_vec.astype(np.float64) + step)[self.shared].astype(np.float32)
        return new

    def round_metrics(self, notes: Notes) -> dict[str, float]:
        return {"server_step_rms": float(np.sqrt(np.mean(self.m * self.m / (np.sqrt(self.v) + self.params.tau) ** 2)))
                * self.params.server_lr}

    def server_state(self) -> State:
        return {"m": self.m, "v": self.v}

    def load_server_state(self, state: State) -> None:
        if "m" in state:
            self.m, self.v = state["m"].astype(np.float64), state["v"].astype(np.float64)


@register
class FedAdam(_ServerOptimizer):
    """FedAdam: FedAvg clients, Adam (no bias correction) on the server's pseudo-gradient."""

    name = "fedadam"
    Params = ServerOptParams
    second_moment = "adam"
    source = "Reddi et al. 2021 (β1 0.9, β2 0.99, τ 1e-3, uniform average); server lr 0.1 (Flower FedAdam)"


@register
class FedAdagrad(_ServerOptimizer):
    """FedAdagrad: FedAvg clients, Adagrad on the server's pseudo-gradient."""

    name = "fedadagrad"
    Params = ServerOptParams
    second_moment = "adagrad"
    source = "Reddi et al. 2021 (β1 0.9, τ 1e-3, uniform average); server lr 0.1 (Flower FedAdagrad)"


class FedYogiParams(ServerOptParams):
    server_lr: float = Field(0.01, gt=0, description="server learning rate η (Flower's FedYogi default, within "
                                                     "Reddi et al.'s grid)")


@register
class FedYogi(_ServerOptimizer):
    """FedYogi: FedAvg clients, Yogi on the server's pseudo-gradient."""

    name = "fedyogi"
    Params = FedYogiParams
    second_moment = "yogi"
    source = "Reddi et al. 2021 (β1 0.9, β2 0.99, τ 1e-3, uniform average); server lr 0.01 (Flower FedYogi)"


class FedAvgMParams(Params):
    beta: float = Field(0.9, ge=0, lt=1, description="server momentum β (Hsu et al. 2019: 0.9 in most runs)")
    server_lr: float = Field(1.0, gt=0, description="server learning rate η (Hsu et al. 2019: 1.0 with β 0.9)")
    weighting: Literal["uniform", "samples"] = Field("samples", description="FedAvg's sample-weighted average "
                                                                            "(Hsu et al.) or uniform")


@register
class FedAvgM(Algorithm):
    """FedAvgM: FedAvg clients, SGD with momentum on the server's pseudo-gradient (β = 0, η = 1: FedAvg)."""

    name = "fedavgm"
    batchable = True  # FedAvg's client side (the default local_update): vectorises (train.batched)
    Params = FedAvgMParams
    source = "Hsu, Qi & Brown 2019 (β 0.9, server lr 1.0, sample-weighted)"

    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        self.velocity = np.zeros(self.spec.size, dtype=np.float64)

    def aggregate(self, global_vec: np.ndarray, updates: list[ClientUpdate], notes: Notes | None = None) -> np.ndarray:
        if not updates:
            return global_vec
        delta = average_delta(global_vec, updates, self.shared, self.params.weighting)
        self.velocity = self.params.beta * self.velocity + delta
        new = global_vec.copy()
        new[self.shared] = (global_vec.astype(np.float64) + self.params.server_lr * self.velocity)[self.shared] \
            .astype(np.float32)
        return new

    def server_state(self) -> State:
        return {"velocity": self.velocity}

    def load_server_state(self, state: State) -> None:
        if "velocity" in state:
            self.velocity = state["velocity"].astype(np.float64)
