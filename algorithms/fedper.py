"""FedPer (Arivazhagan et al., 2019, "Federated Learning with Personalization Layers").

The model is split into base layers, shared and averaged like FedAvg, and the top K_P
"personalization layers", which never leave the client. Both parts are trained jointly, in the
same local epochs, from (global base, own personalization layers).

Checked against the paper: base + personalization layers, joint local SGD on both, only the base
is sent and averaged (the paper's Algorithm 1). The paper varies K_P (1-4 layers, its Table 2);
here `personal_layers` counts layer groups (weight + bias of one module) from the top of the model,
1 = the classifier `head`, which is the setting of PFLlib, FL-bench and the FedOBP paper's table.

A client that never trained has no personalization layers of its own: it is evaluated with the
global base and the common initial head (what it would start from), as in PFLlib/FL-bench where
every client starts from the same initial model.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from algorithms.base import Algorithm, ClientJob, ClientUpdate, Params, Phase
from algorithms.registry import register
from protocol.params import ParamSpec


def top_layers_mask(spec: ParamSpec, layers: int) -> np.ndarray:
    """Element mask of the top `layers` layer groups (weight + bias of one module = one group)."""
    groups = spec.layer_groups()
    if not 1 <= layers <= len(groups):
        raise ValueError(f"need 1..{len(groups)} layers for this model, got {layers}")
    return spec.mask(s.name for group in groups[-layers:] for s in group)


def bottom_layers_mask(spec: ParamSpec, layers: int) -> np.ndarray:
    """Element mask of the first `layers` layer groups (from the input side)."""
    groups = spec.layer_groups()
    if not 1 <= layers <= len(groups):
        raise ValueError(f"need 1..{len(groups)} layers for this model, got {layers}")
    return spec.mask(s.name for group in groups[:layers] for s in group)


def mask_names(spec: ParamSpec, mask: np.ndarray) -> list[str]:
    """Names of the tensors whose elements are selected by `mask` (whole tensors only)."""
    return [s.name for s in spec.slots if mask[s.start : s.stop].all()]


class FedPerParams(Params):
    personal_layers: int = Field(
        1, ge=1, description="top layer groups kept personal (1 = the classifier head); FedPer paper's K_P")


@register
class FedPer(Algorithm):
    """FedPer: shared base layers averaged by the server, personalization layers (the head) kept on each client."""

    name = "fedper"
    needs_split = True
    Params = FedPerParams
    source = "Arivazhagan et al. 2019 (K_P personalization layers); K_P=1 (head) as in PFLlib/FL-bench/FedOBP paper"
    has_global_model = False  # the head is never averaged (FedRep, LG-FedAvg: likewise a part)

    def shared_mask(self) -> np.ndarray:
        return ~top_layers_mask(self.spec, self.params.personal_layers)

    batchable = True  # one plain SGD phase (base and head jointly): vectorises (train.batched)

    def local_phases(self, job: ClientJob) -> list[Phase]:
        return [Phase(self.start_vector(job))]  # joint training of base and personalization layers

    def local_result(self, job: ClientJob, trained, stats, trainer) -> ClientUpdate:
        vec = trained[-1]
        return trainer.update(job, upload={"model": vec}, state=self.personal_state(vec))

    def local_update(self, job: ClientJob, trainer) -> ClientUpdate:
        return self.run_phases(job, trainer)

    def eval_vector(self, job: ClientJob, trainer) -> np.ndarray:
        return self.start_vector(job)
