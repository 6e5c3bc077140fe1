"""k copies of one model in one flat vector: what the clustered algorithms (IFCA, CFL) share.

`ClusterCopies` wraps k copies of the base model as `clusters.0..k-1` plus a float buffer `select` (one-hot, not
communicated) that picks the copy the forward pass runs, so the global vector holds every cluster model and a worker,
which only sees that vector and the client's state, can run any of them. `CopiesLayout` is the algorithm side:
each copy's contiguous range of the flat vector, and the vector with copy j selected.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn


class ClusterCopies(nn.Module):
    """k copies of a model; the one-hot float buffer `select` picks the copy that runs.

    fresh_init=False: every copy starts as the base model (CFL: a new cluster starts from its parent).
    fresh_init=True: copies 1..k-1 are re-initialised by each module's reset_parameters, from the RNG the engine
    seeded to build the model (IFCA: independent initialisations, as the authors' code)."""

    def __init__(self, base: nn.Module, k: int, fresh_init: bool = False):
        super().__init__()
        copies = [base]
        for _ in range(k - 1):
            twin = copy.deepcopy(base)
            if fresh_init:
                for m in twin.modules():
                    if hasattr(m, "reset_parameters"):
                        m.reset_parameters()
            copies.append(twin)
        self.clusters = nn.ModuleList(copies)
        self.register_buffer("select", torch.zeros(k))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.clusters[int(self.select.argmax())](x)


class CopiesLayout:
    """Mixin for an Algorithm whose model is `ClusterCopies`: `ranges[j]` = copy j's elements (one contiguous range
    of the flat vector), `size` = one copy's length, `selected(vec, j)` = vec with copy j switched on."""

    def lay_out_copies(self, spec, k: int, option: str) -> None:
        """Check the model holds k copies (`option` names the hyperparameter in the error) and find their ranges."""
        self.sel = spec.slot("select")
        if self.sel.size != k:
            raise ValueError(f"{option}={k} but the model was built with {self.sel.size} copies (build_model needs "
                             "the hyperparameters: harness.engine.worker.build_algorithm)")
        self.copies = k
        self.ranges = []
        for j in range(k):
            slots = [s for s in spec.slots if s.name.startswith(f"clusters.{j}.")]
            start, stop = slots[0].start, slots[-1].stop
            assert stop - start == sum(s.size for s in slots), "a copy's tensors must be contiguous"
            self.ranges.append((start, stop))
        self.size = self.ranges[0][1] - self.ranges[0][0]

    def shared_mask(self) -> np.ndarray:
        return ~self.spec.mask(["select"])

    def selected(self, vec: np.ndarray, j: int) -> np.ndarray:
        out = vec.copy()
        out[self.sel.start : self.sel.stop] = np.eye(self.copies, dtype=np.float32)[j]
        return out
