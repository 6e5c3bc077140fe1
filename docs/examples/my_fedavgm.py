"""A plugin algorithm: FedAvg with server momentum (FedAvgM; Hsu, Qi & Brown 2019, arXiv:1909.06335).

The server treats the averaged client change as a pseudo-gradient and applies SGD with momentum:
    d_t = w_t - avg_k(w_k),   v_t = beta * v_{t-1} + d_t,   w_{t+1} = w_t - server_lr * v_t.
beta = 0 and server_lr = 1 give FedAvg exactly. The momentum v is server-side state across rounds,
so it goes through server_state()/load_server_state() and a resumed run stays bit-identical.

Use it without editing the package:  fedharness run runs/quickstart.yaml --plugin docs/examples/my_fedavgm.py
algorithm.name=my_fedavgm   (or `plugins: [docs/examples/my_fedavgm.py]` in the spec).
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from algorithms.base import Algorithm, Params
from algorithms.registry import register


class MyFedAvgMParams(Params):
    beta: float = Field(0.9, ge=0, lt=1, description="server momentum (Hsu et al. 2019: 0.9 in most runs)")
    server_lr: float = Field(1.0, gt=0, description="server learning rate (paper: 1.0 with beta 0.9)")


@register
class MyFedAvgM(Algorithm):
    """FedAvgM (example plugin): server SGD with momentum on the averaged client change."""

    name = "my_fedavgm"
    Params = MyFedAvgMParams
    source = "Hsu et al. 2019 (beta 0.9, server lr 1.0); an example of a plugin algorithm"

    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        self.momentum = np.zeros(self.spec.size, dtype=np.float64)

    def aggregate(self, global_vec, updates, notes=None):
        if not updates:
            return global_vec
        average = super().aggregate(global_vec, updates, notes).astype(np.float64)
        self.momentum = self.params.beta * self.momentum + (global_vec.astype(np.float64) - average)
        return (global_vec - self.params.server_lr * self.momentum).astype(np.float32)

    def server_state(self):
        return {"momentum": self.momentum}

    def load_server_state(self, state):
        if "momentum" in state:
            self.momentum = state["momentum"].astype(np.float64)
