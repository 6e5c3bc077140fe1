"""Small torch helpers shared by algorithms' client sides (not an algorithm: registers nothing)."""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call


@torch.no_grad()
def frozen_forward(module: nn.Module, tensors: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """`module(x)` under other weights (e.g. the received global model, a client's previous model), in evaluation
    mode and without gradients; the module's own weights and mode are left as they were."""
    mode = module.training
    module.eval()
    try:
        return functional_call(module, tensors, (x,))
    finally:
        module.train(mode)
