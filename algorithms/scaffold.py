"""SCAFFOLD (Karimireddy et al., ICML 2020, "SCAFFOLD: Stochastic Controlled Averaging for Federated Learning").

Control variates correct client drift. The server holds the global model x and a server control c; each
client i holds its own control c_i (zero at first), kept in the client-state store. A sampled client receives
(x, c), runs its K local steps on corrected gradients g_i(y) - c_i + c, and then (option II of Algorithm 1)

    c_i+ = c_i - c + (x - y) / (K * lr)

uploads Δy = y - x and Δc = c_i+ - c_i, and keeps c_i+. The server updates

    x <- x + lr_g * mean_i Δy,        c <- c + (|S| / N) * mean_i Δc      (means over the round's clients).

Checked against the paper (Algorithm 1, option II; uniform means over S; lr_g = 1 in its experiments) and
against FL-bench's and PFLlib's scaffold clients (corrections added to the gradients before each optimizer
step, as here through the trainer's before_step hook). Differences: the paper's analysis assumes plain SGD;
with train.momentum > 0 the corrected gradient goes through momentum (as in FL-bench), and x - y is then
~1/(1 - beta) times K lr times the mean corrected gradient, so option II overestimates c_i by that factor
(3.3x at beta 0.7: the every-algorithm study's CIFAR-10 run diverged); `momentum_correction` divides by the
effective step K lr / (1 - beta) instead (off by default: the paper's formula); K counts the steps
the client actually took (a compute budget may cut them). `weighting=samples` replaces the uniform means by
FedAvg's sample weights (the server control keeps its |S|/N factor either way). The server control c is
server state (checkpointed); bytes down and up count the model and the control variate (2x FedAvg's).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import Field

from algorithms.base import Algorithm, ClientJob, ClientUpdate, Dispatch, Notes, Params, State
from algorithms.registry import register


class ScaffoldParams(Params):
    server_lr: float = Field(1.0, gt=0, description="global step size lr_g (Karimireddy et al. experiments: 1)")
    momentum_correction: bool = Field(False, description=(
        "option II under heavy-ball momentum beta = train.momentum: divide x - y by the effective step "
        "K lr / (1 - beta) instead of K lr (off: the paper's formula, as FL-bench applies it whatever the momentum)"))
    weighting: Literal["uniform", "samples"] = Field(
        "uniform", description="mean of the clients' Δy and Δc: uniform over the round (the paper) or by samples")


def option_two(c_i: np.ndarray, c: np.ndarray, x: np.ndarray, y: np.ndarray, steps: int, lr: float) -> np.ndarray:
    """c_i+ = c_i - c + (x - y) / (K lr), in float64 (SCAFFOLD Algorithm 1, option II)."""
    if steps == 0:
        return c_i.astype(np.float64)
    return c_i.astype(np.float64) - c + (x.astype(np.float64) - y.astype(np.float64)) / (steps * lr)


@register
class Scaffold(Algorithm):
    """SCAFFOLD: control variates c (server) and c_i (client) correct each local gradient by c - c_i."""

    name = "scaffold"
    Params = ScaffoldParams
    source = "Karimireddy et al. 2020, Algorithm 1 option II; lr_g 1, uniform means (the paper)"

    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        self.c = np.zeros(self.spec.size, dtype=np.float64)

    def personal_is_global(self) -> bool:
        return True

    # ----- server side ---------------------------------------------------------------------------
    def server_prepare(self, cid: int, round: int, global_vec: np.ndarray, state: State) -> Dispatch:
        return Dispatch({"model": global_vec, "control": self.c.astype(np.float32)}, state)

    def aggregate(self, global_vec: np.ndarray, updates: list[ClientUpdate], notes: Notes | None = None) -> np.ndarray:
        if not updates:
            return global_vec
        dy = np.zeros(self.spec.size, dtype=np.float64)
        dc = np.zeros(self.spec.size, dtype=np.float64)
        weight = 0.0
        x = global_vec.astype(np.float64)
        for u in sorted(updates, key=lambda u: u.cid):
            w = float(u.num_samples) if self.params.weighting == "samples" else 1.0
            dy += w * (u.upload["model"].astype(np.float64) - x)
            dc += w * u.upload["control_delta"].astype(np.float64)
            weight += w
        self.c = self.c + (len(updates) / self.ctx.num_clients) * (dc / weight)
        return (x + self.params.server_lr * dy / weight).astype(np.float32)

    def server_state(self) -> State:
        return {"c": self.c}

    def load_server_state(self, state: State) -> None:
        if "c" in state:
            self.c = state["c"].astype(np.float64)

    def bytes_down(self, payload: State) -> int:
        return 8 * self.spec.size  # the model and the server control

    def bytes_up(self, update: ClientUpdate) -> int:
        return 8 * self.spec.size if "model" in update.upload else 0

    # ----- client side ----------------------------------------------------------------------------
    def local_update(self, job: ClientJob, trainer) -> ClientUpdate:
        x = job.payload["model"]
        c = job.payload["control"].astype(np.float64)
        c_i = job.state.get("control", np.zeros(self.spec.size, dtype=np.float32)).astype(np.float64)
        correction = trainer.tensors_of((c - c_i).astype(np.float32))
        names = [n for n, _ in trainer.model.named_parameters()]

        def correct(model: torch.nn.Module) -> None:
            for name, p in zip(names, model.parameters(), strict=True):
                if p.grad is not None:
                    p.grad.add_(correction[name])

        trainer.set_vector(x)
        phase = trainer.train(job, before_step=correct)
        y = trainer.get_vector()
        lr = self.ctx.train.lr
        if self.params.momentum_correction and self.ctx.train.optimizer == "sgd":
            lr = lr / (1.0 - self.ctx.train.momentum)
        c_new = option_two(c_i, c, x, y, phase.steps, lr)
        return trainer.update(job, upload={"model": y, "control_delta": (c_new - c_i).astype(np.float32)},
                              state={"control": c_new.astype(np.float32)})
